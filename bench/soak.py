"""Soak: hours of calls compressed into minutes; the agent's memory and open file descriptors must stay flat.

Calls run back to back at a fixed concurrency (default 10) for `--minutes` (default 3) against the real agent
process: each call 8-12 s of the bench/calls.py workload (greeting, barge-ins, a normal turn), and the next one
starts as soon as it hangs up. Every 2 s the bench samples the agent process (RSS, open fds, threads, CPU time)
and its `agent_active_calls` gauge; after a warm-up (default 30 s, discarded) it fits a straight line to RSS and
fds and reports the slope per hour and the growth it projects over the run. Flat: projected growth < 2 % of RSS
and < 5 fds. The same is done, shorter (`--baseline-minutes`, default 1), for the baseline relay.

Every 30 s the bench also collects the engine's records of the sessions that ended and matches them with the
calls that ended (as bench/calls.py does), so call quality is tracked over time: barge-in reaction, playout gaps,
latency per hop. After the last call: the gauge must come back to 0, the fds to where they were before the first
call, and no model session may stay open.

Results: a table per side, and JSON at bench/results/soak-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from agent.testkit import procs
from agent.testkit.analysis import health, hops
from agent.testkit.bench import sides as kit
from agent.testkit.bench.wire import MULAW_8K
from agent.testkit.bench.workload import CallResult, LoopLag, WorkloadConfig, run_back_to_back_calls

SAMPLE_S = 2.0
CHUNK_S = 30.0
CALL_SECONDS = (8.0, 12.0)
STALE_S = 30.0  # a call whose engine session has not closed this long after it ended is counted unmatched
ORPHANS_KEPT = 100  # unmatched calls kept to name the calls of sessions still open at the end
SETTLE_S = 15.0  # after the last call: how long the gauge gets to come back to 0
RSS_FLAT_PCT = 2.0
FDS_FLAT = 5.0
MB = 1024 * 1024
_NUMBER = re.compile(r"\d+(\.\d+)?")  # problems differ only by counts between batches


# ------------------------------------------------------------------------------------------------------------
# Sampling and trends
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the load started
    rss_mb: float
    fds: int
    threads: int
    cpu_s: float
    active_calls: float | None = None
    engine_rss_mb: float = math.nan
    bench_rss_mb: float = math.nan
    wait_s: float = math.nan  # the server's event loop: ready to run but waiting for a CPU (cumulative)
    runs: float = math.nan  # ... and how many times it got one
    machine_busy_s: float = math.nan  # all cores (procs.machine_busy_s)


def sample_procs(server: psutil.Process, others: dict[str, psutil.Process], t0: float) -> Sample | None:
    """The server's figures now (None once it has exited), with the engine's and the bench's RSS as context."""
    try:
        with server.oneshot():
            times = server.cpu_times()
            s = Sample(
                t=time.monotonic() - t0,
                rss_mb=server.memory_info().rss / MB,
                fds=server.num_fds(),
                threads=server.num_threads(),
                cpu_s=float(times.user + times.system),
            )
    except psutil.Error:
        return None
    s.wait_s, s.runs = procs.run_queue_wait(server.pid)
    s.machine_busy_s = procs.machine_busy_s()
    with contextlib.suppress(psutil.Error):
        s.engine_rss_mb = others["engine"].memory_info().rss / MB
    with contextlib.suppress(psutil.Error):
        s.bench_rss_mb = others["bench"].memory_info().rss / MB
    return s


def trend(ts: list[float], ys: list[float]) -> dict[str, float | int | None]:
    """Least-squares line through (t, y): slope per hour with its standard error, growth projected over the span."""
    n = len(ts)
    if n < 3:
        return {"n": n, "slope_per_h": None, "se_per_h": None, "growth": None, "mean": None, "first": None}
    t, y = np.asarray(ts, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    slope, intercept = np.polyfit(t, y, 1)
    resid = y - (slope * t + intercept)
    sxx = float(((t - t.mean()) ** 2).sum())
    se = math.sqrt(float((resid**2).sum()) / (n - 2) / sxx) if sxx > 0 else math.nan
    span = float(t[-1] - t[0])
    halves: list[float | None] = [None, None]
    if n >= 8:  # a leak keeps its slope; a warm-up flattens out
        mid = n // 2
        halves = [round(float(np.polyfit(t[i], y[i], 1)[0]) * 3600, 3) for i in (slice(0, mid), slice(mid, n))]
    return {
        "n": n,
        "span_s": round(span, 1),
        "slope_per_h": round(float(slope) * 3600, 3),
        "se_per_h": round(se * 3600, 3),
        "growth": round(float(slope) * span, 3),
        "slope_first_half_per_h": halves[0],
        "slope_second_half_per_h": halves[1],
        "mean": round(float(y.mean()), 3),
        "first": round(float(y[0]), 3),
        "last": round(float(y[-1]), 3),
        "min": round(float(y.min()), 3),
        "max": round(float(y.max()), 3),
    }


def verdict(rss: dict[str, Any], fds: dict[str, Any]) -> tuple[str, list[str]]:
    """("flat" | "levelling off" | "growing" | "unknown", why).

    Flat: the line through the run projects less than RSS_FLAT_PCT of RSS and FDS_FLAT fds of growth. Levelling off:
    not flat over the run, but the second half alone would be (a warm-up, or a bounded cache filling up: run longer
    to tell it from a slow leak).
    """
    if rss["growth"] is None or fds["growth"] is None:
        return "unknown", ["too few samples after the warm-up: use a longer --minutes or a shorter --warmup"]
    why = []
    rss_pct = rss["growth"] / rss["mean"] * 100 if rss["mean"] else 0.0
    if rss_pct >= RSS_FLAT_PCT:
        why.append(f"RSS grew {rss['growth']:+.1f} MB ({rss_pct:+.1f}% >= {RSS_FLAT_PCT:g}%) over the run")
    if fds["growth"] >= FDS_FLAT:
        why.append(f"open fds grew {fds['growth']:+.1f} (>= {FDS_FLAT:g}) over the run")
    if not why:
        return "flat", why
    late: list[float] = []
    for trend_, limit in ((rss, rss["mean"] * RSS_FLAT_PCT / 100), (fds, FDS_FLAT)):
        slope = trend_.get("slope_second_half_per_h")
        if slope is None:
            return "growing", why
        late.append(slope / 3600 * float(trend_["span_s"]) / limit)
    if max(late) < 1.0:
        why.append(
            f"the second half's slope ({rss['slope_second_half_per_h']:+.1f} MB/h) is within the flat criterion: "
            "a warm-up or a bounded cache filling up; run longer to tell it from a slow leak"
        )
        return "levelling off", why
    return "growing", why


# ------------------------------------------------------------------------------------------------------------
# Call quality over time: match each batch of ended calls with the engine sessions that closed
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Quality:
    calls_placed: int = 0
    calls_ok: int = 0
    calls_failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    calls_analyzed: int = 0
    calls_without_session: int = 0
    sessions_without_call: int = 0
    barge_ms: list[float] = field(default_factory=list)
    frame_ms: list[np.ndarray[Any, np.dtype[np.float32]]] = field(default_factory=list)  # ~500 a second: compact
    delta_ms: list[float] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)
    gaps_during_stalls: int = 0
    gaps_during_server_gc: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    turns: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    engine_internal_errors: list[str] = field(default_factory=list)
    webhook_failures: Counter[str] = field(default_factory=Counter)  # "<event>: HTTP <status>" as the carrier saw it
    carrier_end_reasons: Counter[str] = field(default_factory=Counter)


class SoakState:
    """What one side's soak accumulates while the calls run."""

    def __init__(self, name: str, t0: float) -> None:
        self.name = name
        self.t0 = t0
        self.quality = Quality()
        self.samples: list[Sample] = []
        self.windows: list[dict[str, Any]] = []
        self.lag = LoopLag()
        self.stuck: list[dict[str, Any]] = []
        self.call_ends: list[float] = []  # seconds since t0 at which each call ended
        self.engine_spikes: list[tuple[float, float]] = []  # (woke at, lag ms) of the engine's event loop
        self.server_gc: list[tuple[float, float, int]] = []  # with --gc-probe: (ended at, ms, generation)
        self._log_offset = 0
        self._pending: list[tuple[float, CallResult]] = []  # (ended at, call) not yet matched with its session
        self._carry: list[dict[str, Any]] = []  # closed sessions not yet matched, kept for one more batch
        self._orphans: list[CallResult] = []  # the last calls given up on unmatched: a stuck call's may be here
        self._window: dict[str, Any] = {"calls_ok": 0, "calls_failed": 0, "sample": None}

    def on_result(self, res: CallResult) -> None:
        q = self.quality
        q.calls_placed += 1
        self.call_ends.append(time.monotonic() - self.t0)
        if res.error is None:
            q.calls_ok += 1
            self._window["calls_ok"] += 1
        else:
            q.calls_failed += 1
            self._window["calls_failed"] += 1
            q.errors[res.error.split(":")[0]] += 1
        q.webhook_failures.update(res.webhook_failures)
        q.carrier_end_reasons[str(res.end_reason)] += 1
        if res.frames:
            self._pending.append((time.monotonic(), res))

    def read_gc_pauses(self, log_path: Path) -> None:
        """Pick up the GC pauses the server logged since the last call (--gc-probe)."""
        try:
            with log_path.open("rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except OSError:
            return
        # Only whole lines: the probe writes each line at once, but the read may end mid-line.
        data = data[: data.rfind(b"\n") + 1]
        self._log_offset += len(data)
        # Start-up collections (imports, before the freeze) are not what calls hear: count from the first call.
        self.server_gc += [p for p in health.gc_pauses(data.decode(errors="replace")) if p[0] >= self.t0]

    def absorb(self, engine: dict[str, Any], final: bool) -> dict[str, Any]:
        """Match the calls that ended with the sessions that closed; returns this batch's figures."""
        q = self.quality
        now = time.monotonic()
        closed = [s for s in engine.get("sessions", []) if not s.get("open_at_drain")]
        sessions = self._carry + closed
        pending = [c for _, c in self._pending]
        pairing = hops.match_side(pending, {"sessions": sessions}, MULAW_8K)
        paired_calls = set(pairing.session_call.values())
        batch_calls = [c for c in pending if c.index in paired_calls]
        batch_sessions = [sessions[i] for i in sorted(pairing.session_call)]
        keep: list[tuple[float, CallResult]] = []
        for ended, call in self._pending:
            if call.index in paired_calls:
                continue
            if final or now - ended > STALE_S:
                q.calls_without_session += 1
                self._orphans = [*self._orphans[-(ORPHANS_KEPT - 1) :], call]
            else:
                keep.append((ended, call))
        self._pending = keep
        self._carry = []
        for i, sess in enumerate(sessions):
            if i in pairing.session_call:
                continue
            if final or sess.get("_carried"):
                q.sessions_without_call += 1
            else:
                sess["_carried"] = True
                self._carry.append(sess)
        batch = {"sessions": batch_sessions}
        m = hops.match_side(batch_calls, batch, MULAW_8K)
        self.engine_spikes += [(float(t), float(lag)) for t, lag in engine.get("loop_lag_spikes", [])]
        stalled = health.gaps_during_stalls(m.gap_spans, [*self.lag.spikes, *self.engine_spikes])
        q.gaps_during_stalls += stalled
        in_gc = health.gaps_during_stalls(m.gap_spans, [(t, ms) for t, ms, _ in self.server_gc])
        q.gaps_during_server_gc += in_gc
        problems, _tallies = health.collect_problems(batch_calls, batch, m, self.name)
        q.problems.update(
            _NUMBER.sub("N", p) for p in problems if "calls had errors" not in p and "webhooks answered" not in p
        )
        q.calls_analyzed += len(batch_calls)
        q.barge_ms += m.barge_ms
        q.frame_ms.append(np.asarray(m.frame_ms, dtype=np.float32))
        q.delta_ms += m.delta_ms
        q.gaps_ms += m.gaps_ms
        q.counts.update(m.counts)
        for call in batch_calls:
            q.turns.update(call.turns)
        q.engine_internal_errors += engine.get("internal_errors", [])[:5]
        return {
            "calls_analyzed": len(batch_calls),
            "barge_in_ms": hops.stats(m.barge_ms),
            "gaps": len(m.gaps_ms),
            "gaps_during_stalls": stalled,
            "gaps_during_server_gc": in_gc,
            "caller_to_model_p99": hops.stats(m.frame_ms)["p99"],
            "model_to_caller_p99": hops.stats(m.delta_ms)["p99"],
            "engine_lag_p99": hops.stats(engine.get("loop_lag_ms", []))["p99"],
        }

    def close_window(self, batch: dict[str, Any], label: str, now: Sample | None) -> None:
        """One row of the timeline: the batch's quality, and the process as sampled at the window's end."""
        w = self._window
        row: dict[str, Any] = {
            "label": label,
            "t": round(time.monotonic() - self.t0, 1),
            "calls_ok": w["calls_ok"],
            "calls_failed": w["calls_failed"],
            "bench_lag_p99": hops.stats(self.lag.samples_ms)["p99"],
            **batch,
        }
        prev: Sample | None = w.get("sample")
        if now is not None:
            row |= {"rss_mb": round(now.rss_mb, 1), "fds": now.fds, "threads": now.threads}
            row["active_calls"] = now.active_calls
            if prev is not None and now.t > prev.t:
                row["server_cpu_pct"] = round((now.cpu_s - prev.cpu_s) / (now.t - prev.t) * 100, 1)
                cores = os.cpu_count() or 1
                row["machine_pct"] = round((now.machine_busy_s - prev.machine_busy_s) / (now.t - prev.t) / cores * 100)
                if now.runs > prev.runs:
                    row["server_wait_per_run_ms"] = round((now.wait_s - prev.wait_s) / (now.runs - prev.runs) * 1000, 2)
        self.windows.append(row)
        self.lag.samples_ms.clear()  # the watcher keeps appending to the same list
        self._window = {"calls_ok": 0, "calls_failed": 0, "sample": now}

    def start_window(self, now: Sample | None) -> None:
        self._window["sample"] = now

    def identify_stuck(self, engine: dict[str, Any]) -> None:
        """Model sessions still open after every call ended: which calls they belong to, and what they did."""
        live = [sess for sess in engine.get("sessions", []) if sess.get("open_at_drain")]
        if not live:
            return
        calls_left = [c for _, c in self._pending] + self._orphans
        pairing = hops.match_side(calls_left, {"sessions": live}, MULAW_8K)
        by_index = {c.index: c for c in calls_left}
        for i, sess in enumerate(live):
            call = by_index.get(pairing.session_call.get(i, -1))
            entry: dict[str, Any] = {
                "session": sess["id"],
                "opened_s": round(float(sess["opened"]) - self.t0, 1) if sess.get("opened") else None,
                "client_events": sess.get("client_counts", {}),
                "responses": [r.get("status") for r in sess.get("responses", [])],
            }
            if call is not None:
                entry |= {
                    "call": call.index,
                    "call_uuid": call.call_uuid,
                    "carrier_end_reason": call.end_reason,
                    "call_error": call.error,
                    "started_s": round(call.start_t - self.t0, 1) if call.start_t else None,
                    "ended_s": round(call.end_t - self.t0, 1) if call.end_t else None,
                    "turns": call.turns,
                    "clears": len(call.clears),
                    "webhook_failures": call.webhook_failures,
                }
            self.stuck.append(entry)


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


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------


def _f(value: float | int | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def render_side(name: str, s: dict[str, Any], concurrency: int) -> str:
    tr, q, c = s["trends"], s["quality"], s["calls"]
    lines = [
        f"{name}: {concurrency} concurrent calls back to back ({CALL_SECONDS[0]:g}-{CALL_SECONDS[1]:g} s each) for "
        f"{s['duration_s'] / 60:g} min; the first {s['warmup_s']:g} s are warm-up",
        f"  {'window':>7}{'ok/failed':>11}{'CPU %':>7}{'RSS MB':>8}{'fds':>5}{'thr':>5}{'active':>7}"
        f"{'barge p50/p99 (n)':>20}{'gaps':>8}{'c->m p99':>9}{'m->c p99':>9}{'lag bench/eng':>15}"
        f"{'cpu wait':>10}{'machine':>9}",
    ]
    for w in s["windows"]:
        b = w["barge_in_ms"]
        barge = f"{_f(b['p50'])}/{_f(b['p99'])} ({b['n']})"
        lag = f"{_f(w['bench_lag_p99'], 0)}/{_f(w['engine_lag_p99'], 0)} ms"
        gaps = f"{w['gaps']} ({w['gaps_during_stalls']})" if w["gaps"] else "0"
        wait = _f(w.get("server_wait_per_run_ms"), 2) + " ms"
        lines.append(
            f"  {w['label']:>7}{str(w['calls_ok']) + '/' + str(w['calls_failed']):>11}"
            f"{_f(w.get('server_cpu_pct'), 0):>7}{_f(w.get('rss_mb')):>8}{w.get('fds', '-'):>5}"
            f"{w.get('threads', '-'):>5}{_f(w.get('active_calls'), 0):>7}{barge:>20}{gaps:>8}"
            f"{_f(w['caller_to_model_p99'], 0):>9}{_f(w['model_to_caller_p99'], 0):>9}{lag:>15}"
            f"{wait:>10}{_f(w.get('machine_pct'), 0) + '%':>9}"
        )
    rss, fds, thr = tr["rss_mb"], tr["fds"], tr["threads"]
    lines.append(f"  trend after the warm-up ({rss['n']} samples over {_f(rss.get('span_s'), 0)} s):")
    if rss["growth"] is not None:
        pct = rss["growth"] / rss["mean"] * 100 if rss["mean"] else 0.0
        lines += [
            f"    RSS      {rss['first']:.1f} -> {rss['last']:.1f} MB (min {rss['min']:.1f}, max {rss['max']:.1f}); "
            f"slope {rss['slope_per_h']:+.1f} ± {2 * rss['se_per_h']:.1f} MB/h (2 SE); "
            f"over the run {rss['growth']:+.2f} MB ({pct:+.2f}% of RSS); "
            f"1st/2nd half {_f(rss['slope_first_half_per_h'])}/{_f(rss['slope_second_half_per_h'])} MB/h",
            f"    open fds {fds['first']:.0f} -> {fds['last']:.0f} (min {fds['min']:.0f}, max {fds['max']:.0f}); "
            f"slope {fds['slope_per_h']:+.1f} ± {2 * fds['se_per_h']:.1f} /h; over the run {fds['growth']:+.2f}",
            f"    threads  {thr['first']:.0f} -> {thr['last']:.0f}; slope {thr['slope_per_h']:+.1f} /h",
            f"    RSS growth per call that ended meanwhile: {_f(s['rss_growth_kb_per_call'])} KB "
            f"({s['calls_ended_in_fit']} calls)",
        ]
    b, a = s["idle_before"], s["idle_after"]
    lines += [
        f"  idle before the first call -> after the last: RSS {b['rss_mb']:.1f} -> {a['rss_mb']:.1f} MB, "
        f"fds {b['fds']} -> {a['fds']}, threads {b['threads']} -> {a['threads']} "
        f"({_f(s['idle_rss_growth_kb_per_call'])} KB of RSS per call placed)",
        f"  calls: {c['placed']} placed, {c['ok']} ok, {c['failed']} failed {c['errors'] or ''}"
        f"; {c['analyzed']} matched with their engine session",
        f"  CPU {_f(s['server_cpu_pct_steady'])}% of a core after the warm-up "
        f"({_f(s['cpu_per_call_pct'], 2)}% per call)"
        f"; barge-in p50/p99 {_f(q['barge_in_ms']['p50'])}/{_f(q['barge_in_ms']['p99'])} ms "
        f"(n={q['barge_in_ms']['n']}); playout gaps {q['playout_gaps']} "
        f"({q['playout_gaps_during_generator_stalls']} began during a bench/engine stall"
        + (
            f", {q['playout_gaps_during_server_gc']} during a GC pause of the server; server GC pauses > 20 ms: "
            f"{q['server_gc_pauses_ms']['n']}, max {q['server_gc_pauses_ms']['max']:.0f} ms"
            if q["server_gc_pauses_ms"]
            else ""
        )
        + "); turns without bot audio "
        f"{q['turn_timeouts']}",
    ]
    if name == "agent":
        gauge = s["active_calls_end"]
        lines.append(
            f"  agent_active_calls after the last call: {_f(gauge, 0)}"
            + (f" (read after {s['active_calls_wait_s']:g} s)" if gauge is not None else " (not exposed)")
        )
    why = f" ({'; '.join(s['verdict_why'])})" if s["verdict_why"] else ""
    lines.append(f"  verdict: {s['verdict'].upper()}{why}")
    log = s["server_log"]
    if s["problems"] or log["top"] or log["tracebacks"]:
        lines.append("  problems seen")
        lines += [f"    {p}" for p in s["problems"]]
        if log["top"] or log["tracebacks"]:
            lines.append(f"    server log: {log['levels']}, {log['tracebacks']} tracebacks ({log['path']}):")
            lines += [f"      {count:6d}  {shape}" for shape, count in log["top"]]
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        f"Soak: {cfg['concurrency']} concurrent calls, {report['machine']['cpus']} CPUs",
        "columns per 30 s window: calls ended ok/failed; server CPU (% of a core), RSS, open fds, threads and"
        " agent_active_calls at the window's end; quality of the calls matched in the window (ms; gaps: count (of"
        " which began during a bench/engine stall)); event loop lag p99 of the bench and the engine; cpu wait: how"
        " long the server's event loop waited for a CPU per wake-up; machine: % of all cores busy",
        "",
    ]
    sides: dict[str, Any] = report["sides"]
    for name in ("agent", "baseline"):
        if name in sides:
            lines += [render_side(name, sides[name], cfg["concurrency"]), ""]
    if "agent" in sides and "baseline" in sides:
        a, b = sides["agent"]["trends"], sides["baseline"]["trends"]
        lines.append(
            f"agent vs baseline: RSS slope {_f(a['rss_mb']['slope_per_h'])} vs {_f(b['rss_mb']['slope_per_h'])} MB/h, "
            f"fds slope {_f(a['fds']['slope_per_h'])} vs {_f(b['fds']['slope_per_h'])} /h; "
            f"CPU per call {_f(sides['agent']['cpu_per_call_pct'], 2)}% "
            f"vs {_f(sides['baseline']['cpu_per_call_pct'], 2)}%"
        )
    lines += ["", f"results: {report['out']} ({report['wall_s']:.0f} s)"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/soak.py", description="Calls back to back for minutes: memory and fds of the agent must stay flat."
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="agent soak length (default 3)")
    parser.add_argument("--baseline-minutes", type=float, default=1.0, help="baseline relay soak (default 1; 0: skip)")
    parser.add_argument("--concurrency", type=int, default=10, help="calls up at any time (default 10)")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of samples discarded (default 30)")
    kit.add_server_args(parser)
    parser.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/soak-<time>.json)")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.minutes * 60 < args.warmup + 6 * SAMPLE_S:
        parser.error("need --concurrency >= 1 and --minutes long enough for a few samples after --warmup")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    kit.cancel_on_signals()
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
    report, stem = kit.start_report("soak", args, config)
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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    kit.run_and_print(lambda: run(args), render, "soak")


if __name__ == "__main__":
    main()
