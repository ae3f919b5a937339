"""The workings of ``bench/soak.py`` (what it measures and why is in that script's own description)."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from agent.testkit.analysis import health, hops
from agent.testkit.bench import sides as kit
from agent.testkit.bench import tool
from agent.testkit.bench.soak_state import (
    CALL_SECONDS,
    CHUNK_S,
    FDS_FLAT,
    RSS_FLAT_PCT,
    SAMPLE_S,
    SETTLE_S,
    Sample,
    SoakState,
    sample_procs,
    trend,
    verdict,
)
from agent.testkit.bench.wire import MULAW_8K
from agent.testkit.bench.workload import WorkloadConfig, run_back_to_back_calls

# ------------------------------------------------------------------------------------------------------------
# One side
# ------------------------------------------------------------------------------------------------------------


async def _gauge(target: kit.Target) -> float | None:
    if target.name != "agent":
        return None
    metrics = await kit.scrape_metrics(f"{target.base_url}/metrics", nonzero_only=False)
    return metrics.get("agent_active_calls")


async def _wait_gauge_zero(target: kit.Target) -> tuple[float | None, float]:
    """(agent_active_calls once it reads 0 or after SETTLE_S, seconds it took)."""
    t = time.monotonic()
    value = await _gauge(target)
    while value and time.monotonic() - t < SETTLE_S:
        await asyncio.sleep(0.5)
        value = await _gauge(target)
    return value, round(time.monotonic() - t, 1)


async def soak_side(name: str, args: argparse.Namespace, stem: Path, minutes: float, warmup_s: float) -> dict[str, Any]:
    duration = minutes * 60
    opts = kit.ServerOptions.from_args(args, MULAW_8K)
    cfg = WorkloadConfig(calls=args.concurrency, seconds=CALL_SECONDS[1], content_type=MULAW_8K, seed=args.seed)
    async with kit.start_side(name, opts, stem) as target:
        server = psutil.Process(target.server.pid)
        others = {"engine": psutil.Process(target.engine.pid), "bench": psutil.Process(os.getpid())}
        await asyncio.sleep(1.0)
        before = sample_procs(server, others, time.monotonic())
        if before is None:
            raise RuntimeError(f"the {target.server.name} exited before the first call:\n{target.server.log_tail()}")
        before.active_calls = await _gauge(target)
        t0 = time.monotonic()
        until = t0 + duration
        state = SoakState(name, t0)
        state.start_window(sample_procs(server, others, t0))

        async def sample_now() -> Sample | None:
            s = sample_procs(server, others, t0)
            if s is not None:
                s.active_calls = await _gauge(target)
            return s

        async def sample_loop() -> None:
            tick = t0
            while time.monotonic() < until:
                s = await sample_now()
                if s is not None:
                    state.samples.append(s)
                tick += SAMPLE_S
                await asyncio.sleep(max(0.0, tick - time.monotonic()))

        async def chunk_loop() -> None:
            k = 1
            while t0 + k * CHUNK_S <= until + 0.5:
                await asyncio.sleep(max(0.0, t0 + k * CHUNK_S - time.monotonic()))
                try:
                    engine = await kit.drain_engine(target.engine_port, wait_idle_s=0)
                except (httpx.HTTPError, ValueError) as exc:  # the next batch (or the last) picks these up
                    target.notes.append(f"could not collect the engine's records at {k * CHUNK_S:.0f} s: {exc!r}")
                    engine = {"sessions": []}
                state.read_gc_pauses(target.log_path)
                state.close_window(state.absorb(engine, final=False), f"{k * CHUNK_S:.0f}s", await sample_now())
                k += 1

        load = asyncio.create_task(
            run_back_to_back_calls(target.base_url, target.answer_path, cfg, until, state.on_result, CALL_SECONDS)
        )
        helpers = [asyncio.create_task(f) for f in (sample_loop(), chunk_loop(), state.lag.watch())]
        try:
            async with asyncio.timeout(duration + CALL_SECONDS[1] + 90):
                await load
        finally:
            for task in (load, *helpers):
                task.cancel()
            await asyncio.gather(load, *helpers, return_exceptions=True)
        print(f"[soak] {name}: load done, collecting ...", file=sys.stderr, flush=True)
        try:
            engine = await kit.drain_engine(target.engine_port)  # waits (bounded) for the model sockets to close
        except (httpx.HTTPError, ValueError) as exc:
            engine = {"sessions": [], "internal_errors": [f"could not collect the engine's records: {exc!r}"]}
        state.identify_stuck(engine)
        state.read_gc_pauses(target.log_path)
        state.close_window(state.absorb(engine, final=True), "tail", await sample_now())
        gauge_end, gauge_wait_s = await _wait_gauge_zero(target)
        await asyncio.sleep(2.0)  # let sockets finish closing before counting fds
        after = sample_procs(server, others, t0) or Sample(math.nan, math.nan, -1, -1, math.nan)
        after.active_calls = gauge_end
        if not target.server.alive():
            target.notes.append(f"the {target.server.name} exited with code {target.server.popen.returncode}")
        metrics = await kit.scrape_metrics(f"{target.base_url}/metrics") if name == "agent" else {}
        log_mark = target.log_size()
    log_bytes = target.log_path.read_bytes() if target.log_path.exists() else b""
    during, shutdown = log_bytes[:log_mark].decode(errors="replace"), log_bytes[log_mark:].decode(errors="replace")
    return side_json(
        state, before, after, engine, warmup_s, duration, gauge_wait_s, metrics, during, shutdown, target, cfg.calls
    )


def side_json(
    state: SoakState,
    before: Sample,
    after: Sample,
    engine: dict[str, Any],
    warmup_s: float,
    duration: float,
    gauge_wait_s: float,
    metrics: dict[str, float],
    log_during: str,
    log_shutdown: str,
    target: kit.Target,
    concurrency: int,
) -> dict[str, Any]:
    steady = [s for s in state.samples if warmup_s <= s.t <= duration]
    ts = [s.t for s in steady]
    trends = {
        "rss_mb": trend(ts, [s.rss_mb for s in steady]),
        "fds": trend(ts, [float(s.fds) for s in steady]),
        "threads": trend(ts, [float(s.threads) for s in steady]),
        "engine_rss_mb": trend(ts, [s.engine_rss_mb for s in steady]),
        "bench_rss_mb": trend(ts, [s.bench_rss_mb for s in steady]),
    }
    flat, why = verdict(trends["rss_mb"], trends["fds"])
    # Growth per call that ended while it was measured: a cache of N calls grows like a leak until it is full.
    ended = sum(1 for t in state.call_ends if ts and ts[0] <= t <= ts[-1])
    rss_growth = trends["rss_mb"]["growth"]
    per_call_kb = round(float(rss_growth) * 1024 / ended, 1) if ended and rss_growth is not None else None
    idle_growth_kb = round((after.rss_mb - before.rss_mb) * 1024 / len(state.call_ends), 1) if state.call_ends else None
    q = state.quality
    cpu = (
        (steady[-1].cpu_s - steady[0].cpu_s) / (steady[-1].t - steady[0].t) * 100
        if len(steady) > 1 and steady[-1].t > steady[0].t
        else math.nan
    )
    problems: list[str] = []
    if q.calls_failed:
        problems.append(f"{q.calls_failed}/{q.calls_placed} calls failed: {dict(q.errors)}")
    if after.active_calls:
        problems.append(f"agent_active_calls is {after.active_calls:g} {gauge_wait_s:g} s after the last call ended")
    if engine.get("still_open"):
        problems.append(
            f"{engine['still_open']} model sessions still open {health.ENGINE_IDLE_S:g}+ s after the last call "
            f"ended: {[{k: v for k, v in x.items() if k != 'client_events'} for x in state.stuck[:3]]}"
        )
    if after.fds - before.fds >= FDS_FLAT:
        problems.append(f"open fds {before.fds} before the first call, {after.fds} after the last one")
    active = [smp.active_calls for smp in state.samples if smp.active_calls is not None]
    if active and max(active) > concurrency + 1:
        problems.append(
            f"agent_active_calls reached {max(active):g} with {concurrency} calls up (last sample "
            f"{active[-1]:g}): calls that had ended for the carrier stayed active in the agent"
        )
    if q.webhook_failures:
        problems.append(
            f"webhooks the carrier saw fail: {sum(q.webhook_failures.values())} ({q.webhook_failures.most_common(4)})"
        )
    if q.calls_without_session:
        problems.append(f"{q.calls_without_session} calls could not be matched with an engine session")
    if q.sessions_without_call:
        problems.append(f"{q.sessions_without_call} engine sessions could not be matched with a call")
    problems += [f"{p} (x{n} batches)" if n > 1 else p for p, n in q.problems.most_common(8)]
    problems += [f"engine internal error: {e}" for e in q.engine_internal_errors[:3]]
    problems += [f"note: {n}" for n in target.notes]
    late = health.summarize_log(log_shutdown)
    if late["tracebacks"] or {"ERROR", "CRITICAL"} & set(late["levels"]):
        problems.append(f"errors in the server log while it shut down: {late['top'][:3]}")
    return {
        "duration_s": round(duration, 1),
        "warmup_s": warmup_s,
        "verdict": flat,
        "verdict_why": why,
        "rss_growth_kb_per_call": per_call_kb,
        "calls_ended_in_fit": ended,
        "idle_rss_growth_kb_per_call": idle_growth_kb,
        "trends": trends,
        "idle_before": asdict(before),
        "idle_after": asdict(after),
        "server_cpu_pct_steady": round(cpu, 1),
        "cpu_per_call_pct": round(cpu / concurrency, 3),
        "calls": {
            "placed": q.calls_placed,
            "ok": q.calls_ok,
            "failed": q.calls_failed,
            "errors": dict(q.errors),
            "analyzed": q.calls_analyzed,
            "carrier_end_reasons": dict(q.carrier_end_reasons),
            "webhook_failures": dict(q.webhook_failures),
        },
        "active_calls_end": after.active_calls,
        "active_calls_wait_s": gauge_wait_s,
        "quality": {
            "barge_in_ms": hops.stats(q.barge_ms),
            "caller_to_model_ms": hops.stats(np.concatenate(q.frame_ms).tolist() if q.frame_ms else []),
            "model_to_caller_ms": hops.stats(q.delta_ms),
            "playout_gaps": len(q.gaps_ms),
            "playout_gaps_during_generator_stalls": q.gaps_during_stalls,
            "playout_gaps_of_the_agent": q.gaps_of_the_agent,
            "playout_gaps_during_server_gc": q.gaps_during_server_gc,
            "server_gc_pauses_ms": hops.stats(ms for _, ms, _ in state.server_gc) if state.server_gc else None,
            "playout_gap_ms": hops.stats(q.gaps_ms),
            "barge_ins_not_cleared": q.counts.get("barge_ins_not_cleared", 0),
            "turn_timeouts": sum(v for k, v in q.turns.items() if k.endswith("_timeout")),
            "turns": dict(q.turns),
            "counts": dict(q.counts),
        },
        "stuck_sessions": state.stuck,
        "windows": state.windows,
        "problems": problems,
        "server_log": {"path": str(target.log_path), **health.summarize_log(log_during)},
        "server_log_at_shutdown": late,
        "server_metrics": metrics,
        "samples": [asdict(s) for s in state.samples],
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tool.cancel_on_signals()
    t_begin = time.monotonic()
    config = {
        "minutes": args.minutes,
        "baseline_minutes": args.baseline_minutes,
        "concurrency": args.concurrency,
        "warmup_s": args.warmup,
        "call_seconds": CALL_SECONDS,
        "sample_s": SAMPLE_S,
        "flat_if": {"rss_growth_pct_below": RSS_FLAT_PCT, "fds_growth_below": FDS_FLAT},
    }
    report, stem = tool.start_report("soak", args, config)
    report["sides"] = {}
    plan = [("agent", args.minutes, args.warmup)]
    if args.baseline_minutes > 0:
        # A shorter run keeps a proportionate warm-up, so it still has samples to fit.
        plan.append(("baseline", args.baseline_minutes, min(args.warmup, args.baseline_minutes * 60 / 3)))
    for name, minutes, warmup in plan:
        print(f"[soak] {name}: {args.concurrency} calls back to back for {minutes:g} min ...", file=sys.stderr)
        report["sides"][name] = await soak_side(name, args, stem, minutes, warmup)
    report["wall_s"] = round(time.monotonic() - t_begin, 1)
    return report
