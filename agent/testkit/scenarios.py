"""How simulated callers behave: their voices, turn-taking cues, drivers, and the load-test scenarios built of
them; also the bench's noise caller, whose every frame can be found again at the engine.

``voice-agent call``, ``demo``, ``eval``, ``loadtest`` and the bench all script their callers from here, so a
"polite turn" or a "barge-in" means the same thing in every tool.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import importlib
import itertools
import json
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
from websockets.exceptions import ConnectionClosed

from agent.testkit.analysis.call import FailureCause
from agent.testkit.carrier import CallerAudio, Cue, ScriptItem, Segment, SimCall
from agent.testkit.carrier.audio import CallView
from agent.testkit.network import impair_network
from agent.waiting import cancel_and_wait, wait_event

__all__ = [
    "SCENARIOS",
    "CallPlan",
    "CallerVoice",
    "Driver",
    "NoiseCaller",
    "Scenario",
    "ScenarioParams",
    "WorkloadConfig",
    "after_answer",
    "conversation",
    "during_answer",
    "finish_conversation",
    "spoken_line",
    "tone_line",
]

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


ANSWER_QUIET_MS = 600.0  # the bot counts as done with an answer after this much silence
GIVE_UP_MS = 8000.0  # a caller waiting for an answer that never comes speaks anyway after this long

Driver = Callable[[SimCall], Awaitable[None]]
"""Runs a placed call: decides when the caller speaks beyond its script, and when it hangs up."""


# ----------------------------------------------------------------------------------------------------------
# Caller audio and turn-taking
# ----------------------------------------------------------------------------------------------------------


def _speech(module: str, name: str) -> Callable[..., Any]:
    """A function of the optional speech package, loaded on first use (ImportError when it is not there)."""
    func: Callable[..., Any] = getattr(importlib.import_module(f"agent.engine.speech.{module}"), name)
    return func


def spoken_line(text: str, *, rate: int = 16000, voice: str = "en-us", words_per_minute: int = 165) -> Segment:
    """A line of caller speech from eSpeak NG; imported lazily so the rest works without the speech module."""
    synthesize = _speech("tts", "synthesize")
    samples = synthesize(text, rate, voice=voice, words_per_minute=words_per_minute)
    return CallerAudio.pcm(np.asarray(samples, dtype=np.int16), rate, label=text)


def tone_line(hz: float, ms: float) -> Segment:
    """Tones are 'speech' to an energy VAD (the offline engine) and need nothing installed."""
    return CallerAudio.tone(hz, ms, amplitude=0.4)


def after_answer(segment: Segment, quiet_ms: float = ANSWER_QUIET_MS, give_up_ms: float = GIVE_UP_MS) -> Cue:
    """Speak once the bot has said something since this cue was reached and then been quiet for ``quiet_ms``.

    A polite caller: waits for the answer to finish. If no answer comes within ``give_up_ms`` it speaks anyway,
    so a silent agent shows up as unanswered turns instead of a stuck call.
    """

    def arm(call: CallView) -> Callable[[], bool]:
        base, armed_at = call.played_ms, call.call_ms
        quiet_since: list[float] = []

        def ready() -> bool:
            now = call.call_ms
            if now - armed_at >= give_up_ms:
                return True
            if call.played_ms <= base or call.bot_playing or call.queued_ms > 0:
                quiet_since.clear()
                return False
            if not quiet_since:
                quiet_since.append(now)
            return now - quiet_since[0] >= quiet_ms

        return ready

    return Cue(arm, segment, f"after the bot's answer ({quiet_ms:g} ms quiet)")


def during_answer(segment: Segment, ms_into_answer: float, give_up_ms: float = GIVE_UP_MS) -> Cue:
    """Barge in ``ms_into_answer`` ms into the bot's next answer (or after ``give_up_ms`` without one)."""

    def arm(call: CallView) -> Callable[[], bool]:
        base, armed_at = call.played_ms, call.call_ms
        return lambda: call.played_ms - base >= ms_into_answer or call.call_ms - armed_at >= give_up_ms

    return Cue(arm, segment, f"barge in {ms_into_answer:g} ms into the bot's answer")


def conversation(utterances: Sequence[Segment], barge_in_ms: float | None = None) -> list[ScriptItem]:
    """Say each utterance after the bot's previous answer; the first one interrupts it when ``barge_in_ms``."""
    script: list[ScriptItem] = []
    for i, segment in enumerate(utterances):
        if i == 0 and barge_in_ms is not None:
            script.append(during_answer(segment, barge_in_ms))
        else:
            script.append(after_answer(segment))
    return script


async def finish_conversation(call: SimCall, quiet_ms: float = 1500.0, answer_timeout_s: float = 10.0) -> None:
    """Default ending: once the caller has said everything, wait for the bot's last answer, then hang up."""
    await call.wait_for(lambda: call.script_done or call.ended.is_set(), timeout=3600, what="caller script done")
    base = call.played_ms
    with contextlib.suppress(TimeoutError):
        await call.wait_for(
            lambda: call.played_ms > base or call.ended.is_set(), timeout=answer_timeout_s, what="the last answer"
        )
    if not call.ended.is_set():
        with contextlib.suppress(TimeoutError):
            await call.wait_bot_silence(quiet_ms, timeout=60)
    await call.hangup()


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
# The bench's noise caller
# ----------------------------------------------------------------------------------------------------------

QUIET_CHUNK_MS = 80  # caller "silence" is pushed in chunks of this length...
QUIET_LOW_WATER_MS = 240  # ...whenever less than this is waiting to be sent (rides out bench stalls)
QUIET_BLOCK_CHUNKS = 25  # quiet noise is drawn this many chunks at a time
DRIVER_EVERY_FRAMES = 2  # the caller decides what to say next every 40 ms of its clock
BARGE_WAIT_S = 8.0  # a barge-in turn gives up waiting for bot audio after this long (counted as a timeout)
NORMAL_WAIT_S = 10.0
STAGGER_S = 0.04  # between call starts: 50 calls ramp up in 2 s


@dataclass(frozen=True)
class WorkloadConfig:
    calls: int
    seconds: float
    content_type: str
    stagger_s: float = STAGGER_S
    speech_ms: int = 600
    quiet_amplitude: float = 0.006  # RMS ~110 of int16: far below the engine's VAD threshold (500)
    speech_amplitude: float = 0.1  # RMS ~1900: speech as far as the energy VAD is concerned
    barge_after_ms: tuple[int, int] = (400, 1400)
    normal_quiet_s: float = 0.3
    pattern: tuple[str, ...] = ("barge", "normal", "barge")
    seed: int = 20240607


class NoiseCaller:
    """The bench's caller: feeds its audio on the fly (noise below the VAD between turns, louder noise as
    speech) and alternates barge-ins and polite turns as ``cfg.pattern`` says, until its time is up.

    It runs on the call's caller clock: every other frame sent it tops up the quiet noise and checks whether its
    turn has come (a plain callback, where a task that slept on a timer 25 times a second per call cost the
    load generator more than the frames it decided)."""

    def __init__(self, call: SimCall, rng: np.random.Generator, cfg: WorkloadConfig, pushed_ms: float) -> None:
        self.call = call
        self.rng = rng
        self.cfg = cfg
        self.pushed_ms = pushed_ms
        self.turns: Counter[str] = Counter()
        self.speech_ms: list[float] = []  # where each utterance begins on the caller's track
        self._last_audible = time.monotonic()
        self._kinds = itertools.cycle(cfg.pattern)
        self._quiet: npt.NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        self._quiet_pos = 0
        self._deadline = math.inf
        self._finished: asyncio.Future[None] | None = None
        # The wait in progress: what it waits for, when it gives up, and what to do next (with its outcome).
        self._ready: Callable[[], bool] = lambda: False
        self._give_up = math.inf
        self._then: Callable[[bool], None] = lambda _ok: None

    @staticmethod
    def noise(rng: np.random.Generator, ms: int, amplitude: float, rate: int) -> Segment:
        """Fresh white noise: every 20 ms frame differs, so each can be recognised at the engine. Drawn as int16
        at once (uniform in +-amplitude of full scale)."""
        peak = round(amplitude * 32767)
        return CallerAudio.pcm(
            rng.integers(-peak, peak, rate * ms // 1000, dtype=np.int16, endpoint=True), rate, "noise"
        )

    def _say(self, ms: int, amplitude: float) -> None:
        self.call.say(self.noise(self.rng, ms, amplitude, self.call.media_format.rate))
        self.pushed_ms += ms

    def _say_quiet(self) -> None:
        """The next QUIET_CHUNK_MS of quiet noise, cut from a block drawn QUIET_BLOCK_MS at a time (one draw per
        chunk cost more in numpy's call overhead than in drawing)."""
        rate = self.call.media_format.rate
        n = rate * QUIET_CHUNK_MS // 1000
        if self._quiet_pos + n > len(self._quiet):
            peak = round(self.cfg.quiet_amplitude * 32767)
            self._quiet = self.rng.integers(-peak, peak, n * QUIET_BLOCK_CHUNKS, dtype=np.int16, endpoint=True)
            self._quiet_pos = 0
        chunk = self._quiet[self._quiet_pos : self._quiet_pos + n]
        self._quiet_pos += n
        self.call.say(CallerAudio.pcm(chunk, rate, "noise"))
        self.pushed_ms += QUIET_CHUNK_MS

    def _buffered_ms(self) -> float:
        return self.pushed_ms - self.call.frames_sent * self.call.options.frame_ms

    async def run(self, deadline: float) -> None:
        """Drive the call until ``deadline`` (monotonic) or until it ends."""
        call = self.call
        self._deadline = deadline
        finished = self._finished = asyncio.get_running_loop().create_future()
        self._next_turn()
        call.frame_listeners.append(self._on_frame)
        try:
            self._advance(time.monotonic())
            if finished.done():
                return
            ended = asyncio.ensure_future(call.ended.wait())
            try:
                # The caller clock normally finishes the run; the deadline and the call's end cover a stopped clock.
                timeout = max(0.0, deadline - time.monotonic())
                await asyncio.wait([finished, ended], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ended.cancel()
        finally:
            call.frame_listeners.remove(self._on_frame)

    def _on_frame(self) -> None:
        """Every DRIVER_EVERY_FRAMES caller frames: keep enough quiet noise queued, note bot audio, move the
        turns on."""
        if self.call.frames_sent % DRIVER_EVERY_FRAMES:
            return
        while self._buffered_ms() < QUIET_LOW_WATER_MS:
            self._say_quiet()
        now = time.monotonic()
        if self.call.bot_playing or self.call.queued_ms > 0:
            self._last_audible = now
        self._advance(now)

    def _wait(self, ready: Callable[[], bool], limit_s: float, then: Callable[[bool], None]) -> None:
        """From now on wait until ``ready`` (then ``then(True)``) or ``limit_s`` have passed (``then(False)``)."""
        self._ready, self._give_up, self._then = ready, time.monotonic() + limit_s, then

    def _advance(self, now: float) -> None:
        while self._finished is not None and not self._finished.done():
            if now >= self._deadline or self.call.ended.is_set():
                self._finished.set_result(None)
                return
            if self._ready():
                self._then(True)
            elif now >= self._give_up:
                self._then(False)
            else:
                return

    def _next_turn(self) -> None:
        kind = next(self._kinds)
        base = self.call.played_ms
        if kind == "barge":
            lo, hi = self.cfg.barge_after_ms
            ready = functools.partial(self._barge_ready, base, float(self.rng.uniform(lo, hi)))
            self._wait(ready, BARGE_WAIT_S, functools.partial(self._speak, kind))
        else:
            self._wait(functools.partial(self._normal_ready, base), NORMAL_WAIT_S, functools.partial(self._speak, kind))

    def _speak(self, kind: str, on_cue: bool) -> None:
        self.turns[kind if on_cue else f"{kind}_timeout"] += 1
        self.speech_ms.append(self.pushed_ms)
        self._say(self.cfg.speech_ms, self.cfg.speech_amplitude)
        # The next turn starts once the caller has finished saying this.
        self._wait(functools.partial(self._said, self.pushed_ms), 10.0, lambda _ok: self._next_turn())

    def _barge_ready(self, base: float, after_ms: float) -> bool:
        """Bot audio is playing, and `after_ms` of it has played since the turn began."""
        return self.call.bot_playing and self.call.played_ms - base >= after_ms

    def _normal_ready(self, base: float) -> bool:
        """The bot said something and has been quiet for a moment."""
        quiet_for = time.monotonic() - self._last_audible
        return self.call.played_ms - base >= 300 and quiet_for >= self.cfg.normal_quiet_s

    def _said(self, pushed_ms: float) -> bool:
        return self.call.frames_sent * self.call.options.frame_ms >= pushed_ms


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
