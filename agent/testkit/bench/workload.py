"""The caller side of the bench: N concurrent simulated Vobiz calls, each a `scenarios.NoiseCaller`.

Every call alternates turns: a barge-in (the caller starts talking 0.4-1.4 s into a bot reply), a normal turn
(the caller waits until the bot has finished and been quiet for a moment), another barge-in, and so on, until
its time is up; then it hangs up. Between turns the caller is not silent but sends low-level noise below the
engine's VAD threshold, so every 20 ms frame is different and can be found again, byte for byte, in what the
engine receives (μ-law passes through the agent unchanged).

Calls are placed by the one runner (:mod:`agent.testkit.runner`); each is boiled down to a
:class:`~agent.testkit.analysis.hops.CallResult` as soon as it ends, and the simulator's record of it, audio
included, is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from agent.testkit.analysis.hops import CallResult, summarize_call
from agent.testkit.bench.tool import load_gc
from agent.testkit.bench.wire import PREFIX_CHARS, content_rate
from agent.testkit.carrier import SimCall, SimCallOptions
from agent.testkit.runner import TimedCarrier, run_back_to_back, run_call, run_ramp
from agent.testkit.scenarios import QUIET_CHUNK_MS, STAGGER_S, NoiseCaller, WorkloadConfig

__all__ = ["STAGGER_S", "CallResult", "WorkloadConfig", "one_call", "run_back_to_back_calls", "run_calls"]


def tap_play_audio(call: SimCall) -> list[tuple[float, str]]:
    """Record when each playAudio arrived and its payload's first bytes (the sim's timeline keeps no payload)."""
    plays: list[tuple[float, str]] = []

    def tap(msg: dict[str, object]) -> None:
        media = msg.get("media")
        if isinstance(media, dict):
            payload = media.get("payload")
            if isinstance(payload, str):
                plays.append((time.monotonic(), payload[:PREFIX_CHARS]))

    call.play_audio_listeners.append(tap)
    return plays


async def one_call(timed: TimedCarrier, index: int, cfg: WorkloadConfig) -> CallResult:
    """One bench call through the runner: placed (15 s at most), talked for ``cfg.seconds``, hung up, summarised."""
    rng = np.random.default_rng([cfg.seed, index])
    rate = content_rate(cfg.content_type)
    first_ms = 2 * QUIET_CHUNK_MS
    opening = NoiseCaller.noise(rng, first_ms, cfg.quiet_amplitude, rate)
    taps: dict[str, object] = {}

    def connected(call: SimCall) -> None:
        # Nothing has been read from the socket yet: the runner calls this right after the call's tasks start.
        taps["plays"] = tap_play_audio(call)
        taps["driver"] = NoiseCaller(call, rng, cfg, first_ms)

    async def drive(call: SimCall) -> None:
        driver = taps["driver"]
        assert isinstance(driver, NoiseCaller)
        await driver.run(time.monotonic() + cfg.seconds)
        if not call.ended.is_set():
            await call.hangup()

    placed = await run_call(
        timed,
        [opening],
        options=SimCallOptions(content_type=cfg.content_type),
        drive=drive,
        max_duration_s=cfg.seconds + 10,
        place_timeout_s=15,
        on_connected=connected,
    )
    call = placed.call
    if call is None:
        cause, detail = placed.failure or ("stream_failed", "no stream")
        return CallResult(index, error=f"place_call: {cause}: {detail}")
    driver = taps["driver"]
    plays = taps["plays"]
    assert isinstance(driver, NoiseCaller) and isinstance(plays, list)
    result = summarize_call(index, call, plays, driver.turns, driver.speech_ms)
    if placed.failure is not None and placed.failure[0] == "timeout":
        result.error = "driver timed out"
    elif placed.failure is not None:
        result.error = f"{placed.failure[0]}: {placed.failure[1]}"
    elif call.end_reason != "caller_hangup":
        result.error = f"call ended early: {call.end_reason} (close code {call.close_code})"
    return result


async def run_calls(
    base_url: str, answer_path: str, cfg: WorkloadConfig, on_schedule: Callable[[float], None] | None = None
) -> list[CallResult]:
    """Place `cfg.calls` calls `cfg.stagger_s` apart; returns one result per call, in call order."""
    async with TimedCarrier(base_url, answer_path) as timed:
        t0 = time.monotonic() + 0.2
        if on_schedule is not None:
            on_schedule(t0)
        limit = cfg.calls * cfg.stagger_s + cfg.seconds + 45
        with load_gc():
            done = await run_ramp(
                range(cfg.calls),
                lambda i: _guarded(timed, i, cfg),
                start_at=t0,
                interval_s=cfg.stagger_s,
                concurrency=cfg.calls,
                clock=time.monotonic,
                limit_s=limit,
            )
        return [done.get(i) or CallResult(i, error="call task timed out") for i in range(cfg.calls)]


async def _guarded(timed: TimedCarrier, index: int, cfg: WorkloadConfig) -> CallResult:
    try:
        return await one_call(timed, index, cfg)
    except Exception as exc:  # one broken call must not sink the run
        return CallResult(index, error=f"call task failed: {exc!r}")


async def run_back_to_back_calls(
    base_url: str,
    answer_path: str,
    cfg: WorkloadConfig,
    until: float,
    on_result: Callable[[CallResult], None],
    seconds_range: tuple[float, float] = (8.0, 12.0),
) -> int:
    """Keep `cfg.calls` calls up until `until` (monotonic), each `seconds_range` long (uniform); every result
    goes to `on_result` as soon as the call ends. Calls may start until `until`, so the load holds up to then
    and the last calls end up to one call length later. Returns the number of calls placed."""
    rng = np.random.default_rng([cfg.seed, 0xB2B])
    lo, hi = seconds_range

    async with TimedCarrier(base_url, answer_path) as timed:

        async def one(index: int) -> CallResult:
            seconds = float(rng.uniform(lo, hi))
            try:
                # one_call bounds itself (place 15 s, talk seconds + 10, hang up 15); this is a backstop.
                async with asyncio.timeout(seconds + 60):
                    return await _guarded(timed, index, replace(cfg, seconds=seconds))
            except TimeoutError:
                return CallResult(index, error="call task timed out")

        return await run_back_to_back(
            cfg.calls,
            one,
            on_result,
            until=until,
            stagger_s=cfg.stagger_s,
            pause_after=lambda r: 1.0 if r.error is not None and not r.frames else 0.0,
        )
