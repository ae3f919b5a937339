"""The bench's sides: a fresh Realtime engine and the server under test (the agent, or the bare relay) as
processes of their own, a workload of simulated calls against them, CPU windows, and each side's report.

Shared by bench/calls.py, bench/capacity.py and bench/soak.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from agent.testkit import procs
from agent.testkit.analysis import health, hops
from agent.testkit.bench.wire import MULAW_8K, LoopLag
from agent.testkit.bench.workload import CallResult, WorkloadConfig, run_calls

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
    agent_env: tuple[tuple[str, str], ...] = ()  # more settings for the agent under test (--agent-env KEY=VALUE)
    agent_path: Path | None = None  # run the agent from this checkout (--agent-path), the bench and engine from ours

    @classmethod
    def from_args(cls, args: argparse.Namespace, content_type: str | None = None) -> ServerOptions:
        return cls(
            content_type=content_type or args.content_type,
            reply_ms=args.reply_ms,
            speed=args.speed,
            gc_probe=args.gc_probe,
            vad_ms=args.vad_ms,
            early_barge_in=args.early_barge_in,
            agent_env=tuple(getattr(args, "agent_env", None) or ()),
            agent_path=getattr(args, "agent_path", None),
        )


def agent_setting(item: str) -> tuple[str, str]:
    """`--agent-env KEY=VALUE` (the argparse type every bench tool uses for it)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--agent-env wants KEY=VALUE, got {item!r}")
    return key, value


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
    parser.add_argument(
        "--agent-env",
        action="append",
        type=agent_setting,
        metavar="KEY=VALUE",
        help="a setting for the agent under test, e.g. AGENT_INTERRUPTIONS=immediate (repeatable)",
    )
    parser.add_argument(
        "--agent-path",
        type=Path,
        help="run the agent under test from this checkout (an A/B of the agent alone: bench and engine stay ours)",
    )


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
        "-m",
        "agent.testkit.bench.simengine",
        "--port",
        str(port),
        "--reply-ms",
        str(opts.reply_ms),
        "--speed",
        str(opts.speed),
        "--vad-start-ms",
        str(opts.vad_ms),
    ]


def agent_settings(engine_port: int, opts: ServerOptions) -> dict[str, str]:
    """The agent's settings for a bench run, on top of the launcher's scratch environment."""
    settings = {
        "OPENAI_API_KEY": "dummy",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{engine_port}/v1",
        "AGENT_LOG_LEVEL": "WARNING",
        "AGENT_STREAM_CONTENT_TYPE": opts.content_type,
        "AGENT_PROMPTS_DIR": str(procs.ROOT / "prompts"),
        # The workload's caller is shaped noise, which the adaptive policy rightly takes for noise, not speech:
        # these tools measure the transport (hops, CPU, memory) with the VAD-driven modes; bench/interruptions.py
        # measures the policies. --agent-env AGENT_INTERRUPTIONS=adaptive overrides.
        "AGENT_INTERRUPTIONS": "early" if opts.early_barge_in else "immediate",
        "AGENT_EARLY_BARGE_IN": "true" if opts.early_barge_in else "false",
    }
    return settings | dict(opts.agent_env) | _gc_probe_env(opts)


async def _get_json(url: str, limit_s: float = 10.0) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        resp = await http.get(url, timeout=limit_s)
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data


async def drain_engine(port: int, wait_idle_s: float = health.ENGINE_IDLE_S) -> dict[str, Any]:
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


def _gc_probe_env(opts: ServerOptions) -> dict[str, str]:
    if not opts.gc_probe:
        return {}
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(GC_PROBE_DIR), os.environ.get("PYTHONPATH")]))}


@contextlib.asynccontextmanager
async def start_side(name: str, opts: ServerOptions, stem: Path) -> AsyncIterator[Target]:
    """Start a fresh engine and the server under test, wait until both answer; always stop both on exit.

    Logs go to `<stem>-<name>.log` and `<stem>-engine-<name>.log`. Whatever goes wrong while stopping (a child
    that had to be killed) is appended to `Target.notes`, which callers may have shared with their results.
    """
    engine_port = procs.free_port()
    notes: list[str] = []
    log_path = Path(f"{stem}-{name}.log")
    async with contextlib.AsyncExitStack() as stack:
        engine = procs.start(
            "engine", _engine_args(opts, engine_port), procs.clean_env({}), Path(f"{stem}-engine-{name}.log")
        )

        def stop_engine() -> None:
            if procs.stop(engine):
                notes.append("the engine did not exit within 5 s of SIGTERM and was killed")

        stack.callback(stop_engine)
        await procs.wait_ready(engine, f"http://127.0.0.1:{engine_port}/bench/health")
        if name == "agent":
            agent = await stack.enter_async_context(
                procs.agent_process(agent_settings(engine_port, opts), log_path=log_path, checkout=opts.agent_path)
            )
            stack.callback(lambda: notes.extend(agent.notes))  # runs before the engine stops, after the agent
            server, base_url, answer_path = agent.child, agent.base_url, "/vobiz/answer"
        else:
            port = procs.free_port()
            relay_args = [
                "-m",
                "agent.testkit.bench.relay",
                "--port",
                str(port),
                "--engine",
                f"ws://127.0.0.1:{engine_port}/v1/realtime",
                "--content-type",
                opts.content_type,
            ]
            server = procs.start("baseline relay", relay_args, procs.clean_env(_gc_probe_env(opts)), log_path)

            def stop_relay() -> None:
                if procs.stop(server):
                    notes.append(f"the {server.name} did not exit within 5 s of SIGTERM and was killed")

            stack.callback(stop_relay)
            base_url, answer_path = f"http://127.0.0.1:{port}", "/answer"
            await procs.wait_ready(server, f"{base_url}/healthz")
        target = Target(name, engine, engine_port, server, base_url, answer_path, notes)
        try:
            yield target
        finally:
            target.log_marks["stopping"] = target.log_size()


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
    m = hops.match_side(run.calls, run.engine, content_type)
    problems, tallies = health.collect_problems(run.calls, run.engine, m, run.name)
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
    gc_pauses = health.gc_pauses(during)
    engine_spikes = [(float(t), float(lag)) for t, lag in run.engine.get("loop_lag_spikes", [])]
    causes = health.gap_causes(m.gap_spans, m.gap_audio_sent, run.bench_lag_spikes, engine_spikes)
    return {
        "overloaded": health.overload(m, run.engine),
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
            "caller_to_model": hops.stats(m.frame_ms),
            "model_to_caller": hops.stats(m.delta_ms),
            "caller_to_model_call_start": hops.stats(m.startup_frame_ms),
            "model_to_caller_greeting": hops.stats(m.greeting_delta_ms),
            "barge_in": hops.stats(m.barge_ms),
            "onset_to_clear": hops.stats(m.onset_clear_ms),
        },
        "truncation_error_ms": hops.stats(m.trunc_err_ms),
        "truncation_signed_error_ms": hops.stats(m.trunc_signed_ms),
        "playout_gaps": {
            "count": len(m.gaps_ms),
            "during_generator_stalls": health.gaps_during_stalls(m.gap_spans, [*run.bench_lag_spikes, *engine_spikes]),
            # engine: its audio came too late; carrier: the simulator was stalled; agent: the server's own fault
            "causes": {cause: causes.count(cause) for cause in health.GAP_CAUSES},
            "total_ms": round(sum(m.gaps_ms), 1),
            "per_min_of_bot_audio": round(len(m.gaps_ms) / bot_min, 2) if bot_min else None,
            "duration_ms": hops.stats(m.gaps_ms),
            # (call, seconds into the call, ms, cause) of the first 40
            "first": [[*where, cause] for where, cause in zip(m.gap_where[:40], causes, strict=False)],
            # With --gc-probe: gaps that began during (or up to 50 ms after) a GC pause of the server.
            "during_server_gc": health.gaps_during_stalls(m.gap_spans, [(t, ms) for t, ms, _ in gc_pauses]),
        },
        "counts": dict(m.counts),
        "turns": dict(turns),
        "calls_ok": sum(1 for c in run.calls if c.error is None),
        "outliers": m.outliers,
        "carrier_lag_ms": {
            "caller_frames_sent_late": hops.stats(m.send_lag_ms),
            "playout_ticks_late": hops.stats(m.playout_lag_ms),
        },
        "loop_lag_ms": {
            "bench": hops.stats(run.bench_lag_ms),
            "engine": hops.stats(run.engine.get("loop_lag_ms", [])),
        },
        "engine_max_rss_mb": round(run.engine.get("max_rss_kb", 0) / 1024, 1),
        "problems": problems,
        "tallies": tallies,
        "server_log": {"path": str(run.log_path), **health.summarize_log(during)},
        "server_log_at_shutdown": health.summarize_log(shutdown),
        "server_metrics": run.metrics,
        "server_gc_pauses_ms": hops.stats(ms for _, ms, _ in gc_pauses) if gc_pauses else None,
        "call_errors": [c.error for c in run.calls if c.error][:10],
    }
