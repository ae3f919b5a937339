"""The caller side of the bench: N concurrent simulated Vobiz calls, each following the same kind of script.

Every call alternates turns: a barge-in (the caller starts talking 0.4-1.4 s into a bot reply), a normal turn
(the caller waits until the bot has finished and been quiet for a moment), another barge-in, and so on, until
its time is up; then it hangs up. Between turns the caller is not silent but sends low-level noise below the
engine's VAD threshold, so every 20 ms frame is different and can be found again, byte for byte, in what the
engine receives (μ-law passes through the agent unchanged).

Each call is boiled down to a :class:`CallResult` (timestamps, frame digests, playAudio prefixes, clears) as
soon as it ends, and the simulator's own record of it, audio included, is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from wire import FRAME_MS, LAG_SPIKE_MS, PREFIX_CHARS, content_rate, frame_key, is_mulaw

from agent.audio.codecs import float_to_pcm16, pcm16_to_mulaw
from agent.simulation.carrier import CallerAudio, CarrierSim, Segment, SimCall, SimCallOptions

QUIET_CHUNK_MS = 80  # caller "silence" is pushed in chunks of this length...
QUIET_LOW_WATER_MS = 240  # ...whenever less than this is waiting to be sent (rides out bench stalls)
DRIVER_TICK_S = 0.04
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


@dataclass
class CallResult:
    """What the analysis needs of one call; plain data, JSON-able."""

    index: int
    call_uuid: str = ""
    error: str | None = None
    answer_t: float | None = None
    start_t: float | None = None
    end_t: float | None = None
    end_reason: str | None = None
    frames: list[tuple[float, str | None]] = field(default_factory=list)  # (sent at, digest) per media frame
    plays: list[tuple[float, str]] = field(default_factory=list)  # (received at, payload prefix) per playAudio
    clears: list[tuple[float, float, float]] = field(default_factory=list)  # (t, played ms at clear, dropped ms)
    bot: list[tuple[float, str, float, str]] = field(default_factory=list)  # (t, start|stop, played ms, reason)
    turns: dict[str, int] = field(default_factory=dict)
    playout_lag_ms: list[float] = field(default_factory=list)  # how late the sim's playout ticks ran
    webhook_failures: list[str] = field(default_factory=list)  # "<event>: HTTP <status>" for non-2xx answers
    played_ms: float = 0.0
    checkpoints: dict[str, int] = field(default_factory=dict)
    protocol_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    internal_errors: list[str] = field(default_factory=list)
    speech_at: list[float] = field(default_factory=list)  # when the first frame of each caller utterance was sent


def tap_play_audio(call: SimCall) -> list[tuple[float, str]] | None:
    """Record when each playAudio arrived and its payload's first bytes (the sim's timeline keeps no payload).

    Wraps the simulator's per-instance handler; returns None when the simulator has no such hook.
    """
    original: Callable[[dict[str, Any]], None] | None = getattr(call, "_on_play_audio", None)
    if original is None or not callable(original):
        return None
    plays: list[tuple[float, str]] = []
    forward: Callable[[dict[str, Any]], None] = original

    def tapped(msg: dict[str, Any]) -> None:
        media = msg.get("media")
        if isinstance(media, dict):
            payload = media.get("payload")
            if isinstance(payload, str):
                plays.append((time.monotonic(), payload[:PREFIX_CHARS]))
        forward(msg)

    setattr(call, "_on_play_audio", tapped)  # noqa: B010 - assigning to a method attribute; mypy refuses `=`
    return plays


class CallerDriver:
    """Feeds one call's caller audio on the fly and decides when the caller talks."""

    def __init__(self, call: SimCall, rng: np.random.Generator, cfg: WorkloadConfig, pushed_ms: float) -> None:
        self.call = call
        self.rng = rng
        self.cfg = cfg
        self.pushed_ms = pushed_ms
        self.turns: Counter[str] = Counter()
        self.speech_ms: list[float] = []  # where each utterance begins on the caller's track
        self._last_audible = time.monotonic()

    @staticmethod
    def noise(rng: np.random.Generator, ms: int, amplitude: float, rate: int) -> Segment:
        """Fresh white noise: every 20 ms frame differs, so each can be recognised at the engine."""
        samples = float_to_pcm16(rng.uniform(-amplitude, amplitude, rate * ms // 1000))
        return CallerAudio.pcm(samples, rate, "noise")

    def _say(self, ms: int, amplitude: float) -> None:
        self.call.say(self.noise(self.rng, ms, amplitude, self.call.media_format.rate))
        self.pushed_ms += ms

    def _buffered_ms(self) -> float:
        return self.pushed_ms - self.call.frames_sent * self.call.options.frame_ms

    async def _tick(self) -> None:
        await asyncio.sleep(DRIVER_TICK_S)
        while self._buffered_ms() < QUIET_LOW_WATER_MS:
            self._say(QUIET_CHUNK_MS, self.cfg.quiet_amplitude)
        if self.call.bot_playing or self.call.queued_ms > 0:
            self._last_audible = time.monotonic()

    async def _wait(self, ready: Callable[[], bool], limit_s: float, deadline: float) -> bool | None:
        """True when `ready`, False on timeout, None when the call is over."""
        give_up = time.monotonic() + limit_s
        while True:
            if time.monotonic() >= deadline or self.call.ended.is_set():
                return None
            if ready():
                return True
            if time.monotonic() >= give_up:
                return False
            await self._tick()

    async def run(self, deadline: float) -> None:
        cfg = self.cfg
        for kind in itertools.cycle(cfg.pattern):
            base = self.call.played_ms
            if kind == "barge":
                lo, hi = cfg.barge_after_ms
                ready = functools.partial(self._barge_ready, base, float(self.rng.uniform(lo, hi)))
                outcome = await self._wait(ready, BARGE_WAIT_S, deadline)
            else:
                outcome = await self._wait(functools.partial(self._normal_ready, base), NORMAL_WAIT_S, deadline)
            if outcome is None:
                return
            self.turns[kind if outcome else f"{kind}_timeout"] += 1
            self.speech_ms.append(self.pushed_ms)
            self._say(cfg.speech_ms, cfg.speech_amplitude)
            # The next turn starts once the caller has finished saying this.
            if await self._wait(functools.partial(self._said, self.pushed_ms), 10.0, deadline) is None:
                return

    def _barge_ready(self, base: float, after_ms: float) -> bool:
        """Bot audio is playing, and `after_ms` of it has played since the turn began."""
        return self.call.bot_playing and self.call.played_ms - base >= after_ms

    def _normal_ready(self, base: float) -> bool:
        """The bot said something and has been quiet for a moment."""
        quiet_for = time.monotonic() - self._last_audible
        return self.call.played_ms - base >= 300 and quiet_for >= self.cfg.normal_quiet_s

    def _said(self, pushed_ms: float) -> bool:
        return self.call.frames_sent * FRAME_MS >= pushed_ms


def summarize_call(
    index: int,
    call: SimCall,
    plays: list[tuple[float, str]] | None,
    turns: Counter[str],
    speech_ms: Sequence[float] = (),
) -> CallResult:
    res = CallResult(index, call.call_uuid)
    res.answer_t = call.webhooks[0].t if call.webhooks else None
    mulaw = is_mulaw(call.media_format.content_type)
    track = call.caller_track()
    n = call.media_format.samples_per_frame(call.options.frame_ms)
    for entry in call.timeline:
        kind = entry.kind
        if kind == "frame_sent":
            k = int(entry.detail["chunk"]) - 1
            key = frame_key(pcm16_to_mulaw(track[k * n : (k + 1) * n])) if mulaw else None
            res.frames.append((entry.t, key))
        elif kind == "bot_audio_started":
            res.bot.append((entry.t, "start", float(entry.detail.get("played_ms", 0.0)), ""))
            if res.start_t is not None and "call_ms" in entry.detail:
                res.playout_lag_ms.append((entry.t - res.start_t) * 1000 - float(entry.detail["call_ms"]))
        elif kind == "bot_audio_stopped":
            res.bot.append(
                (entry.t, "stop", float(entry.detail.get("played_ms", 0.0)), str(entry.detail.get("reason", "")))
            )
        elif kind == "start_sent":
            res.start_t = entry.t
        elif kind == "ws_closed":
            res.end_t = entry.t
    # Without the tap, fall back to arrival times alone (responses are then matched by time, not bytes).
    res.plays = plays if plays is not None else [(e.t, "") for e in call.timeline if e.kind == "play_audio_received"]
    res.clears = [(c.t, c.played_ms_at_clear, c.queued_ms_dropped) for c in call.clears]
    res.turns = dict(turns)
    res.end_reason = call.end_reason
    res.played_ms = call.played_ms
    res.checkpoints = {
        "received": len(call.received_checkpoints),
        "acked": len(call.acked_checkpoints),
        "dropped": len(call.dropped_checkpoints),
    }
    res.webhook_failures = [
        f"{w.event}: {f'HTTP {w.status}' if w.status is not None else w.error}"
        for w in call.webhooks
        if w.status is None or w.status >= 400
    ]
    frame_ms = call.options.frame_ms
    res.speech_at = [res.frames[k][0] for k in (int(ms // frame_ms) for ms in speech_ms) if k < len(res.frames)]
    res.protocol_errors = list(call.protocol_errors)
    res.warnings = list(call.warnings)
    res.internal_errors = list(call.internal_errors)
    return res


async def one_call(carrier: CarrierSim, index: int, cfg: WorkloadConfig, at: float) -> CallResult:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    rng = np.random.default_rng([cfg.seed, index])
    rate = content_rate(cfg.content_type)
    first_ms = 2 * QUIET_CHUNK_MS
    opening = CallerDriver.noise(rng, first_ms, cfg.quiet_amplitude, rate)
    options = SimCallOptions(content_type=cfg.content_type)
    try:
        async with asyncio.timeout(15):
            call = await carrier.place_call([opening], options)
    except Exception as exc:
        return CallResult(index, error=f"place_call: {type(exc).__name__}: {exc}")
    # Nothing has been read from the socket yet: place_call returns right after starting the call's tasks.
    plays = tap_play_audio(call)
    driver = CallerDriver(call, rng, cfg, first_ms)
    error: str | None = None
    try:
        async with asyncio.timeout(cfg.seconds + 10):
            await driver.run(time.monotonic() + cfg.seconds)
    except TimeoutError:
        error = "driver timed out"
    finally:
        if not call.ended.is_set():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await call.hangup()
    result = summarize_call(index, call, plays, driver.turns, driver.speech_ms)
    if error is None and call.end_reason != "caller_hangup":
        error = f"call ended early: {call.end_reason} (close code {call.close_code})"
    result.error = error
    with contextlib.suppress(ValueError):
        carrier.calls.remove(call)  # let the simulator's copy of the audio go
    return result


@dataclass
class LoopLag:
    """How late the bench's own event loop wakes up; when it lags, the carrier's timestamps do too."""

    samples_ms: list[float] = field(default_factory=list)
    spikes: list[tuple[float, float]] = field(default_factory=list)  # (woke at, lag ms) beyond LAG_SPIKE_MS

    async def watch(self, period: float = 0.01) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(period)
            now = time.monotonic()
            lag = (now - t - period) * 1000
            self.samples_ms.append(lag)
            if lag > LAG_SPIKE_MS:
                self.spikes.append((now, lag))


async def run_calls(
    base_url: str, answer_path: str, cfg: WorkloadConfig, on_schedule: Callable[[float], None] | None = None
) -> list[CallResult]:
    """Place `cfg.calls` calls `cfg.stagger_s` apart; returns one result per call, in call order."""
    async with CarrierSim(base_url, answer_path=answer_path) as carrier:
        t0 = time.monotonic() + 0.2
        if on_schedule is not None:
            on_schedule(t0)
        tasks = [asyncio.create_task(one_call(carrier, i, cfg, t0 + i * cfg.stagger_s)) for i in range(cfg.calls)]
        limit = cfg.calls * cfg.stagger_s + cfg.seconds + 45
        try:
            done, _ = await asyncio.wait(tasks, timeout=limit)
        finally:
            for task in tasks:
                task.cancel()  # no-op for finished calls; stragglers (or everything, when interrupted) stop here
            await asyncio.gather(*tasks, return_exceptions=True)
        results: list[CallResult] = []
        for i, task in enumerate(tasks):
            if task in done and not task.cancelled() and task.exception() is None:
                results.append(task.result())
            else:
                exc = None if task.cancelled() else task.exception()
                results.append(CallResult(i, error=f"call task failed: {exc!r}" if exc else "call task timed out"))
        return results


async def run_back_to_back(
    base_url: str,
    answer_path: str,
    cfg: WorkloadConfig,
    until: float,
    on_result: Callable[[CallResult], None],
    seconds_range: tuple[float, float] = (8.0, 12.0),
) -> int:
    """Keep `cfg.calls` calls up until `until` (monotonic): each slot places its next call as soon as the previous
    one ended, each call `seconds_range` long (uniform). Every result goes to `on_result` as soon as the call
    ends. Calls may start until `until`, so the load holds up to then and the last calls end up to one call
    length later. Returns the number of calls placed."""
    rng = np.random.default_rng([cfg.seed, 0xB2B])
    counter = itertools.count()
    lo, hi = seconds_range

    async def slot(carrier: CarrierSim, k: int) -> None:
        await asyncio.sleep(k * cfg.stagger_s)
        while time.monotonic() < until:
            index = next(counter)
            seconds = float(rng.uniform(lo, hi))
            try:
                # one_call bounds itself (place 15 s, talk seconds + 10, hang up 10); this is a backstop.
                async with asyncio.timeout(seconds + 60):
                    result = await one_call(carrier, index, replace(cfg, seconds=seconds), time.monotonic())
            except TimeoutError:
                result = CallResult(index, error="call task timed out")
            on_result(result)
            if result.error is not None and not result.frames:
                await asyncio.sleep(1.0)  # the call never got going: do not hammer a server that refuses calls

    async with CarrierSim(base_url, answer_path=answer_path) as carrier:
        tasks = [asyncio.create_task(slot(carrier, k)) for k in range(cfg.calls)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return next(counter)
