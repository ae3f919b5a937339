"""The interruption machine on its own: a manual clock, a recording model link, no sockets.

Each test breaks if one of its rules does: a truncate is retried once at most, an interrupted answer's late audio
never plays, an early clear the VAD does not confirm is released, what was not heard is dropped once whichever
path cut it (a barge-in, a lost stream, a replaced session).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any, cast

from prometheus_client import CollectorRegistry

from agent.audio.formats import MediaFormat
from agent.audio.transcode import BotAudioConverter
from agent.calls.context import CallContext
from agent.calls.handover import CallerTurns
from agent.calls.interruption import EARLY_BACKOFF_S, Audio, Fate, Interruption, Line
from agent.calls.latency import ResponseLatency
from agent.calls.outcome import Ending
from agent.calls.responses import ResponseQueue
from agent.carrier.playout import Playout
from agent.config import Settings
from agent.model.connection import ModelLink
from agent.observability.metrics import Metrics
from agent.prompts.schema import PromptMeta, TurnDetection
from agent.records.record import CallRecord
from agent.waiting import within

MULAW = MediaFormat("audio/x-mulaw", 8000)
_MS = 8  # mu-law bytes per millisecond at 8 kHz


class Clock:
    """Manual, but starting at the real monotonic time: a barge-in asks the playout about `time.monotonic()`."""

    def __init__(self) -> None:
        self.t = time.monotonic()

    def __call__(self) -> float:
        return self.t


class FakeModel:
    """Stands in for the model socket: keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, command: dict[str, Any]) -> None:
        self.sent.append(command)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [c for c in self.sent if c["type"] == kind]


class Rig:
    def __init__(self, *, confirm_ms: int = 400, server_cancels: bool = False, mode: str = "early") -> None:
        self.clock = Clock()
        self.carrier: list[str] = []
        self.playout = Playout(self._carrier, "stream-1", MULAW, clock=self.clock, lead_ms=10_000)
        self.model = FakeModel()
        log = logging.LoggerAdapter(logging.getLogger("test"), {})
        link = ModelLink(log)
        link.socket = cast(Any, self.model)
        settings = Settings.model_construct(
            **(Settings(_env_file=None).model_dump() | {"interruptions": mode, "early_barge_in_confirm_ms": confirm_ms})
        )
        deps = SimpleNamespace(settings=settings, metrics=Metrics(CollectorRegistry()))
        td = TurnDetection(interrupt_response=server_cancels)
        prompt = SimpleNamespace(meta=PromptMeta(turn_detection=td))
        self.record = CallRecord("call-1")
        self.ctx = CallContext(
            call_id="call-1",
            prompt=cast(Any, prompt),
            format=MULAW,
            deps=cast(Any, deps),
            record=self.record,
            log=log,
            ending=Ending(),
            link=link,
            playout=self.playout,
            responses=ResponseQueue(link.send),
            turns=CallerTurns(keep_bytes=1000),
            latency=ResponseLatency(),
            bot_audio=BotAudioConverter(MULAW),
            recorder=None,
            activity=asyncio.Event(),
        )
        self.clears = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.machine = Interruption(self.ctx, self._clear, self._spawn)

    async def _carrier(self, text: str) -> None:
        self.carrier.append(text)

    async def _clear(self) -> None:
        self.clears += 1

    def _spawn(self, job: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(job, name=name)
        self.tasks.append(task)
        return task

    async def speak(self, item_id: str, response_id: str, ms: int, *, done: bool = True) -> None:
        """The model streams `ms` of an answer and the playout sends it to the line from the clock's now."""
        if self.ctx.responses.active_id != response_id:
            self.ctx.responses.created(response_id)
        assert self.machine.audio(item_id, response_id, ms) is not Audio.DROP
        self.playout.enqueue(item_id, b"\xff" * ms * _MS)
        if done:
            self.machine.audio_done(item_id)
            self.playout.finish_item(item_id)
        await self.playout.step()

    def line(self) -> Line:
        return self.machine.line  # asked afresh each time: awaits move it on

    def later(self, ms: float) -> None:
        self.clock.t += ms / 1000


async def test_a_barge_in_truncates_to_what_was_heard_and_cancels_the_answer() -> None:
    rig = Rig()
    await rig.speak("item_a", "resp_1", 2000)
    rig.later(600)
    await rig.machine.on_speech_started()
    [truncate] = rig.model.of("conversation.item.truncate")
    assert truncate["item_id"] == "item_a" and 590 <= truncate["audio_end_ms"] <= 600
    assert rig.model.of("response.cancel") == [{"type": "response.cancel", "response_id": "resp_1"}]
    assert rig.clears == 1 and rig.machine.barge_ins == 1
    assert rig.machine.fate("item_a") is Fate.TRUNCATED
    assert rig.record.barge_ins[0].item_id == "item_a"


async def test_the_server_cancelling_itself_gets_no_client_cancel() -> None:
    rig = Rig(server_cancels=True)
    await rig.speak("item_a", "resp_1", 2000)
    rig.later(600)
    await rig.machine.on_speech_started()
    assert rig.model.of("response.cancel") == []


async def test_an_interrupted_answers_late_audio_and_words_are_dropped() -> None:
    rig = Rig()
    await rig.speak("item_a", "resp_1", 2000, done=False)
    rig.later(300)
    await rig.machine.on_speech_started()
    assert rig.machine.audio("item_a", "resp_1", 20) is Audio.DROP  # more of the same item
    assert rig.machine.audio("item_b", "resp_1", 20) is Audio.DROP  # a later item of the same response
    assert not rig.machine.wants_words("item_a")
    assert rig.machine.audio("item_c", "resp_2", 20) is Audio.FIRST  # the next answer plays


async def test_a_refused_truncate_is_retried_once_at_the_servers_length() -> None:
    rig = Rig()
    await rig.speak("item_a", "resp_1", 2000)
    rig.later(900)
    await rig.machine.on_speech_started()
    refusal = "Audio content of 850ms is already shorter than 900ms"
    assert await rig.machine.on_truncate_refused(refusal)
    assert await rig.machine.on_truncate_refused(refusal)  # still that error, but no second retry
    truncates = rig.model.of("conversation.item.truncate")
    assert len(truncates) == 2 and truncates[1]["audio_end_ms"] == 850
    assert rig.machine.fate("item_a") is Fate.RETRIED
    assert not await rig.machine.on_truncate_refused("some other error")


async def test_an_item_heard_in_full_is_not_truncated_and_one_heard_not_at_all_is_deleted() -> None:
    rig = Rig()
    await rig.speak("item_a", "resp_1", 200)
    rig.later(300)  # item_a has played out
    await rig.speak("item_b", "resp_1", 2000)  # queued behind it, from now
    await rig.machine.on_speech_started()  # at once: nothing of item_b was heard
    assert rig.model.of("conversation.item.truncate") == []
    assert rig.model.of("conversation.item.delete") == [{"type": "conversation.item.delete", "item_id": "item_b"}]
    assert rig.machine.fate("item_b") is Fate.DELETED


async def test_an_early_clear_the_vad_confirms_is_the_barge_in() -> None:
    rig = Rig()
    await rig.speak("item_a", "resp_1", 2000)
    rig.later(500)
    await rig.machine.on_onset(caller_speaking=False)
    assert rig.line() is Line.HELD and rig.playout.held and rig.clears == 1
    rig.later(200)  # nothing plays while held: the caller heard 500 ms
    await rig.machine.on_speech_started()
    assert rig.line() is Line.PLAYING and not rig.playout.held
    assert rig.clears == 1  # the early clear was the barge-in's clear
    [truncate] = rig.model.of("conversation.item.truncate")
    assert 490 <= truncate["audio_end_ms"] <= 500
    await within(1, asyncio.gather(*rig.tasks))  # the confirmation wait ends at once


async def test_an_early_clear_the_vad_does_not_confirm_is_released_and_onsets_back_off() -> None:
    rig = Rig(confirm_ms=20)
    await rig.speak("item_a", "resp_1", 2000)
    rig.later(500)
    await rig.machine.on_onset(caller_speaking=False)
    assert rig.line() is Line.HELD
    await within(1, asyncio.gather(*rig.tasks))
    assert rig.line() is Line.PLAYING and not rig.playout.held and rig.playout.is_audible()
    assert rig.model.sent == []  # the model was told nothing: the bot carries on
    assert rig.record.events[-1].kind == "early_clear_released"
    await rig.machine.on_onset(caller_speaking=False)  # an echo right after: ignored for a while
    assert rig.line() is Line.PLAYING and rig.clears == 1
    rig.later(EARLY_BACKOFF_S * 1000 + 1)
    await rig.speak("item_b", "resp_2", 2000)
    await rig.machine.on_onset(caller_speaking=False)
    assert rig.line() is Line.HELD and rig.clears == 2


async def test_no_early_clear_while_the_caller_already_talks_or_the_call_is_ending() -> None:
    rig = Rig()
    await rig.speak("item_a", "resp_1", 2000)
    await rig.machine.on_onset(caller_speaking=True)
    rig.ctx.ending.begin("test")
    await rig.machine.on_onset(caller_speaking=False)
    assert rig.line() is Line.PLAYING and rig.clears == 0


async def test_a_lost_stream_drops_the_unheard_once_and_ignores_onsets_until_it_is_back() -> None:
    rig = Rig()
    await rig.speak("item_a", "resp_1", 2000)
    rig.later(700)
    assert await rig.machine.line_lost()  # the caller lost the end of an answer
    assert rig.line() is Line.LOST
    [truncate] = rig.model.of("conversation.item.truncate")
    assert 690 <= truncate["audio_end_ms"] <= 700
    assert rig.machine.audio("item_a", "resp_1", 20) is Audio.DROP
    await rig.machine.on_onset(caller_speaking=False)
    assert rig.line() is Line.LOST and rig.clears == 0
    # A barge-in now finds the item already cut: it is not told twice.
    await rig.machine.on_speech_started()
    assert len(rig.model.of("conversation.item.truncate")) == 1
    rig.machine.line_back()
    assert rig.line() is Line.PLAYING


async def test_a_lost_stream_while_held_ends_the_hold() -> None:
    rig = Rig()
    await rig.speak("item_a", "resp_1", 2000)
    rig.later(400)
    await rig.machine.on_onset(caller_speaking=False)
    await rig.machine.line_lost()
    assert rig.line() is Line.LOST and not rig.playout.held
    await within(1, asyncio.gather(*rig.tasks))  # the confirmation wait is over, not released
    assert rig.line() is Line.LOST


async def test_a_new_session_drops_the_old_sessions_late_audio_and_cuts_the_unspoken_words() -> None:
    rig = Rig()
    await rig.speak("item_a", "resp_1", 1000, done=False)
    rig.record.assistant_text("item_a", "one two three four five six seven eight nine ten")
    assert rig.machine.mid_answer()
    rig.machine.cut_unspoken()
    turn = rig.record.turn_for_item("item_a")
    assert turn is not None and turn.interrupted and turn.text.split()[0] == "one"
    assert len(turn.text) < len("one two three four five six seven eight nine ten")
    rig.machine.new_session()
    assert rig.machine.audio("item_a", "resp_1", 20) is Audio.DROP
    assert not rig.machine.wants_words("item_a")


async def test_silencing_the_bot_ends_a_pause_that_held_the_line() -> None:
    """A voicemail engaged mid-pause (asynchronous machine detection): the bot goes for good and the line is free
    again for the message, not left held by a pause nobody will decide."""
    rig = Rig(mode="adaptive")
    await rig.speak("item_a", "resp_1", 2000)
    rig.later(500)
    await rig.machine.on_speech_started("item_caller", 500)
    assert rig.line() is Line.HELD and rig.machine.adaptive is not None and rig.machine.adaptive.pause is not None
    await rig.machine.silence()
    assert rig.line() is Line.PLAYING and not rig.playout.held
    assert rig.machine.adaptive.pause is None
    assert [c["response_id"] for c in rig.model.of("response.cancel")] == ["resp_1"]
    [truncate] = rig.model.of("conversation.item.truncate")
    assert 490 <= truncate["audio_end_ms"] <= 500
