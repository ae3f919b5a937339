"""The adaptive interruption policy (the default) on the whole call path: the offline engine's VAD and
transcription (scripted per utterance), the agent, the carrier simulator.

Pause first, decide, then cut or resume: a murmur ("mm-hmm") pauses the bot and it resumes from the exact sample
where it stopped, with its answer and the model's memory untouched; a real interruption cuts it to what was heard
and is answered at once; the bot's own voice coming back on the line pauses nothing.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from agent.audio.codecs import Int16Array, mulaw_to_pcm16
from agent.carrier.playout import HOLD_REWIND_MS
from agent.engine import RealtimeSimConfig
from agent.testkit.carrier import CallerAudio, SimCall
from tests.harness import Stack, running_stack


def said(short: str, long: str, *, over_ms: float = 1800) -> Callable[[Int16Array, int], str]:
    """The caller "says" `short` in utterances under `over_ms`, `long` in longer ones (a committed turn holds the
    VAD's 300 ms of padding and 500 ms of silence too: a 300 ms murmur commits as 1100 ms)."""

    def transcribe(audio: Int16Array, rate: int) -> str:
        return short if len(audio) * 1000 / rate < over_ms else long

    return transcribe


def model_audio(session: Any, item_id: str | None = None) -> Int16Array:
    """Every sample the model sent (for one item), decoded as the carrier decodes it."""
    deltas = [
        e["delta"]
        for e in session.server_events
        if e["type"] == "response.output_audio.delta" and (item_id is None or e["item_id"] == item_id)
    ]
    return mulaw_to_pcm16(b"".join(base64.b64decode(d) for d in deltas))


def interruptions(stack: Stack, call: SimCall) -> list[dict[str, Any]]:
    record = stack.state.registry.records[call.call_uuid]
    return [e.detail for e in record.events if e.kind == "interruption"]


def ours(event: dict[str, Any]) -> bool:
    """A response.create answering the caller (the pre-warmed greeting is the session's first, untagged)."""
    return "metadata" in event.get("response", {})


def client(session: Any, kind: str) -> list[dict[str, Any]]:
    return [e for e in session.client_events if e["type"] == kind]


async def test_the_session_leaves_turns_to_the_agent() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300)) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(500)])
        session = await stack.engine.wait_for_session()
        update = await session.wait_for_client_event("session.update", timeout=3)
        td = update["session"]["audio"]["input"]["turn_detection"]
        assert td["create_response"] is False and td["interrupt_response"] is False
        await call.hangup()


async def test_a_backchannel_pauses_the_bot_which_resumes_at_the_exact_sample() -> None:
    config = RealtimeSimConfig(reply_ms=4000, speed=1.2, transcribe=said("mm-hmm", "mm-hmm"))
    async with running_stack(config) as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.after_bot_audio(1000, CallerAudio.tone(300, 400, 0.4)), CallerAudio.silence(9000)]
        )
        session = await stack.engine.wait_for_session()
        clear = await call.wait_clear(timeout=6)
        assert 1000 <= clear.played_ms_at_clear < 1250  # quiet on the caller's onset, not after the VAD
        deleted = await session.wait_for_client_event("conversation.item.delete", timeout=6)
        await call.wait_bot_audio(3990, timeout=8)
        await call.wait_bot_silence(400, timeout=4)
        # Nothing of the answer was lost: the carrier played what the model sent up to the clear, then from the
        # very sample where the agent held it. The carrier played on for the clear's flight time (a few ms here,
        # the one-way network delay live): that much the caller hears twice, never less than all of it.
        sent, played = model_audio(session), call.played
        stopped = round(clear.played_ms_at_clear * 8)
        resumed_at = stopped - (len(played) - len(sent))
        [pause] = [e.detail for e in stack.state.registry.records[call.call_uuid].events if e.kind == "pause"]
        rewind = HOLD_REWIND_MS * 8  # the hold resumes that much before the heard position: never past it
        assert resumed_at == pytest.approx(next(iter(pause["heard"].values())) * 8 - rewind, abs=8)
        assert 0 <= stopped - resumed_at <= 40 * 8
        assert np.array_equal(played[:stopped], sent[:stopped]) and np.array_equal(played[stopped:], sent[resumed_at:])
        # The model's memory: its answer untouched, the murmur deleted, and no reply to it started.
        assert client(session, "conversation.item.truncate") == [] and client(session, "response.cancel") == []
        assert len(client(session, "response.create")) == 1  # the greeting only
        # While paused the VAD closed the murmur's turn after 100 ms of silence, then went back to the prompt's.
        updates = [u["session"] for u in client(session, "session.update")[1:]]
        assert [u["audio"]["input"]["turn_detection"]["silence_duration_ms"] for u in updates] == [100, 500]
        assert all(set(u) == {"type", "audio"} and set(u["audio"]) == {"input"} for u in updates)  # nothing else
        user_items = [e["item_id"] for e in session.server_events if e["type"] == "input_audio_buffer.committed"]
        assert deleted["item_id"] == user_items[0] and not [i for i in session.items if i["id"] == user_items[0]]
        [decision] = interruptions(stack, call)
        assert decision["outcome"] == "resumed" and decision["reason"] == "backchannel"
        assert decision["transcript"] == "mm-hmm" and 0 < decision["paused_ms"] < 2500
        record = stack.state.registry.records[call.call_uuid]
        assert record.barge_ins == [] and stack.metric("agent_barge_ins_total") == 0
        assert [t.text for t in record.history() if t.speaker == "caller"] == []  # never re-told to a new session
        await call.hangup()
        assert call.protocol_errors == [] and session.protocol_errors == []


async def test_a_real_interruption_after_a_false_one_is_cut_and_answered_at_once() -> None:
    config = RealtimeSimConfig(
        reply_ms=8000, speed=1.0, transcribe=said("okay", "actually I need a table for four tonight")
    )
    async with running_stack(config) as stack:
        call = await stack.carrier.place_call(
            [
                CallerAudio.after_bot_audio(700, CallerAudio.tone(300, 300, 0.4)),  # "okay"
                CallerAudio.after_bot_audio(2200, CallerAudio.tone(300, 2200, 0.4)),  # talks over it for real
                CallerAudio.silence(6000),
            ]
        )
        session = await stack.engine.wait_for_session()
        await call.wait_clear(count=2, timeout=12)
        truncate = await session.wait_for_client_event("conversation.item.truncate", timeout=4)
        # Cut to what the caller heard of the answer: the carrier's count, less what it played twice at the first
        # pause (the first clear's flight time).
        events = stack.state.registry.records[call.call_uuid].events
        first_pause = next(next(iter(e.detail["heard"].values())) for e in events if e.kind == "pause")
        twice = call.clears[0].played_ms_at_clear - first_pause
        assert truncate["audio_end_ms"] == pytest.approx(call.clears[1].played_ms_at_clear - twice, abs=60)
        assert client(session, "response.cancel")  # the agent, not the server, cancels the answer
        # The caller's turn is answered the moment the server commits it.
        answer = await session.wait_for_client_event("response.create", ours, timeout=6)
        committed = [e for e in session.server_events if e["type"] == "input_audio_buffer.committed"]
        assert len(committed) == 2
        assert 0 <= (answer["_t"] - committed[1]["_t"]) * 1000 < 50
        done = [e for e in session.server_events if e["type"] == "response.done"]
        assert done and done[0]["response"]["status"] == "cancelled"
        first, second_decision = interruptions(stack, call)
        assert (first["outcome"], first["reason"]) == ("resumed", "backchannel")
        assert second_decision["outcome"] == "cut" and second_decision["reason"] == "duration"
        record = stack.state.registry.records[call.call_uuid]
        assert len(record.barge_ins) == 1 and record.barge_ins[0].reason == "duration"
        assert record.barge_ins[0].heard_ms == pytest.approx(truncate["audio_end_ms"], abs=1)
        assert [i for i in session.items if i["id"] == committed[0]["item_id"]] == []  # "okay" forgotten
        assert [i for i in session.items if i["id"] == committed[1]["item_id"]]  # the real turn kept
        await call.hangup()
        assert call.protocol_errors == [] and session.protocol_errors == []


async def test_a_stop_word_cuts_the_bot_even_when_short() -> None:
    config = RealtimeSimConfig(reply_ms=5000, speed=1.2, transcribe=said("wait", "wait"))
    async with running_stack(config) as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.after_bot_audio(1000, CallerAudio.tone(300, 400, 0.4)), CallerAudio.silence(6000)]
        )
        session = await stack.engine.wait_for_session()
        await session.wait_for_client_event("conversation.item.truncate", timeout=8)
        await session.wait_for_client_event("response.create", ours, timeout=4)
        [decision] = interruptions(stack, call)
        assert (decision["outcome"], decision["reason"]) == ("cut", "stop_word")
        await call.hangup()
        assert call.protocol_errors == [] and session.protocol_errors == []


async def test_a_sentence_split_at_a_breath_is_answered_once_when_the_caller_has_finished() -> None:
    # "Wait, | wait": while paused the VAD closes the first word's turn in the breath, and its stop word cuts the
    # bot at once; but the caller is not done, so the answer waits for all they say, not one per part.
    config = RealtimeSimConfig(reply_ms=6000, speed=1.2, transcribe=said("wait", "wait"))
    async with running_stack(config) as stack:
        call = await stack.carrier.place_call(
            [
                CallerAudio.after_bot_audio(1000, CallerAudio.tone(300, 300, 0.4)),
                CallerAudio.silence(150),  # more than the VAD's 100 ms, less than a finished turn's 200
                CallerAudio.tone(300, 400, 0.4),
                CallerAudio.silence(3000),
            ]
        )
        session = await stack.engine.wait_for_session()
        answer = await session.wait_for_client_event("response.create", ours, timeout=8)
        committed = [e for e in session.server_events if e["type"] == "input_audio_buffer.committed"]
        assert len(committed) == 2 and answer["_t"] >= committed[1]["_t"]  # split in two, answered after both
        decision = interruptions(stack, call)[0]
        assert (decision["outcome"], decision["reason"]) == ("cut", "stop_word")
        await call.wait_bot_silence(500, timeout=6)  # the answer has played
        assert len([e for e in client(session, "response.create") if ours(e)]) == 1
        await call.hangup()
        assert call.protocol_errors == [] and session.protocol_errors == []


async def test_a_short_sound_plays_the_bot_on_until_its_stop_word_cuts_it_to_what_was_heard() -> None:
    # The words of a 400 ms "wait" come 700 ms after its turn closes: the bot does not stay silent that long.
    config = RealtimeSimConfig(reply_ms=6000, speed=1.2, transcribe=said("wait", "wait"), transcription_delay_ms=700)
    async with running_stack(config, interruption_resume_quiet_ms=200.0) as stack:  # opt-in
        call = await stack.carrier.place_call(
            [CallerAudio.after_bot_audio(1000, CallerAudio.tone(300, 400, 0.4)), CallerAudio.silence(7000)]
        )
        session = await stack.engine.wait_for_session()
        truncate = await session.wait_for_client_event("conversation.item.truncate", timeout=8)
        assert client(session, "response.cancel")
        answer = await session.wait_for_client_event("response.create", ours, timeout=4)
        [committed] = [e for e in session.server_events if e["type"] == "input_audio_buffer.committed"]
        [words] = [e for e in session.server_events if e["type"].endswith("transcription.completed")]
        assert answer["_t"] >= words["_t"] and 0 <= (answer["_t"] - committed["_t"]) * 1000 < 800
        # Quiet on the onset; the bot played on once the sound was over; quiet again, for good, on the words.
        await call.wait_clear(count=2, timeout=4)
        first, second = call.clears[:2]
        assert 1000 <= first.played_ms_at_clear < 1250
        assert second.played_ms_at_clear - first.played_ms_at_clear >= 400
        assert 0 <= (second.t - words["_t"]) * 1000 < 150
        record = stack.state.registry.records[call.call_uuid]
        [playing] = [e.detail for e in record.events if e.kind == "interruption_playing"]
        assert playing["reason"] == "short_sound" and 0 < playing["paused_ms"] < 600
        [decision] = interruptions(stack, call)
        assert (decision["outcome"], decision["reason"], decision["played_on"]) == ("cut", "stop_word", True)
        # Cut to what the caller heard, the part played on included: the samples played are the model's, with
        # nothing skipped at the resume (the first clear's flight time heard twice), and the truncate is there.
        sent, played = model_audio(session, truncate["item_id"]), call.played
        stopped, cut = round(first.played_ms_at_clear * 8), round(second.played_ms_at_clear * 8)
        first_pause, second_pause = [e.detail for e in record.events if e.kind == "pause"][:2]
        expected = round((next(iter(first_pause["heard"].values())) - HOLD_REWIND_MS) * 8)
        resumed_at = next(
            at
            for at in range(expected - 16, expected + 17)
            if np.array_equal(played[stopped : stopped + 80], sent[at : at + 80])
        )
        assert 0 <= stopped - resumed_at <= 40 * 8
        assert np.array_equal(played[:stopped], sent[:stopped])
        assert np.array_equal(played[stopped:cut], sent[resumed_at : resumed_at + cut - stopped])
        heard_ms = (resumed_at + cut - stopped) / 8
        assert truncate["audio_end_ms"] == pytest.approx(heard_ms, abs=60)
        assert truncate["audio_end_ms"] == pytest.approx(next(iter(second_pause["heard"].values())), abs=1)
        assert record.barge_ins[0].heard_ms == pytest.approx(truncate["audio_end_ms"], abs=1)
        assert [i for i in session.items if i["id"] == committed["item_id"]]  # the caller's turn kept, answered
        await call.hangup()
        assert call.protocol_errors == [] and session.protocol_errors == []


async def test_the_caller_going_on_after_a_short_sound_holds_the_bot_again_at_once() -> None:
    # "Okay ... stop, I meant Tuesday": a short word, a breath long enough to play the bot on, then the sentence.
    config = RealtimeSimConfig(
        reply_ms=8000, speed=1.2, transcribe=said("okay", "stop I meant Tuesday"), transcription_delay_ms=700
    )
    async with running_stack(config, interruption_resume_quiet_ms=200.0) as stack:  # opt-in
        call = await stack.carrier.place_call(
            [
                CallerAudio.after_bot_audio(1000, CallerAudio.tone(300, 300, 0.4)),
                CallerAudio.silence(300),
                CallerAudio.tone(300, 1800, 0.4),
                CallerAudio.silence(6000),
            ]
        )
        session = await stack.engine.wait_for_session()
        await session.wait_for_client_event("conversation.item.truncate", timeout=10)
        answer = await session.wait_for_client_event("response.create", ours, timeout=6)
        # While paused the VAD closes a turn after 100 ms of silence (the offline engine applies a session.update
        # from its next 20 ms window on, mid-utterance too): the 300 ms breath split the caller's sentence in two.
        # They get one answer, once the sentence's last part is committed; not one to "okay" while they talk.
        committed = [e for e in session.server_events if e["type"] == "input_audio_buffer.committed"]
        assert len(committed) == 2 and answer["_t"] >= committed[1]["_t"]
        assert len([e for e in client(session, "response.create") if ours(e)]) == 1
        record = stack.state.registry.records[call.call_uuid]
        assert [e.detail["reason"] for e in record.events if e.kind == "interruption_playing"] == ["short_sound"]
        [again] = [e for e in call.events("caller_segment_started") if e.detail["kind"] == "tone"][1:]
        t0 = next(e.t for e in call.timeline if e.kind == "start_sent")
        await call.wait_clear(count=2, timeout=4)
        second = call.clears[1]
        assert second.played_ms_at_clear > call.clears[0].played_ms_at_clear  # it had played on
        # then quiet on the caller's next onset (call clock), not on their words
        assert 0 <= (second.t - t0) * 1000 - again.detail["call_ms"] < 150
        [decision] = interruptions(stack, call)
        assert decision["outcome"] == "cut" and decision["played_on"]
        await call.hangup()
        assert call.protocol_errors == [] and session.protocol_errors == []


async def test_a_words_unvoiced_last_consonant_is_not_taken_for_a_cough() -> None:
    # "wai-t": the voiced part, a closure, then the release, a short burst of noise on its own. The pause had a
    # voice in it: not noise, resumed for good; the words come, and cut.
    config = RealtimeSimConfig(reply_ms=6000, speed=1.2, transcribe=said("wait", "wait"), transcription_delay_ms=300)
    async with running_stack(config) as stack:
        call = await stack.carrier.place_call(
            [
                CallerAudio.after_bot_audio(1000, CallerAudio.tone(300, 340, 0.4)),
                CallerAudio.silence(80),
                CallerAudio.noise(40, 0.3, seed=3),
                CallerAudio.silence(6000),
            ]
        )
        session = await stack.engine.wait_for_session()
        await session.wait_for_client_event("conversation.item.truncate", timeout=8)
        [decision] = interruptions(stack, call)
        assert (decision["outcome"], decision["reason"]) == ("cut", "stop_word")
        await call.hangup()
        assert call.protocol_errors == [] and session.protocol_errors == []


async def test_an_ordinary_turn_while_the_bot_is_silent_is_answered_at_once() -> None:
    config = RealtimeSimConfig(reply_ms=600, speed=4.0, transcribe=said("hello", "what are your opening hours"))
    async with running_stack(config) as stack:
        call = await stack.carrier.place_call(
            [
                CallerAudio.after_bot_audio(600, CallerAudio.silence(500)),
                CallerAudio.tone(300, 1200, 0.4),
                CallerAudio.silence(3000),
            ]
        )
        session = await stack.engine.wait_for_session()
        answer = await session.wait_for_client_event("response.create", ours, timeout=8)
        [committed] = [e for e in session.server_events if e["type"] == "input_audio_buffer.committed"]
        assert 0 <= (answer["_t"] - committed["_t"]) * 1000 < 50
        await call.wait_bot_audio(1190, timeout=6)  # the answer plays
        assert call.clears == [] and interruptions(stack, call) == []
        await call.hangup()
        assert call.protocol_errors == [] and session.protocol_errors == []


class Echo:
    """The line sends the bot's own voice back: what the carrier played, `delay_ms` later, `loss_db` quieter."""

    def __init__(self, call: SimCall, delay_ms: int, loss_db: float, *, after_ms: int = 0) -> None:
        self.call = call
        self.gain = 10 ** (loss_db / 20)
        self.after = call.media_format.rate * after_ms // 1000  # the speakerphone goes on this far into the bot's audio
        self.frame = call.media_format.rate // 50
        self.line = np.zeros(call.media_format.rate * delay_ms // 1000, dtype=np.float64)
        self.seen = 0
        self.own = call._next_caller_frame
        call._next_caller_frame = self  # type: ignore[method-assign]

    def __call__(self) -> Int16Array:
        played = self.call.played
        fresh = played[self.seen : self.seen + self.frame].astype(np.float64)
        if self.seen < self.after:
            fresh[: self.after - self.seen] = 0.0
        self.seen = min(len(played), self.seen + self.frame)
        fresh = np.concatenate([fresh, np.zeros(self.frame - len(fresh))])
        self.line = np.concatenate([self.line, fresh])
        back, self.line = self.line[: self.frame], self.line[self.frame :]
        mixed = self.own().astype(np.float64) + back * self.gain
        return np.clip(mixed, -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("delay_ms,loss_db", [(60, -15.0), (200, -25.0)])
async def test_the_bots_own_echo_pauses_nothing(delay_ms: int, loss_db: float) -> None:
    config = RealtimeSimConfig(reply_ms=4000, speed=1.2, transcribe=said("reply number one", "reply number one"))
    async with running_stack(config) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(8000)])
        Echo(call, delay_ms, loss_db)
        session = await stack.engine.wait_for_session()
        await call.wait_bot_audio(3990, timeout=8)
        await call.wait_bot_silence(300, timeout=4)
        assert call.clears == []  # never paused, never cut
        assert np.array_equal(call.played, model_audio(session))
        assert client(session, "conversation.item.truncate") == [] and client(session, "response.cancel") == []
        if loss_db > -20:  # loud enough for the engine's VAD: its speech_started on the echo is not trusted
            await session.wait_for_client_event("conversation.item.delete", timeout=4)
            assert [d["reason"] for d in interruptions(stack, call)] == ["echo"]
        assert len(client(session, "response.create")) == 1
        await call.hangup()
        assert call.protocol_errors == [] and session.protocol_errors == []


async def test_an_echo_that_begins_mid_answer_holds_the_bot_once_and_briefly() -> None:
    """The line showed no echo through the greeting and 2 s of the answer; then the caller's speakerphone sends the
    bot back, 18 dB down, 150 ms late. Its onset holds the bot, but the sound stops one echo delay after the bot did
    and its samples are the bot's: resumed as echo once it is over (not after the usual quiet), from where it
    stopped, and never held again."""
    config = RealtimeSimConfig(reply_ms=6000, speed=1.2, transcribe=said("reply number one", "reply number one"))
    async with running_stack(config) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(12000)])
        Echo(call, 150, -18.0, after_ms=2000)
        session = await stack.engine.wait_for_session()
        await call.wait_bot_audio(5990, timeout=10)
        await call.wait_bot_silence(300, timeout=4)
        decided = interruptions(stack, call)  # the VAD's speech_started on the echo too (not trusted: no hold)
        assert {d["reason"] for d in decided} == {"echo"} and all(d["outcome"] == "resumed" for d in decided)
        [pause] = [d for d in decided if d["source"] == "onset"]
        assert pause["paused_ms"] < 350  # the echo's delay and the clear, not 200 ms of quiet on top
        [clear] = call.clears  # held once: from then on the echo is known
        sent, played = model_audio(session), call.played
        stopped = round(clear.played_ms_at_clear * 8)
        resumed_at = stopped - (len(played) - len(sent))  # a few ms before the heard position (HOLD_REWIND_MS)
        assert 0 <= stopped - resumed_at <= 40 * 8
        assert np.array_equal(played[:stopped], sent[:stopped]) and np.array_equal(played[stopped:], sent[resumed_at:])
        assert client(session, "conversation.item.truncate") == [] and client(session, "response.cancel") == []
        await call.hangup()
        assert call.protocol_errors == [] and session.protocol_errors == []


async def test_the_caller_talking_over_the_echo_still_interrupts() -> None:
    config = RealtimeSimConfig(reply_ms=6000, speed=1.2, transcribe=said("x", "sorry can you repeat the price"))
    async with running_stack(config) as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.after_bot_audio(2500, CallerAudio.tone(300, 1800, 0.4)), CallerAudio.silence(5000)]
        )
        Echo(call, 120, -18.0)
        session = await stack.engine.wait_for_session()
        clear = await call.wait_clear(timeout=8)
        assert 2500 <= clear.played_ms_at_clear < 2800
        await session.wait_for_client_event("conversation.item.truncate", timeout=4)
        await session.wait_for_client_event("response.create", ours, timeout=6)
        assert [d["outcome"] for d in interruptions(stack, call)][-1] == "cut"
        await call.hangup()


async def test_the_immediate_policy_still_lets_the_server_interrupt() -> None:
    config = RealtimeSimConfig(reply_ms=4000, speed=1.2, transcribe=said("mm-hmm", "mm-hmm"))
    async with running_stack(config, interruptions="immediate") as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.after_bot_audio(1000, CallerAudio.tone(300, 400, 0.4)), CallerAudio.silence(3000)]
        )
        session = await stack.engine.wait_for_session()
        update = await session.wait_for_client_event("session.update", timeout=3)
        td = update["session"]["audio"]["input"]["turn_detection"]
        assert td["create_response"] is True and td["interrupt_response"] is True
        await session.wait_for_client_event("conversation.item.truncate", timeout=6)  # even a murmur cuts it
        assert client(session, "response.cancel") == []
        await call.hangup()
