"""The caller side of the bench: N concurrent simulated Vobiz calls, each a `scenarios.NoiseCaller`.

Every call alternates turns: a barge-in (the caller starts talking 0.4-1.4 s into a bot reply), a normal turn
(the caller waits until the bot has finished and been quiet for a moment), another barge-in, and so on, until
its time is up; then it hangs up. Between turns the caller is not silent but sends low-level noise below the
engine's VAD threshold, so every 20 ms frame is different and can be found again, byte for byte, in what the
engine receives (μ-law passes through the agent unchanged).

Calls are placed by the one runner (:mod:`agent.testkit.runner`) and boiled down to a
:class:`~agent.testkit.analysis.hops.CallResult` each. A fixed set of calls (`run_calls`) is summarised once all
of them have ended: a summary takes 10-25 ms of the generator's loop, and made while the later calls still ran it
stalled the simulated carrier in their last seconds (the playout gaps the bench put down to the carrier clustered
there). A soak (`run_back_to_back_calls`) summarises each call as it ends and drops the simulator's record of it,
audio included: its calls end all the time, so that cost is part of its steady load.
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


async def one_call(timed: TimedCarrier, index: int, cfg: WorkloadConfig) -> Callable[[], CallResult]:
    """One bench call through the runner: placed (15 s at most), talked for ``cfg.seconds``, hung up; returns
    what summarises it (see the module docstring for when)."""
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
        return lambda: CallResult(index, error=f"place_call: {cause}: {detail}")
    driver = taps["driver"]
    plays = taps["plays"]
    assert isinstance(driver, NoiseCaller) and isinstance(plays, list)

    def summary() -> CallResult:
        result = summarize_call(index, call, plays, driver.turns, driver.speech_ms)
        if placed.failure is not None and placed.failure[0] == "timeout":
            result.error = "driver timed out"
        elif placed.failure is not None:
            result.error = f"{placed.failure[0]}: {placed.failure[1]}"
        elif call.end_reason != "caller_hangup":
            result.error = f"call ended early: {call.end_reason} (close code {call.close_code})"
        return result

    return summary


async def run_calls(
    base_url: str, answer_path: str, cfg: WorkloadConfig, on_schedule: Callable[[float], None] | None = None
) -> list[CallResult]:
    """Place `cfg.calls` calls `cfg.stagger_s` apart; returns one result per call, in call order, each summarised
    once every call has ended."""
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
    return [_summarised(i, done.get(i)) for i in range(cfg.calls)]


def _summarised(index: int, summary: Callable[[], CallResult] | None) -> CallResult:
    if summary is None:
        return CallResult(index, error="call task timed out")
    try:
        return summary()
    except Exception as exc:  # one broken call must not sink the run
        return CallResult(index, error=f"call summary failed: {exc!r}")


async def _guarded(timed: TimedCarrier, index: int, cfg: WorkloadConfig) -> Callable[[], CallResult]:
    try:
        return await one_call(timed, index, cfg)
    except Exception as exc:  # one broken call must not sink the run
        error = f"call task failed: {exc!r}"
        return lambda: CallResult(index, error=error)


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
                    summary = await _guarded(timed, index, replace(cfg, seconds=seconds))
            except TimeoutError:
                return CallResult(index, error="call task timed out")
            return _summarised(index, summary)

        return await run_back_to_back(
            cfg.calls,
            one,
            on_result,
            until=until,
            stagger_s=cfg.stagger_s,
            pause_after=lambda r: 1.0 if r.error is not None and not r.frames else 0.0,
        )
