"""The interruption bench's run (every side one after the other, same events) and its table with the goals."""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.testkit import procs
from agent.testkit.bench.sides import agent_setting
from agent.testkit.bench.tool import cancel_on_signals, machine_info
from agent.testkit.interruptions.analysis import STAGES, analyse
from agent.testkit.interruptions.caller import MODES, EngineOptions, Mode, run_mode
from agent.testkit.interruptions.sounds import Event, Kind, plan_events, save_manifest

GOALS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "recall_pct": ("recall 100 %", lambda v: v >= 100),
    "talk_over_p95": ("p95 <= 150 ms", lambda v: v <= 150),
    "false_cut_pct": ("<= 5 % cut", lambda v: v <= 5),
    "resume_pause_p95": ("p95 <= 400 ms", lambda v: v <= 400),
    "lost_on_resume": ("0 ms", lambda v: v <= 0),
}


def split_calls(events: list[Event], per_call: int) -> list[list[Event]]:
    return [events[i : i + per_call] for i in range(0, len(events), per_call)]


async def run_side(
    mode: Mode, opts: EngineOptions, stem: Path, manifest: Path, per_call: list[list[Event]], seed: int
) -> dict[str, Any]:
    """One side, analysed: figures, every event's outcome, problems, notes and its wall time."""
    started = time.monotonic()
    calls, engine, notes = await run_mode(mode, opts, stem, manifest, per_call, seed)
    side = analyse(calls, engine)
    side["notes"] = notes
    side["wall_s"] = round(time.monotonic() - started, 1)
    return side


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cancel_on_signals()
    counts: dict[Kind, int] = {"real": args.real, "backchannel": args.backchannels, "cough": args.coughs}
    counts["echo"] = args.echo
    events = plan_events(counts, args.seed)
    per_call = split_calls(events, args.per_call)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or procs.BENCH_DIR / "results" / f"interruptions-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    manifest = Path(f"{stem}-manifest.npz")
    save_manifest(manifest)
    opts = EngineOptions(
        vad_ms=args.vad_ms,
        vad_threshold_rms=args.vad_threshold_rms,
        speed=args.speed,
        transcript_ms=args.transcript_ms,
        agent_path=args.agent_path,
        agent_env=tuple(args.agent_env),
    )
    report: dict[str, Any] = {
        "config": {
            "counts": counts,
            "calls": len(per_call),
            "per_call": args.per_call,
            "vad_ms": opts.vad_ms,
            "vad_threshold_rms": opts.vad_threshold_rms,
            "speed": opts.speed,
            "transcript_ms": opts.transcript_ms,
            "agent_path": str(opts.agent_path) if opts.agent_path else None,
            "agent_env": dict(opts.agent_env),
            "seed": args.seed,
            "transcripts": "scripted per utterance (manifest match); echo as the bot's own words",
        },
        "machine": machine_info(),
        "started_at": dt.datetime.now().isoformat(timespec="seconds"),
        "out": str(out),
        "sides": {},
    }
    for mode in args.modes:
        print(f"[interruptions] {mode}: {len(events)} events in {len(per_call)} calls ...", file=sys.stderr, flush=True)
        side = await run_side(mode, opts, stem, manifest, per_call, args.seed)
        report["sides"][mode] = side
        print(f"[interruptions] {mode}: done in {side['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return report


def _fmt(value: float | int | None, unit: str = "", digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}{unit}"


def render(report: dict[str, Any]) -> str:
    cfg = report["config"]
    sides: dict[str, dict[str, Any]] = report["sides"]
    names = [m for m in MODES if m in sides]
    c = cfg["counts"]
    lines = [
        f"Interruption bench: {sum(c.values())} events per side ({c['real']} real interruptions, "
        f"{c['backchannel']} backchannels, {c['cough']} coughs/noise bursts, {c['echo']} echo) in {cfg['calls']} "
        f"concurrent calls; engine VAD after {cfg['vad_ms']} ms of speech (RMS >= {cfg['vad_threshold_rms']:g}), "
        f"replies at {cfg['speed']:g}x real time; transcripts {cfg['transcripts']}, "
        f"{cfg.get('transcript_ms', 20)} ms after the commit",
        "",
        f"{'':46}" + "".join(f" {n:>10}" for n in names) + "   goal",
    ]

    def row(label: str, values: list[str], goal: str = "") -> None:
        # A value wider than its column still stands apart from its neighbours.
        lines.append(f"{label:46}" + "".join(f" {v:>10}" for v in values) + (f"   {goal}" if goal else ""))

    def checked(key: str, values: list[float | None], unit: str = "", digits: int = 0) -> list[str]:
        test = GOALS[key][1]
        return [_fmt(v, unit, digits) + ("" if v is None or test(v) else " x") for v in values]

    real = [sides[n]["figures"]["real"] for n in names]
    false = [sides[n]["figures"]["false"] for n in names]
    row("real interruptions (landed mid-answer)", [str(r["n"]) for r in real])
    row(
        "  recall: the bot stopped for good",
        checked("recall_pct", [r["recall_pct"] for r in real], " %"),
        GOALS["recall_pct"][0],
    )
    row("  talk-over: onset -> silence, p50 ms", [_fmt(r["talk_over_ms"]["p50"]) for r in real])
    row(
        "  talk-over p95 ms",
        checked("talk_over_p95", [r["talk_over_ms"]["p95"] for r in real]),
        GOALS["talk_over_p95"][0],
    )
    row("  bot talk after onset in all, p50 ms", [_fmt(r["talk_total_ms"]["p50"]) for r in real])
    row(
        "  bot talk after onset in all, p95 ms",
        checked("talk_over_p95", [r["talk_total_ms"]["p95"] for r in real]),
        GOALS["talk_over_p95"][0],
    )
    row("  resumed by mistake, then cut (events)", [str(r["resumed_then_cut"]) for r in real], "0")
    row("  model told what was heard (truncate/delete)", [_fmt(r["model_told_pct"], " %") for r in real])
    row("  truncate error p95 ms", [_fmt(r["truncate_error_ms_p95"]) for r in real])
    row("false interruptions (landed mid-answer)", [str(f["n"]) for f in false])
    row("  cut for good, all", checked("false_cut_pct", [f["cut_pct"] for f in false], " %"), GOALS["false_cut_pct"][0])
    for kind, label in (("backchannel", "backchannels"), ("cough", "coughs / noise"), ("echo", "echo")):
        row(f"    {label}", [f"{_fmt(f['by_kind'][kind]['cut_pct'], ' %')} /{f['by_kind'][kind]['n']}" for f in false])
    row("  paused, then resumed (events)", [str(f["paused_and_resumed"]) for f in false])
    row("  resume pause p50 ms", [_fmt(f["resume_pause_ms"]["p50"]) for f in false])
    row(
        "  resume pause p95 ms",
        checked("resume_pause_p95", [f["resume_pause_ms"]["p95"] for f in false]),
        GOALS["resume_pause_p95"][0],
    )
    row(
        "  dead air after the caller stopped p50/p95 ms",
        [f"{_fmt(f['dead_air_ms']['p50'])}/{_fmt(f['dead_air_ms']['p95'])}" for f in false],
    )
    for kind, label in (("backchannel", "backchannels"), ("cough", "coughs / noise"), ("echo", "echo")):
        for key, what in (("resume_pause_ms", "pause"), ("dead_air_ms", "dead air")):
            if kind == "echo" and key == "dead_air_ms":
                continue  # the bot's own voice has no end of its own
            row(
                f"    {label}: {what} p50/p95 ms",
                [f"{_fmt(f['by_kind'][kind][key]['p50'])}/{_fmt(f['by_kind'][kind][key]['p95'])}" for f in false],
            )
    for kind, label in (("backchannel", "backchannels"), ("cough", "coughs / noise")):
        row(
            f"    {label}: VAD stop/words/decided/line p50",
            ["/".join(_fmt(f["by_kind"][kind].get("stages_ms_p50", {}).get(s)) for s in STAGES) for f in false],
        )
    row(
        "  answer audio lost on a resume, ms total",
        checked(
            "lost_on_resume", [f["lost_on_resume_ms"]["total"] if f["paused_and_resumed"] else None for f in false]
        ),
        GOALS["lost_on_resume"][0],
    )
    row(
        "  resumed at: skipped min/max ms (- = repeated)",
        [
            f"{_fmt(f['skipped_on_resume_ms']['min'], digits=1)}/{_fmt(f['skipped_on_resume_ms']['max'], digits=1)}"
            for f in false
        ],
    )
    row("  answer audio lost on a cut, ms total", [_fmt(f["lost_on_cut_ms_total"]) for f in false])
    row("side wall time, s", [_fmt(sides[n]["wall_s"]) for n in names])
    lines.append("(x: misses the goal; '/n': events of that kind that landed)")
    for n in names:
        side, fig = sides[n], sides[n]["figures"]
        extra = [f"did not land: {x}" for x in fig["not_landed"]]
        extra += [f"real interruption not stopped: {s}" for s in fig["real"]["missed"]]
        extra += [f"real interruption resumed by mistake: {s}" for s in fig["real"]["resumed_then_cut_sounds"]]
        extra += [f"note: {x}" for x in side["notes"]] + [f"problem: {x}" for x in side["problems"]]
        if extra:
            lines += ["", f"[{n}]"] + [f"  {x}" for x in extra[:20]]
    lines += ["", f"results: {report['out']}"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/interruptions.py",
        description="Interruptions, backchannels, coughs and echo while the bot talks: relay vs the agent's modes.",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="sides to run (default all)")
    parser.add_argument("--real", type=int, default=9, help="real interruptions (default 9)")
    parser.add_argument("--backchannels", type=int, default=8, help="backchannels (default 8)")
    parser.add_argument("--coughs", type=int, default=6, help="coughs and noise bursts (default 6)")
    parser.add_argument("--echo", type=int, default=6, help="echo episodes (default 6)")
    parser.add_argument("--per-call", type=int, default=4, help="events per call (default 4); calls run concurrently")
    parser.add_argument("--vad-ms", type=int, default=300, help="speech the engine's VAD needs (default 300)")
    parser.add_argument("--vad-threshold-rms", type=float, default=250.0, help="engine VAD level (default 250)")
    parser.add_argument("--speed", type=float, default=2.0, help="engine audio speed vs real time (default 2)")
    parser.add_argument(
        "--transcript-ms", type=int, default=20, help="engine: commit -> transcript, as a remote ASR (default 20)"
    )
    parser.add_argument("--seed", type=int, default=16, help="event plan seed")
    parser.add_argument(
        "--agent-path",
        type=Path,
        default=None,
        help="run the agent (not the engine or the bench) from this source tree: an A/B against another checkout",
    )
    parser.add_argument(
        "--agent-env",
        action="append",
        default=[],
        type=agent_setting,
        metavar="KEY=VALUE",
        help="a setting for the agent (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/interruptions-<time>.json)")
    args = parser.parse_args(argv)
    if args.per_call < 1:
        parser.error("--per-call must be >= 1")
    return args
