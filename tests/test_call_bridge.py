"""End-to-end calls over loopback: simulated Vobiz ⇄ agent ⇄ local realtime engine (GA protocol)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.engine import RealtimeSimConfig, SimSession
from agent.testkit.analysis.call import analyze_call
from agent.testkit.carrier import CallerAudio, SimCall, SimCallOptions
from tests.harness import Stack, running_stack
from tests.signals import dominant_hz, max_step_ratio

MULAW = "audio/x-mulaw;rate=8000"
L16_8K = "audio/x-l16;rate=8000"
L16_16K = "audio/x-l16;rate=16000"


def assert_clean(stack: Stack, call: SimCall, *sessions: SimSession) -> None:
    """Both fakes validated everything they received; nothing was malformed in either direction."""
    assert call.protocol_errors == []
    assert call.internal_errors == []
    for session in sessions:
        assert session.protocol_errors == []


def assistant_turns(stack: Stack, call_id: str) -> list[Any]:
    return [t for t in stack.state.registry.records[call_id].turns if t.speaker == "assistant"]


async def test_greeting_is_paced_checkpointed_and_recorded() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=1500)) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(3000)])
        session = await stack.engine.wait_for_session()
        update = await session.wait_for_client_event("session.update")
        assert update["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        await session.wait_for_client_event("response.create")
        await call.wait_bot_audio(1480, timeout=5)
        # The greeting's final checkpoint is acknowledged once its audio has played.
        await call.wait_for(lambda: len(call.acked_checkpoints) >= 2, timeout=3)
        # Named item.offset_ms.seq: one inside the long answer (1 s), one at its end.
        assert [name.split(".")[1] for name in call.acked_checkpoints] == ["1000", "1500"]
        # Paced: never much more than the lead (200 ms) plus one message (at most 100 ms) waiting at the carrier.
        # The lead is deeper for a while after the loop woke the pacer late (`WakeLateness`): this process runs the
        # carrier and the engine too, and after a stall of it 398 ms were once queued against a fixed 320 ms bound.
        settings = stack.state.settings
        playout = stack.state.registry.live[call.call_uuid].ctx.playout
        lead_ms = playout.lead(playout.clock()) * 1000
        metrics = analyze_call(call)
        assert metrics.queue_max_ms is not None
        assert 180 <= metrics.queue_max_ms <= lead_ms + settings.playout_chunk_ms + 20
        sizes = [int(e.detail["bytes"]) for e in call.timeline if e.kind == "play_audio_received"]
        assert sizes and all(0 < size <= settings.playout_chunk_ms * 8 for size in sizes)  # μ-law: 8 bytes a ms
        assert len(sizes) < 1500 / 20  # fewer, larger messages than one per 20 ms frame
        assert dominant_hz(call.played, 8000) == pytest.approx(600, abs=5)
        turns = assistant_turns(stack, call.call_uuid)
        assert turns and turns[0].text == "Reply number 1." and not turns[0].interrupted
        await call.hangup()
        await call.wait_ended(timeout=2)
        await stack.engine.wait_idle(timeout=2)
        record = stack.state.registry.records[call.call_uuid]
        assert record.usage.output_audio > 0 and record.cost_usd > 0
        assert record.hung_up_by == "caller" and record.ended_at is not None
        assert record.end_reason == call.end_reason == "caller_hangup"  # one name for it, agent and carrier alike
        await stack.engine.wait_idle(timeout=2)
        assert_clean(stack, call, session)


async def test_a_normal_turn_caller_speaks_model_answers() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=600)) as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.silence(1200), CallerAudio.tone(300, 800, 0.4), CallerAudio.silence(4000)]
        )
        session = await stack.engine.wait_for_session()
        await session.wait_for_server_event("input_audio_buffer.speech_stopped", timeout=6)
        await session.wait_for_server_event("response.done", lambda e: len(session.responses) >= 2, timeout=6)
        await call.wait_bot_audio(1180, timeout=5)
        record = stack.state.registry.records[call.call_uuid]
        speakers = [t.speaker for t in record.turns if t.text]
        assert speakers == ["assistant", "caller", "assistant"]
        caller = next(t for t in record.turns if t.speaker == "caller")
        assert caller.text.startswith("caller audio")
        answer = [t for t in record.turns if t.speaker == "assistant"][1]
        assert answer.latency_ms is not None and 0 < answer.latency_ms < 1000
        assert call.clears == []  # nobody interrupted anybody
        await call.hangup()
        assert_clean(stack, call, session)


@pytest.mark.parametrize("speed", [1.2, 4.0], ids=["model-still-speaking", "model-already-done"])
async def test_barge_in_clears_first_and_truncates_to_what_was_heard(speed: float) -> None:
    """The `immediate` policy (the default before issue 16): the server's VAD cuts the bot at once."""
    async with running_stack(RealtimeSimConfig(reply_ms=5000, speed=speed), interruptions="immediate") as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.after_bot_audio(1500, CallerAudio.tone(300, 2500, 0.4)), CallerAudio.silence(3000)]
        )
        session = await stack.engine.wait_for_session()
        clear = await call.wait_clear(timeout=8)
        truncate = await session.wait_for_client_event("conversation.item.truncate", timeout=3)
        # The truncate offset matches what the simulated carrier had actually played, within 60 ms.
        assert truncate["audio_end_ms"] == pytest.approx(clear.played_ms_at_clear, abs=60)
        assert 1500 < truncate["audio_end_ms"] < 2500
        assert session.truncations and session.truncations[0]["audio_end_ms"] == truncate["audio_end_ms"]
        # clearAudio is the first thing the carrier got after the interruption: no audio slipped in before it.
        after = [
            e for e in call.timeline if e.t >= clear.t - 0.001 and e.kind in ("play_audio_received", "clear_received")
        ]
        assert after[0].kind == "clear_received"
        if speed < 2:
            # The server cancels the answer it was still streaming (interrupt_response); no client cancel races it.
            done = await session.wait_for_server_event("response.done", timeout=3)
            assert done["response"]["status"] == "cancelled"
            assert not [e for e in session.client_events if e["type"] == "response.cancel"]
        # Nothing more of the interrupted answer plays while the caller is talking.
        await call.wait_for(lambda: call.call_ms > (clear.t - call.timeline[0].t) * 1000 + 800, timeout=3)
        assert call.played_ms - clear.played_ms_at_clear < 30
        turn = assistant_turns(stack, call.call_uuid)[0]
        assert turn.interrupted and turn.heard_ms == pytest.approx(truncate["audio_end_ms"], abs=1)
        assert stack.metric("agent_barge_ins_total") == 1
        barge = stack.state.registry.records[call.call_uuid].barge_ins
        assert len(barge) == 1 and barge[0].item_id == truncate["item_id"]
        assert barge[0].heard_ms == pytest.approx(truncate["audio_end_ms"], abs=1) and barge[0].clear_ms < 50
        await call.hangup()
        assert_clean(stack, call, session)


async def test_each_barge_in_records_the_answer_it_cut_and_what_was_heard_of_it() -> None:
    """Three barge-ins in one call: each stored barge-in names its own answer and its own heard length."""
    async with running_stack(RealtimeSimConfig(reply_ms=4000, speed=1.2)) as stack:
        interrupt = [CallerAudio.after_bot_audio(ms, CallerAudio.tone(300, 700, 0.4)) for ms in (900, 700, 500)]
        call = await stack.carrier.place_call([*interrupt, CallerAudio.silence(3000)])
        session = await stack.engine.wait_for_session()
        await call.wait_clear(count=3, timeout=20)

        def truncates() -> list[dict[str, Any]]:
            return [e for e in session.client_events if e["type"] == "conversation.item.truncate"]

        await session.wait_for_client_event("conversation.item.truncate", lambda e: len(truncates()) >= 3, timeout=5)
        barges = stack.state.registry.records[call.call_uuid].barge_ins
        assert [b.item_id for b in barges] == [t["item_id"] for t in truncates()]
        assert len({b.item_id for b in barges}) == 3
        for barge, truncate in zip(barges, truncates(), strict=True):
            assert barge.heard_ms == pytest.approx(truncate["audio_end_ms"], abs=1)
        await call.hangup()


async def test_response_latency_is_measured_from_the_callers_last_word_to_bot_audio_on_the_line() -> None:
    """The agent's figure is what the caller lives through: from their speech ending on the line (not the VAD's
    later verdict) to the answer starting on the line (not its first bytes leaving), as the carrier sees it."""
    config = RealtimeSimConfig(reply_ms=600, first_audio_delay_ms=250)
    async with running_stack(config) as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.silence(1200), CallerAudio.tone(300, 800, 0.4), CallerAudio.silence(4000)]
        )
        session = await stack.engine.wait_for_session()
        await session.wait_for_server_event("response.done", lambda e: len(session.responses) >= 2, timeout=6)
        await call.wait_bot_audio(1180, timeout=5)
        segments = [e for e in call.timeline if e.kind == "caller_segment_started"]
        spoke_until = segments[2].t  # the silence after the tone began: the caller's last word was just before
        heard_at = next(e.t for e in call.timeline if e.kind == "bot_audio_started" and e.t > spoke_until)
        on_the_line_ms = (heard_at - spoke_until) * 1000
        answer = [t for t in stack.state.registry.records[call.call_uuid].turns if t.speaker == "assistant"][1]
        assert answer.latency_ms == pytest.approx(on_the_line_ms, abs=60)
        # It includes the VAD's silence window (500 ms by default) and the model's first-audio delay, to a 20 ms
        # frame: the caller's last word is placed by the frame it ended in.
        assert answer.latency_ms is not None and answer.latency_ms > 500 + 250 - 20
        await call.hangup()


async def test_speech_while_bot_is_silent_does_not_clear() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=400)) as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.silence(1500), CallerAudio.tone(300, 600, 0.4), CallerAudio.silence(2000)]
        )
        session = await stack.engine.wait_for_session()
        await session.wait_for_server_event("input_audio_buffer.speech_started", timeout=5)
        await session.wait_for_server_event("response.done", lambda e: len(session.responses) >= 2, timeout=5)
        assert call.clears == []
        assert not [e for e in session.client_events if e["type"] == "conversation.item.truncate"]
        await call.hangup()
        assert_clean(stack, call, session)


@pytest.mark.parametrize(
    ("content_type", "big_endian"),
    [(MULAW, False), (L16_8K, False), (L16_16K, False), (L16_16K, True)],
    ids=["mulaw", "l16-8k", "l16-16k", "l16-16k-big-endian"],
)
async def test_audio_formats_keep_frequencies_both_ways(content_type: str, big_endian: bool) -> None:
    config = RealtimeSimConfig(reply_ms=1200, tone_hz=700, vad_threshold_rms=10**9)  # VAD off: pure transport
    async with running_stack(config, stream_content_type=content_type) as stack:
        options = SimCallOptions(l16_big_endian=big_endian)
        call = await stack.carrier.place_call([CallerAudio.tone(440, 1500, 0.3), CallerAudio.silence(1000)], options)
        session = await stack.engine.wait_for_session()
        expected = {"type": "audio/pcmu"} if content_type == MULAW else {"type": "audio/pcm", "rate": 24000}
        update = await session.wait_for_client_event("session.update")
        assert update["session"]["audio"]["input"]["format"] == expected
        await call.wait_script_done(timeout=6)
        await call.wait_bot_audio(1150, timeout=5)
        # Caller → model: the tone arrives at the same frequency.
        samples, rate = session.input_pcm16()
        assert rate == (8000 if content_type == MULAW else 24000)
        tone = samples[int(0.3 * rate) : int(1.3 * rate)]
        assert dominant_hz(tone, rate) == pytest.approx(440, abs=5)
        # Model → caller: the bot's tone is heard at the same frequency, without clicks at chunk joins.
        played = call.played
        rate_out = call.played_rate or 8000
        assert rate_out == (8000 if content_type != L16_16K else 16000)
        steady = played[int(0.05 * rate_out) : int(1.1 * rate_out)]
        assert dominant_hz(steady, rate_out) == pytest.approx(700, abs=5)
        assert max_step_ratio(steady, 700, rate_out) < (1.6 if content_type == MULAW else 1.3)
        await call.hangup()
        assert_clean(stack, call, session)


async def test_malformed_input_is_counted_and_dropped_and_the_call_goes_on() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=400), stream_content_type=L16_8K) as stack:
        other = await stack.carrier.place_call([CallerAudio.silence(6000)])
        call = await stack.carrier.place_call(
            [CallerAudio.silence(1500), CallerAudio.tone(300, 700, 0.4), CallerAudio.silence(3000)]
        )
        target = await stack.engine.wait_for_session(1)  # sessions open in answer order
        await call.wait_bot_audio(350, timeout=5)
        media: dict[str, Any] = {
            "event": "media",
            "streamId": call.stream_id,
            "media": {"track": "inbound", "timestamp": "1", "chunk": 1},
        }
        for text in [
            "{this is not json",
            json.dumps({"event": "transcription", "text": "hi"}),
            json.dumps({"event": "media"}),
            json.dumps(media | {"media": media["media"] | {"payload": "***not base64***"}}),
            json.dumps(media | {"media": media["media"] | {"payload": base64.b64encode(b"\x01\x02\x03").decode()}}),
            json.dumps({"event": "dtmf", "dtmf": {"digit": "xx"}}),
        ]:
            await call.send_raw(text)
        # The call goes on: the caller's next turn still gets an answer.
        await target.wait_for_server_event("response.done", lambda e: len(target.responses) >= 2, timeout=8)
        assert stack.metric("agent_inbound_dropped_total", reason="malformed_json") == 1
        assert stack.metric("agent_inbound_dropped_total", reason="unknown_event") == 1
        assert stack.metric("agent_inbound_dropped_total", reason="invalid_event") == 2
        assert stack.metric("agent_inbound_dropped_total", reason="bad_audio") == 2
        assert not call.ended.is_set() and not other.ended.is_set()
        assert other.protocol_errors == [] and call.protocol_errors == []
        await call.hangup()
        await other.hangup()


async def test_dtmf_digits_reach_the_model_as_one_user_text_item() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300), dtmf_flush_s=0.3) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(4000)])
        session = await stack.engine.wait_for_session()
        await call.wait_bot_audio(250, timeout=5)
        for digit in "12#":
            await call.send_dtmf(digit)
        created = await session.wait_for_client_event("conversation.item.create", timeout=3)
        assert created["item"]["role"] == "user"
        assert "12#" in created["item"]["content"][0]["text"]
        await session.wait_for_server_event("response.done", lambda e: len(session.responses) >= 2, timeout=5)
        await call.hangup()
        assert_clean(stack, call, session)


async def test_caller_audio_is_forwarded_frame_by_frame() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=200)) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(1500)])
        session = await stack.engine.wait_for_session()
        await call.wait_script_done(timeout=5)
        appends = [e for e in session.client_events if e["type"] == "input_audio_buffer.append"]
        assert len(appends) >= 60  # one per 20 ms frame, not batched
        total = sum(len(base64.b64decode(e["audio"])) for e in appends)
        assert total == pytest.approx(call.frames_sent * 160, abs=160 * 3)
        await call.hangup()
        assert_clean(stack, call, session)


async def test_many_calls_run_side_by_side_without_mixing_audio() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=800)) as stack:
        tones = [300, 500, 800]
        calls = await asyncio.gather(
            *[
                stack.carrier.place_call([CallerAudio.tone(hz, 1200, 0.3), CallerAudio.silence(800)], SimCallOptions())
                for hz in tones
            ]
        )
        await asyncio.gather(*[c.wait_script_done(timeout=6) for c in calls])
        heard = sorted(round(dominant_hz(s.input_pcm16()[0][1600:8800], 8000)) for s in stack.engine.sessions)
        assert heard == pytest.approx(tones, abs=5)
        for c in calls:
            await c.hangup()
        assert np.all([c.protocol_errors == [] for c in calls])


async def test_finished_calls_are_stored_with_their_recording() -> None:
    import wave

    async with running_stack(RealtimeSimConfig(reply_ms=4000, speed=1.5), interruptions="immediate") as stack:
        call = await stack.carrier.place_call(
            # The caller interrupts, then hangs up before the model could answer (VAD waits 500 ms of silence).
            [CallerAudio.after_bot_audio(1000, CallerAudio.tone(300, 800, 0.4)), CallerAudio.silence(300)]
        )
        await call.wait_clear(timeout=8)
        await call.wait_script_done(timeout=8)
        await call.hangup()
        await stack.engine.wait_idle(timeout=2)
        await stack.state.records.flush()
        detail = await stack.state.store.get_call(call.call_uuid)
        assert detail is not None
        stored = detail.record
        assert stored.end_reason in ("carrier_closed", "caller_hangup") and stored.prompt_name == "default"
        assert [t.speaker for t in stored.turns][:2] == ["assistant", "caller"]  # the caller cut in
        assert stored.turns[0].interrupted and stored.turns[0].heard_ms == pytest.approx(1000, abs=80)
        assert len(stored.barge_ins) == 1 and stored.cost_usd > 0
        assert stored.recording_path
        path = Path(stored.recording_path)
        await call.wait_for(lambda: path.exists(), timeout=5)
        with wave.open(str(path)) as wav:
            assert wav.getnchannels() == 2 and wav.getframerate() == 8000
            frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).reshape(-1, 2)
        caller, bot = frames[:, 0], frames[:, 1]
        # The bot channel holds only what was heard: about one second of its answer, nothing after the cut.
        assert np.count_nonzero(np.abs(bot) > 500) / 8000 == pytest.approx(1.0, abs=0.15)
        loud = np.nonzero(np.abs(caller) > 500)[0]
        assert (loud[-1] - loud[0]) / 8000 == pytest.approx(0.8, abs=0.05)  # the caller's 800 ms tone
        assert dominant_hz(caller[loud[0] : loud[-1]], 8000) == pytest.approx(300, abs=5)
