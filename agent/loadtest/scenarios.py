"""What one load-test call does, per scenario: the caller's script, how the call is driven and judged.

Every scenario is built from the same pieces as ``voice-agent call`` (turn-taking cues, place-and-measure),
so a load-test call and a single synthetic call are measured identically.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, cast

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from agent.simulation.call_metrics import FailureCause
from agent.simulation.carrier import ScriptItem, Segment, SimCall
from agent.simulation.synthetic_call import (
    Driver,
    after_answer,
    during_answer,
    finish_conversation,
    spoken_line,
    tone_line,
)
from agent.waiting import cancel_and_wait, wait_event

__all__ = ["SCENARIOS", "CallPlan", "CallerVoice", "Scenario", "ScenarioParams", "impair_network"]

CallerAudioKind = Literal["speech", "tone"]
LINES = (
    "What are your opening hours?",
    "How much does the basic plan cost?",
    "Can you tell me a little more about that?",
    "Do you also work on Saturdays?",
    "I see. And is there a discount for a whole year?",
    "Okay, that sounds good.",
)
BARGE_IN_MS = (400.0, 1000.0)  # how far into an answer the caller interrupts (uniform)
HANGUP_MS = (200.0, 800.0)  # how far into an answer the caller hangs up (uniform)
MALFORMED_EVERY_S = 0.7


@dataclass(frozen=True)
class ScenarioParams:
    """Knobs shared by all scenarios; ``duration_s`` scales the long and silent calls."""

    turns: int = 3
    duration_s: float | None = None
    jitter_ms: float = 60.0
    loss: float = 0.02


@dataclass(frozen=True)
class CallPlan:
    """One call of a scenario: what the caller says, how the call is run and ended, and any extra verdict."""

    script: Sequence[ScriptItem]
    drive: Driver = finish_conversation
    on_connected: Callable[[SimCall], None] | None = None
    check: Callable[[SimCall], tuple[FailureCause, str] | None] | None = None
    max_duration_s: float = 120.0


class CallerVoice:
    """The caller's utterances: eSpeak lines (made once per process) or tones of varying pitch and length."""

    def __init__(self, kind: CallerAudioKind) -> None:
        self.kind = kind

    @staticmethod
    def resolve(kind: str) -> CallerAudioKind:
        """'auto' means speech when the speech module is installed, tones otherwise."""
        if kind in ("speech", "tone"):
            return cast(CallerAudioKind, kind)
        try:
            _speech_lines()
        except ImportError:
            return "tone"
        return "speech"

    def utterance(self, n: int) -> Segment:
        if self.kind == "speech":
            return _speech_lines()[n % len(LINES)]
        return tone_line(300 + 40 * (n % 5), 600 + 100 * (n % 4))


@cache
def _speech_lines() -> tuple[Segment, ...]:
    return tuple(spoken_line(line) for line in LINES)


# ----------------------------------------------------------------------------------------------------------
# Network impairment
# ----------------------------------------------------------------------------------------------------------


class _ImpairedSocket:
    """Caller->agent side of the stream socket with jitter and frame loss, in wire order like TCP.

    Media frames are delayed by a random 0..jitter ms (never overtaking earlier messages, so late frames
    arrive in bursts) or dropped with probability ``loss``; every other message waits its turn behind them.
    """

    def __init__(self, ws: ClientConnection, jitter_ms: float, loss: float, rng: random.Random) -> None:
        self._ws = ws
        self._jitter_s = jitter_ms / 1000
        self._loss = loss
        self._rng = rng
        self._pending: deque[tuple[float, str | bytes]] = deque()
        self._last_release = 0.0
        self._pump: asyncio.Task[None] | None = None
        self.dropped = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    def __aiter__(self) -> Any:
        return self._ws.__aiter__()

    async def send(self, message: str | bytes) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.0
        if isinstance(message, str) and message.startswith('{"sequenceNumber"') and '"event":"media"' in message:
            if self._rng.random() < self._loss:
                self.dropped += 1
                return
            delay = self._rng.uniform(0, self._jitter_s)
        release = max(self._last_release, loop.time() + delay)
        self._last_release = release
        if not self._pending and release <= loop.time():
            await self._ws.send(message)
            return
        self._pending.append((release, message))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionClosed):
            while self._pending:
                release, message = self._pending[0]
                await asyncio.sleep(max(0.0, release - loop.time()))
                self._pending.popleft()
                await self._ws.send(message)
        self._pending.clear()


def impair_network(call: SimCall, jitter_ms: float, loss: float, rng: random.Random) -> None:
    """Put jitter and loss between the simulated carrier and the agent.

    The carrier has no impairment hook, so this swaps its socket for a wrapper; it must run before the
    first caller frame (``place_and_measure(on_connected=...)`` guarantees that).
    """
    call._ws = cast(ClientConnection, _ImpairedSocket(call._ws, jitter_ms, loss, rng))


# ----------------------------------------------------------------------------------------------------------
# Drivers and checks
# ----------------------------------------------------------------------------------------------------------


def _hang_up_after(seconds: float) -> Driver:
    async def drive(call: SimCall) -> None:
        await call.wait_for(
            lambda: call.call_ms >= seconds * 1000 or call.ended.is_set(), timeout=seconds + 30, what="call time up"
        )
        await call.hangup()

    return drive


def _hang_up_mid_answer(ms_into_answer: float) -> Driver:
    """The caller speaks, then hangs up while the bot is in the middle of answering."""

    async def drive(call: SimCall) -> None:
        await call.wait_for(lambda: call.script_done or call.ended.is_set(), timeout=60, what="caller spoke")
        base = call.played_ms
        with contextlib.suppress(TimeoutError):
            await call.wait_for(
                lambda: call.played_ms - base >= ms_into_answer or call.ended.is_set(),
                timeout=15,
                what=f"{ms_into_answer:.0f} ms of the answer",
            )
        await call.hangup()

    return drive


def _ended_by_caller(call: SimCall) -> tuple[FailureCause, str] | None:
    if call.end_reason != "caller_hangup":
        return "scenario_failed", f"expected the caller to hang up mid-answer, the call ended with {call.end_reason}"
    return None


def _malformed_frames(call: SimCall) -> list[str]:
    media: dict[str, Any] = {
        "event": "media",
        "streamId": call.stream_id,
        "media": {"track": "inbound", "timestamp": "1", "chunk": 1},
    }
    return [
        "{this is not json",
        json.dumps({"event": "transcription", "text": "hi"}),
        json.dumps({"event": "media"}),
        json.dumps(media | {"media": media["media"] | {"payload": "***not base64***"}}),
        json.dumps(media | {"media": media["media"] | {"payload": base64.b64encode(b"\x01\x02\x03").decode()}}),
        json.dumps({"event": "dtmf", "dtmf": {"digit": "xx"}}),
        json.dumps([1, 2, 3]),
        "",
    ]


def _with_malformed_frames(drive: Driver) -> Driver:
    """Run ``drive`` while garbage frames are mixed into the caller's stream; the call must carry on."""

    async def spam(call: SimCall) -> None:
        frames = _malformed_frames(call)
        n = 0
        with contextlib.suppress(ConnectionClosed):
            while not call.ended.is_set() and call.stream_live:
                await call.send_raw(frames[n % len(frames)])
                n += 1
                await wait_event(call.ended, MALFORMED_EVERY_S)

    async def run(call: SimCall) -> None:
        task = asyncio.create_task(spam(call))
        try:
            await drive(call)
        finally:
            await cancel_and_wait(task)

    return run


# ----------------------------------------------------------------------------------------------------------
# Scenarios
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    plan: Callable[[int, random.Random, ScenarioParams, CallerVoice], CallPlan] = field(repr=False)


def _turns(voice: CallerVoice, first: int, count: int) -> list[ScriptItem]:
    return [after_answer(voice.utterance(first + i)) for i in range(count)]


def _normal(i: int, rng: random.Random, p: ScenarioParams, voice: CallerVoice) -> CallPlan:
    return CallPlan(_turns(voice, i, p.turns))


def _barge_in(i: int, rng: random.Random, p: ScenarioParams, voice: CallerVoice) -> CallPlan:
    script: list[ScriptItem] = [
        during_answer(voice.utterance(i + n), rng.uniform(*BARGE_IN_MS)) for n in range(p.turns)
    ]
    return CallPlan(script)


def _silent(i: int, rng: random.Random, p: ScenarioParams, voice: CallerVoice) -> CallPlan:
    seconds = p.duration_s or 10.0
    return CallPlan([], drive=_hang_up_after(seconds), max_duration_s=seconds + 60)


def _long(i: int, rng: random.Random, p: ScenarioParams, voice: CallerVoice) -> CallPlan:
    """Alternating polite turns and interruptions for ``duration_s`` (default three minutes)."""
    seconds = p.duration_s or 180.0
    script: list[ScriptItem] = []
    for n in range(math.ceil(seconds / 2) + 1):  # more turns than can fit: the clock ends the call
        segment = voice.utterance(i + n)
        script.append(during_answer(segment, rng.uniform(*BARGE_IN_MS)) if n % 2 else after_answer(segment))
    return CallPlan(script, drive=_hang_up_after(seconds), max_duration_s=seconds + 60)


def _hangup(i: int, rng: random.Random, p: ScenarioParams, voice: CallerVoice) -> CallPlan:
    return CallPlan(_turns(voice, i, 1), drive=_hang_up_mid_answer(rng.uniform(*HANGUP_MS)), check=_ended_by_caller)


def _jitter(i: int, rng: random.Random, p: ScenarioParams, voice: CallerVoice) -> CallPlan:
    net_rng = random.Random(rng.random())
    return CallPlan(
        _turns(voice, i, p.turns), on_connected=lambda call: impair_network(call, p.jitter_ms, p.loss, net_rng)
    )


def _malformed(i: int, rng: random.Random, p: ScenarioParams, voice: CallerVoice) -> CallPlan:
    return CallPlan(_turns(voice, i, p.turns), drive=_with_malformed_frames(finish_conversation))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("normal", "greeting, then TURNS polite caller turns, each answered", _normal),
        Scenario("barge-in", "the caller interrupts the greeting and every answer 0.4-1 s in", _barge_in),
        Scenario("silent", "the caller never speaks; hangs up after DURATION (10 s)", _silent),
        Scenario("long", "polite turns and interruptions alternating for DURATION (180 s)", _long),
        Scenario("hangup", "the caller asks something and hangs up 0.2-0.8 s into the answer", _hangup),
        Scenario("jitter", "normal conversation over a network with jitter and frame loss", _jitter),
        Scenario("malformed", "normal conversation with malformed frames mixed into the stream", _malformed),
    )
}
