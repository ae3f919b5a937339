"""`make bench`: N concurrent simulated phone calls against the real agent process, and against a bare relay.

For each side (first the baseline relay, then the agent) the bench starts a fresh local Realtime engine in its
own process, starts the server under test in its own process, places N staggered calls through the simulated
Vobiz carrier in this process, and measures:

* CPU of the server process over a steady-state window (all calls up, none ending), per concurrent call;
* added latency per hop: caller frame → model (carrier sent `media` → engine got the matching
  `input_audio_buffer.append`) and model → caller (engine sent a response's first audio delta → carrier got
  that response's first `playAudio`);
* barge-in reaction: engine sent `speech_started` while bot audio was playing → carrier got `clearAudio`;
* for the agent: truncation error (|truncate.audio_end_ms − what the carrier had played|) and playout gaps, each
  put down to its cause: the engine sent the audio too late, the carrier simulator (this process) was stalled, or
  neither, which makes it the agent's own.

Results go to stdout as a table and to a JSON file (default bench/results/calls-<timestamp>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agent.testkit.analysis import hops
from agent.testkit.bench.sides import (
    SIDE_OVERHEAD_S,
    SIDES,
    add_server_args,
    run_side,
    side_report,
)
from agent.testkit.bench.tool import cancel_on_signals, run_and_print, start_report
from agent.testkit.bench.wire import CONTENT_TYPES, MULAW_8K
from agent.testkit.bench.workload import STAGGER_S, WorkloadConfig


def _fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def build_ratios(base: dict[str, Any], agent: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {
        "cpu_per_call": hops.ratio(agent["cpu"]["per_call_pct"], base["cpu"]["per_call_pct"])
    }
    for hop in ("caller_to_model", "model_to_caller", "barge_in", "onset_to_clear"):
        for p in ("p50", "p95", "p99"):
            out[f"{hop}_{p}"] = hops.ratio(agent["latency_ms"][hop][p], base["latency_ms"][hop][p])
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
    row("server RSS growth per concurrent call (MB)", [_fmt(sides[n]["rss_mb"]["per_call"], 2) for n in names])
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
            "    by cause: "
            + ", ".join(f"{cause} {n}" for cause, n in gaps["causes"].items())
            + " (engine: its audio came too late; carrier: the simulator was stalled; agent: neither)",
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
