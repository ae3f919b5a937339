"""`make bench`: N concurrent simulated phone calls against the real agent process, and against a bare relay.

For each side (first the baseline relay, then the agent) the bench starts a fresh local Realtime engine in its
own process, starts the server under test in its own process, places N staggered calls through the simulated
Vobiz carrier in this process, and measures:

* CPU of the server process over a steady-state window (all calls up, none ending), per concurrent call;
* added latency per hop: caller frame → model (carrier sent `media` → engine got the matching
  `input_audio_buffer.append`) and model → caller (engine sent a response's first audio delta → carrier got
  that response's first `playAudio`);
* barge-in reaction: engine sent `speech_started` while bot audio was playing → carrier got `clearAudio`;
* for the agent: truncation error (|truncate.audio_end_ms − what the carrier had played|) and playout gaps.

Results go to stdout as a table and to a JSON file (default bench/results/calls-<timestamp>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import analysis
import httpx
import procs
from wire import CONTENT_TYPES, MULAW_8K
from workload import STAGGER_S, CallResult, LoopLag, WorkloadConfig, run_calls

WARMUP_S = 1.5  # after the last call started, before the CPU window opens
MIN_WINDOW_S = 2.0
SIDES = ("baseline", "agent")
SIDE_OVERHEAD_S = 150.0  # start-up, hang-ups, draining: a side taking longer than this is stuck

T = TypeVar("T")
GC_PROBE_DIR = procs.BENCH_DIR / "gcprobe"


@dataclass
class SideRun:
    name: str
    calls: list[CallResult]
    engine: dict[str, Any]
    cpu: dict[str, float]
    rss_mb: dict[str, float]
    window_s: float
    bench_lag_ms: list[float]
    log_path: Path
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    log_marks: dict[str, int] = field(default_factory=dict)  # "stopping": log size when shutdown began
    bench_lag_spikes: list[tuple[float, float]] = field(default_factory=list)  # (woke at, lag ms)


@dataclass(frozen=True)
class ServerOptions:
    """How the engine and the server under test are configured: the same for every bench tool."""

    content_type: str = MULAW_8K
    reply_ms: int = 2500
    speed: float = 2.0
    gc_probe: bool = False  # the server logs its long GC pauses (bench/gcprobe)
    vad_ms: int = 60  # loud audio the engine's VAD needs before speech_started
    early_barge_in: bool = False  # the agent silences the bot on the caller's onset (AGENT_EARLY_BARGE_IN)

    @classmethod
    def from_args(cls, args: argparse.Namespace, content_type: str | None = None) -> ServerOptions:
        return cls(
            content_type=content_type or args.content_type,
            reply_ms=args.reply_ms,
            speed=args.speed,
            gc_probe=args.gc_probe,
            vad_ms=args.vad_ms,
            early_barge_in=args.early_barge_in,
        )


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """The options every bench tool shares for the engine and the server under test."""
    parser.add_argument("--reply-ms", type=int, default=2500, help="length of every engine reply (default 2500)")
    parser.add_argument("--speed", type=float, default=2.0, help="engine audio speed vs real time (default 2)")
    parser.add_argument("--seed", type=int, default=20240607, help="caller audio seed")
    parser.add_argument(
        "--gc-probe",
        action="store_true",
        help="the server logs garbage-collector pauses > 20 ms (bench/gcprobe), lined up with playout gaps",
    )
    parser.add_argument(
        "--vad-ms",
        type=int,
        default=60,
        help="speech the engine's VAD needs before speech_started (default 60; ~300 is closer to a remote OpenAI)",
    )
    parser.add_argument("--early-barge-in", action="store_true", help="the agent runs with AGENT_EARLY_BARGE_IN=true")


@dataclass
class Target:
    """One side up and running: a fresh engine and the server under test (agent or baseline relay)."""

    name: str
    engine: procs.Child
    engine_port: int
    server: procs.Child
    base_url: str
    answer_path: str
    notes: list[str] = field(default_factory=list)
    log_marks: dict[str, int] = field(default_factory=dict)  # "stopping": log size when shutdown began

    @property
    def log_path(self) -> Path:
        return self.server.log_path

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def meter(self) -> procs.CpuMeter:
        return procs.CpuMeter({"server": self.server.pid, "engine": self.engine.pid, "bench": os.getpid()})


def _engine_args(opts: ServerOptions, port: int) -> list[str]:
    return [
        str(procs.BENCH_DIR / "simengine.py"),
        "--port",
        str(port),
        "--reply-ms",
        str(opts.reply_ms),
        "--speed",
        str(opts.speed),
        "--vad-start-ms",
        str(opts.vad_ms),
    ]


def agent_env(engine_port: int, port: int, workdir: Path, content_type: str) -> dict[str, str]:
    """The agent's settings for a bench run: its database and call recordings go to a scratch directory."""
    return procs.clean_env(
        {
            "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/agent.db",
            "AGENT_RECORDINGS_DIR": str(workdir / "recordings"),
            "OPENAI_API_KEY": "dummy",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{engine_port}/v1",
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "AGENT_LOG_LEVEL": "WARNING",
            "AGENT_STREAM_CONTENT_TYPE": content_type,
            "AGENT_PROMPTS_DIR": str(procs.ROOT / "prompts"),
            "AGENT_INSECURE_WEBHOOKS": "true",  # loopback agent; the simulated carrier does not sign
        }
    )


async def _get_json(url: str, limit_s: float = 10.0) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        resp = await http.get(url, timeout=limit_s)
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data


async def drain_engine(port: int, wait_idle_s: float = analysis.ENGINE_IDLE_S) -> dict[str, Any]:
    """Wait (at most `wait_idle_s`) for the server under test to close its model sockets, then collect the
    summaries: every closed session's (forgotten by the engine from then on) and every open one's so far."""
    base = f"http://127.0.0.1:{port}/bench"
    deadline = time.monotonic() + wait_idle_s
    while time.monotonic() < deadline:
        status = await _get_json(f"{base}/status")
        if not status.get("open"):
            break
        await asyncio.sleep(0.2)
    return await _get_json(f"{base}/drain", limit_s=30.0)


async def scrape_metrics(url: str, nonzero_only: bool = True) -> dict[str, float]:
    """The agent's own Prometheus metrics (everything agent_* that is not a histogram bucket); {} when unreachable."""
    out: dict[str, float] = {}
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient() as http:
            resp = await http.get(url, timeout=5.0)
        for line in resp.text.splitlines():
            if not line.startswith("agent_") or "_bucket{" in line or "_created" in line:
                continue
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                if float(value) or not nonzero_only:
                    out[name] = float(value)
    return out


def _with_gc_probe(env: dict[str, str], opts: ServerOptions) -> dict[str, str]:
    if opts.gc_probe:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GC_PROBE_DIR), env.get("PYTHONPATH")]))
    return env


@contextlib.asynccontextmanager
async def start_side(name: str, opts: ServerOptions, stem: Path) -> AsyncIterator[Target]:
    """Start a fresh engine and the server under test, wait until both answer; always stop both on exit.

    Logs go to `<stem>-<name>.log` and `<stem>-engine-<name>.log`. Whatever goes wrong while stopping (a child
    that had to be killed) is appended to `Target.notes`, which callers may have shared with their results.
    """
    engine_port = procs.free_port()
    engine = procs.start(
        "engine", _engine_args(opts, engine_port), procs.clean_env({}), Path(f"{stem}-engine-{name}.log")
    )
    target: Target | None = None
    server: procs.Child | None = None
    workdir: Path | None = None
    try:
        await procs.wait_ready(engine, f"http://127.0.0.1:{engine_port}/bench/health")
        port = procs.free_port()
        log_path = Path(f"{stem}-{name}.log")
        if name == "agent":
            workdir = Path(tempfile.mkdtemp(prefix="bench-agent-"))
            env = _with_gc_probe(agent_env(engine_port, port, workdir, opts.content_type), opts)
            env["AGENT_EARLY_BARGE_IN"] = "true" if opts.early_barge_in else "false"
            server = procs.start(
                "agent", ["-m", "agent", "serve", "--host", "127.0.0.1", "--port", str(port)], env, log_path
            )
            answer_path = "/vobiz/answer"
        else:
            relay_args = [
                str(procs.BENCH_DIR / "relay.py"),
                "--port",
                str(port),
                "--engine",
                f"ws://127.0.0.1:{engine_port}/v1/realtime",
                "--content-type",
                opts.content_type,
            ]
            relay_env = _with_gc_probe(procs.clean_env({}), opts)
            server = procs.start("baseline relay", relay_args, relay_env, log_path)
            answer_path = "/answer"
        base_url = f"http://127.0.0.1:{port}"
        await procs.wait_ready(server, f"{base_url}/healthz")
        target = Target(name, engine, engine_port, server, base_url, answer_path)
        yield target
    finally:
        notes = target.notes if target is not None else []
        if target is not None:
            target.log_marks["stopping"] = target.log_size()
        try:
            if server is not None and procs.stop(server):
                notes.append(f"the {server.name} did not exit within 5 s of SIGTERM and was killed")
        finally:
            if procs.stop(engine):
                notes.append("the engine did not exit within 5 s of SIGTERM and was killed")
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)


async def measure_idle(meter: procs.CpuMeter, seconds: float = 1.0) -> tuple[procs.CpuSnapshot, float]:
    """(snapshot at the end, server CPU % over `seconds` with no calls)."""
    start = meter.snapshot()
    await asyncio.sleep(seconds)
    end = meter.snapshot()
    return end, procs.cpu_between(start, end)["server"]


async def run_workload(
    target: Target,
    cfg: WorkloadConfig,
    meter: procs.CpuMeter,
    idle: procs.CpuSnapshot,
    idle_cpu: float,
    log_marks: dict[str, int] | None = None,
) -> SideRun:
    """Place `cfg.calls` calls against a running side; measure CPU over the steady state; collect the engine's
    records (which also clears them, so a side can run several workloads one after the other)."""
    notes = target.notes
    window: dict[str, Any] = {}

    async def measure(t0: float) -> None:
        ramp_end = t0 + (cfg.calls - 1) * cfg.stagger_s
        start, end = ramp_end + WARMUP_S, t0 + cfg.seconds - 0.3
        if end - start < MIN_WINDOW_S:
            start = ramp_end + 0.3
            notes.append(f"short steady-state window ({end - start:.1f} s): use longer --seconds")
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        window["a"] = meter.snapshot()
        peak = dict(window["a"].rss)
        while time.monotonic() < end:
            await asyncio.sleep(min(0.5, max(0.0, end - time.monotonic())))
            snap = meter.snapshot()
            peak = {k: max(v, snap.rss.get(k, 0)) for k, v in peak.items()}
        window["b"] = meter.snapshot()
        window["peak"] = peak

    tasks: list[asyncio.Task[None]] = []
    lag = LoopLag()
    lag_task = asyncio.create_task(lag.watch())
    try:
        results = await run_calls(
            target.base_url, target.answer_path, cfg, lambda t0: tasks.append(asyncio.create_task(measure(t0)))
        )
    finally:
        lag_task.cancel()
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(lag_task, *tasks, return_exceptions=True)
    metrics = await scrape_metrics(f"{target.base_url}/metrics") if target.name == "agent" else {}
    try:
        engine_data = await drain_engine(target.engine_port)
    except (httpx.HTTPError, ValueError) as exc:
        engine_data = {"sessions": [], "internal_errors": [f"could not collect the engine's records: {exc!r}"]}
    if "a" in window and "b" in window:
        cpu = procs.cpu_between(window["a"], window["b"])
        window_s = window["b"].t - window["a"].t
        peak = window["peak"]
    else:
        cpu, window_s, peak = (
            {"server": math.nan, "engine": math.nan, "bench": math.nan, "machine": math.nan},
            0.0,
            {},
        )
        notes.append("the CPU window was never completed")
    cpu["server_idle"] = idle_cpu
    mb = 1024 * 1024
    rss = {
        "idle": idle.rss["server"] / mb,
        "steady": peak.get("server", 0) / mb,
        "per_call": (peak.get("server", 0) - idle.rss["server"]) / mb / max(1, cfg.calls),
        "engine_peak": peak.get("engine", 0) / mb,
        "bench_peak": peak.get("bench", 0) / mb,
    }
    marks = target.log_marks if log_marks is None else log_marks
    return SideRun(
        target.name,
        results,
        engine_data,
        cpu,
        rss,
        window_s,
        lag.samples_ms,
        target.log_path,
        metrics,
        notes,
        marks,
        lag.spikes,
    )


async def run_side(name: str, args: argparse.Namespace, stem: Path) -> SideRun:
    cfg = WorkloadConfig(calls=args.calls, seconds=args.seconds, content_type=args.content_type, seed=args.seed)
    async with start_side(name, ServerOptions.from_args(args), stem) as target:
        meter = target.meter()
        await asyncio.sleep(0.3)
        idle, idle_cpu = await measure_idle(meter)
        # The run's notes and log marks are the target's: what happens while stopping still reaches the report.
        return await run_workload(target, cfg, meter, idle, idle_cpu)


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------


def side_report(run: SideRun, content_type: str, calls: int) -> dict[str, Any]:
    m = analysis.match_side(run.calls, run.engine, content_type)
    problems, tallies = analysis.collect_problems(run.calls, run.engine, m, run.name)
    problems = [f"note ({run.name}): {n}" for n in run.notes] + problems
    turns: Counter[str] = Counter()
    for call in run.calls:
        turns.update(call.turns)
    bot_min = m.counts["bot_audio_ms"] / 60000
    log_bytes = run.log_path.read_bytes() if run.log_path.exists() else b""
    # A side that runs several workloads marks where this one's part of the log starts and ends.
    begin, end = run.log_marks.get("start", 0), run.log_marks.get("end", len(log_bytes))
    stop_at = run.log_marks.get("stopping", end)
    during = log_bytes[begin:stop_at].decode(errors="replace")
    shutdown = log_bytes[stop_at:end].decode(errors="replace")
    gc_pauses = analysis.gc_pauses(during)
    return {
        "overloaded": analysis.overload(m, run.engine),
        "cpu": {
            "per_call_pct": run.cpu["server"] / calls,
            "server_pct": run.cpu["server"],
            "engine_pct": run.cpu["engine"],
            "bench_pct": run.cpu["bench"],
            "machine_pct": run.cpu["machine"],
            "others_pct": run.cpu["machine"] * (os.cpu_count() or 1)
            - run.cpu["server"]
            - run.cpu["engine"]
            - run.cpu["bench"],
            "server_idle_pct": run.cpu.get("server_idle", math.nan),
            # Ready to run but waiting for a CPU (main thread, % of the window): CPU contention on the machine.
            "server_wait_pct": run.cpu.get("server_wait", math.nan),
            "engine_wait_pct": run.cpu.get("engine_wait", math.nan),
            "bench_wait_pct": run.cpu.get("bench_wait", math.nan),
            "server_wait_per_run_ms": run.cpu.get("server_wait_per_run_ms", math.nan),
            "engine_wait_per_run_ms": run.cpu.get("engine_wait_per_run_ms", math.nan),
            "bench_wait_per_run_ms": run.cpu.get("bench_wait_per_run_ms", math.nan),
            "window_s": round(run.window_s, 2),
        },
        "rss_mb": {k: round(v, 2) for k, v in run.rss_mb.items()},
        "latency_ms": {
            "caller_to_model": analysis.stats(m.frame_ms),
            "model_to_caller": analysis.stats(m.delta_ms),
            "caller_to_model_call_start": analysis.stats(m.startup_frame_ms),
            "model_to_caller_greeting": analysis.stats(m.greeting_delta_ms),
            "barge_in": analysis.stats(m.barge_ms),
            "onset_to_clear": analysis.stats(m.onset_clear_ms),
        },
        "truncation_error_ms": analysis.stats(m.trunc_err_ms),
        "truncation_signed_error_ms": analysis.stats(m.trunc_signed_ms),
        "playout_gaps": {
            "count": len(m.gaps_ms),
            "during_generator_stalls": analysis.gaps_during_stalls(
                m.gap_spans,
                [*run.bench_lag_spikes, *((float(t), float(lag)) for t, lag in run.engine.get("loop_lag_spikes", []))],
            ),
            "total_ms": round(sum(m.gaps_ms), 1),
            "per_min_of_bot_audio": round(len(m.gaps_ms) / bot_min, 2) if bot_min else None,
            "duration_ms": analysis.stats(m.gaps_ms),
            "first": m.gap_where[:20],  # (call, seconds into the call, ms)
            # With --gc-probe: gaps that began during (or up to 50 ms after) a GC pause of the server.
            "during_server_gc": analysis.gaps_during_stalls(m.gap_spans, [(t, ms) for t, ms, _ in gc_pauses]),
        },
        "counts": dict(m.counts),
        "turns": dict(turns),
        "calls_ok": sum(1 for c in run.calls if c.error is None),
        "outliers": m.outliers,
        "carrier_lag_ms": {
            "caller_frames_sent_late": analysis.stats(m.send_lag_ms),
            "playout_ticks_late": analysis.stats(m.playout_lag_ms),
        },
        "loop_lag_ms": {
            "bench": analysis.stats(run.bench_lag_ms),
            "engine": analysis.stats(run.engine.get("loop_lag_ms", [])),
        },
        "engine_max_rss_mb": round(run.engine.get("max_rss_kb", 0) / 1024, 1),
        "problems": problems,
        "tallies": tallies,
        "server_log": {"path": str(run.log_path), **analysis.summarize_log(during)},
        "server_log_at_shutdown": analysis.summarize_log(shutdown),
        "server_metrics": run.metrics,
        "server_gc_pauses_ms": analysis.stats(ms for _, ms, _ in gc_pauses) if gc_pauses else None,
        "call_errors": [c.error for c in run.calls if c.error][:10],
    }


def _fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def build_ratios(base: dict[str, Any], agent: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {
        "cpu_per_call": analysis.ratio(agent["cpu"]["per_call_pct"], base["cpu"]["per_call_pct"])
    }
    for hop in ("caller_to_model", "model_to_caller", "barge_in", "onset_to_clear"):
        for p in ("p50", "p95", "p99"):
            out[f"{hop}_{p}"] = analysis.ratio(agent["latency_ms"][hop][p], base["latency_ms"][hop][p])
    return out


def render(report: dict[str, Any]) -> str:
    """The human-readable table: one column per side, then agent/baseline."""
    cfg = report["config"]
    sides: dict[str, dict[str, Any]] = report["sides"]
    names = [s for s in SIDES if s in sides]
    both = len(names) == 2
    ratios: dict[str, float | None] = report.get("ratios", {})
    lines = [
        f"Vobiz agent bench: {cfg['calls']} concurrent calls x {cfg['seconds']:g} s, {cfg['content_type']}, "
        f"{report['machine']['cpus']} CPUs; engine replies {cfg['reply_ms']} ms at {cfg['speed']:g}x real time, "
        f"VAD after {cfg.get('vad_ms', 60)} ms of speech"
        + ("; agent: early barge-in" if cfg.get("early_barge_in") else ""),
        "",
    ]
    warnings = [f"WARNING: the {n} run fell behind real time: {r}" for n in names for r in sides[n]["overloaded"]]
    if warnings:
        lines += [*warnings, "  -> its latencies measure the backlog, not per-hop cost; try fewer --calls", ""]
    lines.append(f"{'':40}" + "".join(f"{n:>12}" for n in names) + (f"{'agent/base':>12}" if both else ""))

    def row(label: str, values: list[str], ratio_key: str | None = None) -> None:
        text = f"{label:40}" + "".join(f" {v:>11}" for v in values)
        if both and ratio_key is not None:
            text += f"{_ratio(ratios.get(ratio_key)):>12}"
        lines.append(text)

    def col(path: str, digits: int = 2) -> list[str]:
        out = []
        for n in names:
            value: Any = sides[n]
            for key in path.split("."):
                value = value[key]
            out.append(_fmt(value, digits))
        return out

    row("CPU per concurrent call (% of a core)", col("cpu.per_call_pct", 3), "cpu_per_call")
    row(
        "  -> calls per core at that cost",
        [
            _fmt(100 / s["cpu"]["per_call_pct"] if s["cpu"]["per_call_pct"] > 0 and not s["overloaded"] else None, 0)
            for s in (sides[n] for n in names)
        ],
    )
    row("server CPU, all calls (% of a core)", col("cpu.server_pct", 1))
    row("server CPU before calls (% of a core)", col("cpu.server_idle_pct", 1))
    row(
        "server RSS idle -> steady (MB)",
        [f"{sides[n]['rss_mb']['idle']:.0f} -> {sides[n]['rss_mb']['steady']:.0f}" for n in names],
    )
    hops = {
        "caller_to_model": "caller frame -> model (after the first 1 s)",
        "model_to_caller": "model delta -> caller (all but greetings)",
        "barge_in": "barge-in: speech_started -> clearAudio",
        "onset_to_clear": "interrupting: caller starts talking -> clearAudio (the bot talks over them)",
    }
    for hop, label in hops.items():
        lines.append(label + ", ms")
        for p in ("p50", "p95", "p99", "max"):
            row(f"  {p}", col(f"latency_ms.{hop}.{p}"), f"{hop}_{p}" if p != "max" else None)
        row("  samples", col(f"latency_ms.{hop}.n", 0))
    lines.append("call start, ms (p50 / max)")
    for hop, label in (
        ("caller_to_model_call_start", "  caller frames in the first 1 s"),
        ("model_to_caller_greeting", "  greeting: first delta -> caller"),
    ):
        row(
            label,
            [
                f"{_fmt(sides[n]['latency_ms'][hop]['p50'], 0)}/{_fmt(sides[n]['latency_ms'][hop]['max'], 0)}"
                for n in names
            ],
        )
    if "agent" in sides:
        a = sides["agent"]
        te, gaps, c = a["truncation_error_ms"], a["playout_gaps"], a["counts"]
        lines += [
            "",
            "agent only",
            f"  truncation error |audio_end_ms - carrier played ms|: p50 {_fmt(te['p50'], 1)}, "
            f"p95 {_fmt(te['p95'], 1)}, max {_fmt(te['max'], 1)} ms (n={te['n']})",
            f"  truncates sent {c.get('truncates', 0)}: {c.get('truncates_repeated', 0)} repeated an earlier truncate "
            f"of the same item, {c.get('truncates_of_other_items', 0)} for other items",
            f"  playout gaps mid-response: {gaps['count']} ({_fmt(gaps['per_min_of_bot_audio'])} per minute of bot "
            f"audio), total {gaps['total_ms']:.0f} ms, max {_fmt(gaps['duration_ms']['max'], 0)} ms; "
            f"{gaps['during_generator_stalls']} began while the bench or the engine was stalled"
            + (f", {gaps['during_server_gc']} during a GC pause of the agent" if a["server_gc_pauses_ms"] else ""),
            f"  appends {c.get('appends', 0)} ({c.get('appends_batched', 0)} carried >1 frame); responses "
            f"{c.get('responses', 0)} ({c.get('responses_cancelled', 0)} cancelled); barge-ins {c.get('barge_ins', 0)}",
        ]
    lines += ["", "context (same CPU window)"]
    for n in names:
        s = sides[n]
        cpu, lag, sent = s["cpu"], s["loop_lag_ms"], s["carrier_lag_ms"]["caller_frames_sent_late"]
        lines += [
            f"  {n:9} % of a core: engine {_fmt(cpu['engine_pct'], 0)}, bench {_fmt(cpu['bench_pct'], 0)}, other "
            f"processes {_fmt(cpu['others_pct'], 0)}; machine {_fmt(cpu['machine_pct'], 0)}% busy over "
            f"{cpu['window_s']} s",
            f"  {'':9} waited for a CPU (% of the time, ms per wake-up): server {_fmt(cpu['server_wait_pct'], 0)}%, "
            f"{_fmt(cpu['server_wait_per_run_ms'], 2)}; engine {_fmt(cpu['engine_wait_pct'], 0)}%, "
            f"{_fmt(cpu['engine_wait_per_run_ms'], 2)}; bench {_fmt(cpu['bench_wait_pct'], 0)}%, "
            f"{_fmt(cpu['bench_wait_per_run_ms'], 2)}",
            f"  {'':9} loop lag p99: bench {_fmt(lag['bench']['p99'], 1)} ms, engine {_fmt(lag['engine']['p99'], 1)}"
            f" ms; caller frames sent late p99 {_fmt(sent['p99'], 1)} ms (max {_fmt(sent['max'], 0)}); calls ok "
            f"{s['calls_ok']}/{cfg['calls']}",
        ]
    for n in names:
        gc = sides[n]["server_gc_pauses_ms"]
        if gc:
            lines.append(
                f"  {n:9} server GC pauses > 20 ms (--gc-probe): {gc['n']}, p50 {_fmt(gc['p50'], 0)} ms, "
                f"max {_fmt(gc['max'], 0)} ms"
            )
    problems = [(n, p) for n in names for p in sides[n]["problems"]]
    logs = [(n, sides[n]["server_log"]) for n in names if sides[n]["server_log"]["top"]]
    for n in names:  # warnings while shutting down are expected (draining); errors are not
        late = sides[n]["server_log_at_shutdown"]
        if late["tracebacks"] or {"ERROR", "CRITICAL"} & set(late["levels"]):
            problems.append((n, f"errors in the server log while it shut down: {late['top'][:3]}"))
    if problems or logs:
        lines += ["", "problems seen"]
        lines += [f"  [{n}] {p}" for n, p in problems]
        for n, log in logs:
            lines.append(f"  [{n}] server log: {log['levels']}, {log['tracebacks']} tracebacks ({log['path']}):")
            lines += [f"    {count:6d}  {shape}" for shape, count in log["top"]]
    lines += ["", f"results: {report['out']}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/calls.py", description="Concurrent simulated calls: agent vs a bare relay baseline."
    )
    parser.add_argument("--calls", type=int, default=50, help="concurrent calls (default 50)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each call in seconds (default 20)")
    parser.add_argument("--content-type", default=MULAW_8K, choices=CONTENT_TYPES, help="stream audio format")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default bench/results/calls-<time>.json)")
    parser.add_argument("--only", choices=("both", *SIDES), default="both", help="run one side only")
    add_server_args(parser)
    args = parser.parse_args(argv)
    if args.calls < 1 or args.seconds < 3:
        parser.error("need --calls >= 1 and --seconds >= 3")
    return args


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=procs.ROOT, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    return None


def machine_info() -> dict[str, Any]:
    """What a result depends on besides the code: recorded in every bench tool's JSON."""
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "commit": _git_commit(),
        "loop": type(asyncio.get_running_loop()).__module__,
    }


def cancel_on_signals() -> None:
    """SIGTERM/SIGHUP unwind the current task like Ctrl-C, so every `finally` runs and child processes stop."""
    main_task = asyncio.current_task()
    if main_task is not None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)


def run_async(main: Callable[[], Coroutine[Any, Any, T]], prog: str = "bench") -> T:
    """Run `main` on uvloop when installed (as the agent does); exit 130 when interrupted."""
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(main())
        return uvloop.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"[{prog}] interrupted; child processes stopped", file=sys.stderr)
        sys.exit(130)


def start_report(tool: str, args: argparse.Namespace, config: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """A bench tool's report header (its own settings, then the server options every tool shares) and the stem
    its logs are named after: bench/results/<tool>-<time>.json unless --out says otherwise."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or procs.BENCH_DIR / "results" / f"{tool}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    server = {k: getattr(args, k) for k in ("reply_ms", "speed", "vad_ms", "early_barge_in", "seed", "gc_probe")}
    report: dict[str, Any] = {
        "config": config | server,
        "machine": machine_info(),
        "started_at": dt.datetime.now().isoformat(timespec="seconds"),
        "out": str(out),
    }
    return report, out.with_suffix("")


def run_and_print(
    run: Callable[[], Coroutine[Any, Any, dict[str, Any]]], render: Callable[[dict[str, Any]], str], prog: str
) -> None:
    """Every bench tool's entry point: run, save the JSON where the report says, print the text."""
    report = run_async(run, prog)
    Path(report["out"]).write_text(json.dumps(report, indent=1, default=str))
    print(render(report))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cancel_on_signals()
    sides = SIDES if args.only == "both" else (args.only,)
    config = {
        "calls": args.calls,
        "seconds": args.seconds,
        "content_type": args.content_type,
        "workload": asdict(WorkloadConfig(args.calls, args.seconds, args.content_type, seed=args.seed)),
    }
    report, stem = start_report("calls", args, config)
    report["sides"] = {}
    for name in sides:
        print(f"[bench] {name}: {args.calls} calls x {args.seconds:g} s ...", file=sys.stderr, flush=True)
        t = time.monotonic()
        async with asyncio.timeout(args.calls * STAGGER_S + args.seconds + SIDE_OVERHEAD_S):
            side = await run_side(name, args, stem)
        report["sides"][name] = side_report(side, args.content_type, args.calls)
        del side  # the per-call records can go once summarized
        print(f"[bench] {name}: done in {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    if len(sides) == 2:
        report["ratios"] = build_ratios(report["sides"]["baseline"], report["sides"]["agent"])
    return report


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_and_print(lambda: run(args), render, "bench")


if __name__ == "__main__":
    main()
