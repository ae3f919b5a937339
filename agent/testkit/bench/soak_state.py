"""The soak's measurements while it runs: samples of the server process and their trends, and call quality per
batch of ended calls matched with the engine sessions that closed (as bench/calls.py does).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from agent.testkit import procs
from agent.testkit.analysis import health, hops
from agent.testkit.bench.wire import MULAW_8K, LoopLag
from agent.testkit.bench.workload import CallResult

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
    gaps_of_the_agent: int = 0  # health.gap_causes: neither the engine's doing nor the carrier simulator's
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
        own = health.gap_causes(m.gap_spans, m.gap_audio_sent, self.lag.spikes, self.engine_spikes).count("agent")
        q.gaps_of_the_agent += own
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
            "gaps_of_the_agent": own,
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
