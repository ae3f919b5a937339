"""The workings of ``bench/capacity.py`` (what it measures and why is in that script's own description)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.testkit import procs
from agent.testkit.analysis import health, hops
from agent.testkit.bench import sides as kit
from agent.testkit.bench import tool
from agent.testkit.bench.workload import STAGGER_S, WorkloadConfig

BARGE_P99_LIMIT_MS = 50.0


# The generator's own lag (p99) beyond which it cannot judge a 50 ms criterion: half of it.
GENERATOR_LAG_MS = 25.0
STEP_OVERHEAD_S = 90.0  # hang-ups, draining, analysis: a step taking this much longer than its calls is stuck
STEP_SLACK_S = 4.0  # start, hang-ups and draining on top of the calls themselves, for the budget estimate
SHUTDOWN_S = 8.0  # stopping four processes, kept out of the step budget
BUSY_OTHERS_PCT = 50.0  # other processes using more than this (% of a core) make the machine a shared one
MACHINE_BUSY_PCT = 85.0  # ... and when it is this busy too, the server under test is starved by them


@dataclass
class Step:
    side: str
    calls: int
    verdict: str  # "pass" | "fail" (the server missed) | "generator" (missed, but the generator lagged)
    misses: list[str] = field(default_factory=list)
    generator: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class SideResult:
    side: str
    max_calls: int = 0  # the highest step that passed (0: none did)
    stopped_by: str = "max-calls"  # "fail" | "generator" | "budget" | "max-calls"
    reason: str = ""
    cpu_per_call_pct: float | None = None  # at max_calls
    steps: list[Step] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """True when the max is bounded above too (a step above it failed on the server's account)."""
        return self.stopped_by == "fail"


# ------------------------------------------------------------------------------------------------------------
# Judging one step
# ------------------------------------------------------------------------------------------------------------


def _p99(rep: dict[str, Any], *path: str) -> float | None:
    value: Any = rep
    for key in path:
        value = value[key]
    p99 = value["p99"]
    return None if p99 is None else float(p99)


def judge(rep: dict[str, Any], n: int) -> tuple[list[str], list[str]]:
    """(criteria the step missed, reasons the generator could not keep real time) for one side_report."""
    misses: list[str] = []
    failed = n - int(rep["calls_ok"])
    if failed:
        first = rep["call_errors"][0] if rep["call_errors"] else "?"
        misses.append(f"{failed}/{n} calls failed (first: {first[:120]})")
    gaps = rep["playout_gaps"]
    causes = gaps["causes"]
    if causes["agent"]:
        in_gc = gaps["during_server_gc"]
        text = (
            f"{causes['agent']} playout gaps of the server's own (of {gaps['count']}, "
            f"max {gaps['duration_ms']['max']:.0f} ms)"
        )
        if in_gc:
            text += f", {in_gc} of all gaps during a garbage-collector pause of the server"
        misses.append(text)
    barge = rep["latency_ms"]["barge_in"]
    if not barge["n"]:
        misses.append("no barge-in could be measured")
    elif barge["p99"] >= BARGE_P99_LIMIT_MS:
        misses.append(f"barge-in p99 {barge['p99']:.1f} ms >= {BARGE_P99_LIMIT_MS:g} (max {barge['max']:.0f})")
    not_cleared = rep["counts"].get("barge_ins_not_cleared", 0)
    if not_cleared:
        misses.append(f"{not_cleared} barge-ins got no clearAudio within {hops.BARGE_WINDOW_S:g} s")
    timeouts = sum(v for k, v in rep["turns"].items() if k.endswith("_timeout"))
    if timeouts:
        misses.append(f"{timeouts} caller turns waited in vain for bot audio")
    sent_late = _p99(rep, "carrier_lag_ms", "caller_frames_sent_late")
    if sent_late is not None and sent_late > health.LAG_LIMIT_MS:
        misses.append(f"caller frames left the carrier late (p99 {sent_late:.0f} ms): socket back-pressure")
    generator: list[str] = []
    if gaps["count"] > causes["agent"]:
        generator.append(
            f"{gaps['count'] - causes['agent']} playout gaps were not the server's: the engine sent the audio too "
            f"late ({causes['engine']}) or the carrier simulator was stalled ({causes['carrier']})"
        )
    cpu = rep["cpu"]
    if cpu["others_pct"] > BUSY_OTHERS_PCT and cpu["machine_pct"] >= MACHINE_BUSY_PCT:
        generator.append(
            f"the machine was {cpu['machine_pct']:.0f}% busy, {cpu['others_pct']:.0f}% of a core used by other "
            "processes (not the bench, the engine or the server)"
        )
    for label, value in (
        ("bench event loop lag", _p99(rep, "loop_lag_ms", "bench")),
        ("engine event loop lag", _p99(rep, "loop_lag_ms", "engine")),
        ("carrier playout clock late", _p99(rep, "carrier_lag_ms", "playout_ticks_late")),
    ):
        if value is not None and value > GENERATOR_LAG_MS:
            generator.append(f"{label} p99 {value:.0f} ms")
    return misses, generator


# ------------------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------------------


async def active_calls(target: kit.Target) -> float | None:
    """The agent's agent_active_calls gauge, None for the relay (or when /metrics does not answer)."""
    if target.name != "agent":
        return None
    metrics = await kit.scrape_metrics(f"{target.base_url}/metrics", nonzero_only=False)
    return metrics.get("agent_active_calls")


async def run_step(
    target: kit.Target, meter: procs.CpuMeter, others: procs.OtherProcesses, n: int, args: argparse.Namespace
) -> Step:
    t_start = time.monotonic()
    others.start()
    before = await active_calls(target)
    idle, idle_cpu = await kit.measure_idle(meter, 0.5)
    cfg = WorkloadConfig(calls=n, seconds=args.seconds, content_type=args.content_type, seed=args.seed)
    marks = {"start": target.log_size()}
    notes_before = len(target.notes)
    try:
        async with asyncio.timeout(n * STAGGER_S + args.seconds + STEP_OVERHEAD_S):
            run = await kit.run_workload(target, cfg, meter, idle, idle_cpu, marks)
    except TimeoutError:
        limit = n * STAGGER_S + args.seconds + STEP_OVERHEAD_S
        return Step(target.name, n, "fail", [f"the step did not finish within {limit:.0f} s"], [], 0.0)
    marks["stopping"] = marks["end"] = target.log_size()
    run.notes = target.notes[notes_before:]
    rep = kit.side_report(run, args.content_type, n)
    rep["other_processes"] = others.top()
    del run
    misses, generator = judge(rep, n)
    if not target.server.alive():
        misses.insert(0, f"the {target.server.name} exited with code {target.server.popen.returncode}")
        generator = []  # whatever the generator did, a dead server is the server's failure
    if before:
        rep["active_calls_before"] = before
        misses.append(f"agent_active_calls was {before:g} before the step started (calls stuck)")
    if idle_cpu > 5:
        rep["problems"].append(f"the server used {idle_cpu:.0f}% of a core with no calls up, before the step")
    verdict = "pass" if not misses else ("generator" if generator else "fail")
    return Step(target.name, n, verdict, misses, generator, time.monotonic() - t_start, rep)


async def background_load(seconds: float = 1.0) -> dict[str, float]:
    """CPU used by everything else on the machine before the bench starts (% of a core, and machine %)."""
    meter = procs.CpuMeter({"bench": os.getpid()})
    a = meter.snapshot()
    await asyncio.sleep(seconds)
    cpu = procs.cpu_between(a, meter.snapshot())
    others = cpu["machine"] * (os.cpu_count() or 1) - cpu["bench"]
    return {"machine_pct": round(cpu["machine"], 1), "others_pct": round(others, 1)}


def _estimate_s(n: int, args: argparse.Namespace, last: Step | None) -> float:
    guess = float(args.seconds) + n * STAGGER_S + STEP_SLACK_S
    if last is not None and last.wall_s > 0:
        guess = max(guess, last.wall_s + (n - last.calls) * STAGGER_S)
    return guess


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tool.cancel_on_signals()
    t_begin = time.monotonic()
    opts = kit.ServerOptions.from_args(args)
    sides = kit.SIDES if args.only == "both" else (args.only,)
    levels = list(range(args.start, args.max_calls + 1, args.step))
    config = {
        "levels": levels,
        "seconds": args.seconds,
        "budget_s": args.budget,
        "content_type": args.content_type,
        "criteria": {
            "playout_gaps_of_the_server": 0,
            "failed_calls": 0,
            "barge_in_p99_ms_below": BARGE_P99_LIMIT_MS,
            "generator_lag_p99_ms_limit": GENERATOR_LAG_MS,
        },
        "workload": asdict(WorkloadConfig(levels[0], args.seconds, args.content_type, seed=args.seed)),
    }
    report, stem = tool.start_report("capacity", args, config)
    report["background"] = await background_load()
    results = {name: SideResult(name) for name in sides}
    print(render_header(report), flush=True)
    async with contextlib.AsyncExitStack() as stack:
        targets: dict[str, kit.Target] = {}
        for name in sides:
            print(f"[capacity] starting the {name} side ...", file=sys.stderr, flush=True)
            targets[name] = await stack.enter_async_context(kit.start_side(name, opts, stem))
        meters = {name: t.meter() for name, t in targets.items()}
        ours = {pid for t in targets.values() for pid in (t.server.pid, t.engine.pid)}
        others = procs.OtherProcesses(ours)
        active = list(sides)
        for n in levels:
            for name in list(active):
                res = results[name]
                last = res.steps[-1] if res.steps else None
                estimate = _estimate_s(n, args, last)
                if time.monotonic() - t_begin + estimate > args.budget - SHUTDOWN_S:
                    res.stopped_by, res.reason = "budget", f"no time left for {n} calls (--budget {args.budget:g} s)"
                    active.remove(name)
                    continue
                print(f"[capacity] {name}: {n} calls x {args.seconds:g} s ...", file=sys.stderr, flush=True)
                step = await run_step(targets[name], meters[name], others, n, args)
                res.steps.append(step)
                print(render_step(step), flush=True)
                if step.verdict == "pass":
                    res.max_calls = n
                    res.cpu_per_call_pct = step.report["cpu"]["per_call_pct"]
                    continue
                res.stopped_by = step.verdict
                what = "; ".join(step.misses)
                if step.verdict == "generator":
                    what += " -- while the generator lagged: " + "; ".join(step.generator)
                res.reason = f"{n} calls: {what}"
                active.remove(name)
            if not active:
                break
        for name in active:
            results[name].reason = f"every step up to --max-calls {args.max_calls} passed"
        print("[capacity] stopping the servers ...", file=sys.stderr, flush=True)
    # Notes added while stopping (a server that had to be killed) reach the report here.
    report["shutdown_notes"] = {name: t.notes for name, t in targets.items() if t.notes}
    report["sides"] = {name: _side_json(res) for name, res in results.items()}
    report["result"] = summarize(results)
    report["wall_s"] = round(time.monotonic() - t_begin, 1)
    return report


# ------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------


def _side_json(res: SideResult) -> dict[str, Any]:
    return {
        "max_calls": res.max_calls,
        "exact": res.exact,
        "stopped_by": res.stopped_by,
        "reason": res.reason,
        "cpu_per_call_pct_at_max": res.cpu_per_call_pct,
        "steps": [asdict(s) for s in res.steps],
    }


def _cpu_at(res: SideResult, n: int) -> float | None:
    for step in res.steps:
        if step.calls == n and step.report:
            value = float(step.report["cpu"]["per_call_pct"])
            return None if math.isnan(value) else value
    return None


def summarize(results: dict[str, SideResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, res in results.items():
        cpu = res.cpu_per_call_pct
        out[name] = {
            "max_calls": res.max_calls,
            "bound": "exact" if res.exact else "at least",
            "stopped_by": res.stopped_by,
            "cpu_per_call_pct": cpu,
            "calls_per_core_by_cpu": round(100 / cpu) if cpu else None,
        }
    agent, base = results.get("agent"), results.get("baseline")
    if agent is None or base is None:
        return out
    ratio = hops.ratio(float(agent.max_calls), float(base.max_calls)) if base.max_calls else None
    if agent.exact and base.exact:
        kind = "="
    elif agent.exact:
        kind = "<="  # the baseline could do more than measured
    elif base.exact:
        kind = ">="  # the agent could do more than measured
    else:
        kind = "?"  # both are lower bounds: no ratio can be claimed
    out["max_calls_ratio"] = {"value": ratio, "kind": kind}
    out["cpu_per_call_ratio_at_max"] = hops.ratio(agent.cpu_per_call_pct, base.cpu_per_call_pct)
    # At the same load (the agent's max) the comparison does not depend on where each side stopped.
    same = agent.max_calls
    out["cpu_per_call_ratio_at_same_load"] = {
        "calls": same,
        "value": hops.ratio(_cpu_at(agent, same), _cpu_at(base, same)) if same else None,
    }
    return out


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


COLUMNS = (
    f"{'side':9}{'calls':>6}  {'result':10}{'CPU/call':>9}{'server':>8}{'barge p50/p99 (n)':>20}{'gaps':>9}"
    f"{'failed':>7}{'c->m p99':>9}{'m->c p99':>9}{'lag bench/eng':>15}{'cpu wait':>10}{'machine (others)':>18}"
)


def render_header(report: dict[str, Any]) -> str:
    cfg, bg = report["config"], report["background"]
    lines = [
        f"Capacity: concurrent calls of {cfg['seconds']:g} s, {cfg['content_type']}, {report['machine']['cpus']} CPUs;"
        f" steps {cfg['levels'][0]}..{cfg['levels'][-1]}, budget {cfg['budget_s']:g} s",
        f"criteria: every call completes, 0 playout gaps of the server's own, barge-in p99 < {BARGE_P99_LIMIT_MS:g}"
        " ms, every barge-in"
        f" cleared; generator trusted while its lag p99 <= {GENERATOR_LAG_MS:g} ms",
        f"before the bench: machine {bg['machine_pct']:.0f}% busy, other processes {bg['others_pct']:.0f}% of a core",
    ]
    if bg["others_pct"] > BUSY_OTHERS_PCT:
        lines.append(
            "WARNING: other processes are busy on this machine: the results measure this machine under that load"
        )
    lines += [
        "columns: CPU per call and server CPU in % of a core; latencies in ms; c->m caller frame -> model, m->c model"
        " delta -> caller; lag: event loop lag p99 of the bench and the engine; cpu wait: how long the server's event"
        " loop waited for a CPU per wake-up; gaps: the server's own/all; machine: % of all cores busy (other"
        " processes' share in % of a core)",
        "",
        COLUMNS,
    ]
    return "\n".join(lines)


def render_step(step: Step) -> str:
    if not step.report:
        return f"{step.side:9}{step.calls:>6}  {step.verdict:10}" + "; ".join(step.misses)
    r = step.report
    barge = r["latency_ms"]["barge_in"]
    cpu, lag = r["cpu"], r["loop_lag_ms"]
    barge_text = f"{_f(barge['p50'])}/{_f(barge['p99'])} ({barge['n']})"
    row = (
        f"{step.side:9}{step.calls:>6}  {step.verdict:10}"
        f"{_f(cpu['per_call_pct'], 2) + '%':>9}{_f(cpu['server_pct'], 0) + '%':>8}"
        f"{barge_text:>20}"
        f"{str(r['playout_gaps']['causes']['agent']) + '/' + str(r['playout_gaps']['count']):>9}"
        f"{step.calls - r['calls_ok']:>7}"
        f"{_f(r['latency_ms']['caller_to_model']['p99'], 0):>9}{_f(r['latency_ms']['model_to_caller']['p99'], 0):>9}"
        f"{_f(lag['bench']['p99'], 0) + '/' + _f(lag['engine']['p99'], 0) + ' ms':>15}"
        f"{_f(cpu['server_wait_per_run_ms'], 2) + ' ms':>10}"
        f"{_f(cpu['machine_pct'], 0) + '% (' + _f(cpu['others_pct'], 0) + '%)':>18}"
    )
    lines = [row]
    lines += [f"{'':17}miss: {m}" for m in step.misses]
    if step.generator:
        lines.append(f"{'':17}generator: {'; '.join(step.generator)}")
    if r.get("server_gc_pauses_ms"):
        gc = r["server_gc_pauses_ms"]
        lines.append(f"{'':17}server GC pauses > 20 ms: {gc['n']}, max {gc['max']:.0f} ms")
    lines += [f"{'':17}note: {p}" for p in r["problems"][:4]]
    if step.verdict != "pass" and r.get("other_processes"):
        busiest = ", ".join(f"{pct:.0f}% {cmd}" for pct, cmd in r["other_processes"])
        lines.append(f"{'':17}other processes meanwhile: {busiest}")
    log = r["server_log"]
    if log["tracebacks"] or {"ERROR", "CRITICAL"} & set(log["levels"]):
        lines.append(f"{'':17}server log: {log['levels']}, {log['tracebacks']} tracebacks: {log['top'][:2]}")
    return "\n".join(lines)


def render_result(report: dict[str, Any]) -> str:
    res, sides = report["result"], report["sides"]
    lines = ["", "result"]
    for name in kit.SIDES:
        if name not in res:
            continue
        r, s = res[name], sides[name]
        bound = "" if r["bound"] == "exact" else ">= "
        per_core = f", ~{r['calls_per_core_by_cpu']} calls per core by CPU alone" if r["calls_per_core_by_cpu"] else ""
        lines.append(
            f"  {name:9} max {bound}{r['max_calls']} calls; CPU per call at the max {_f(r['cpu_per_call_pct'], 2)}% "
            f"of a core{per_core}"
        )
        lines.append(f"  {'':9} stopped by {s['stopped_by']}: {s['reason']}")
    if "max_calls_ratio" in res:
        ratio, kind = res["max_calls_ratio"]["value"], res["max_calls_ratio"]["kind"]
        text = {
            "=": f"{_f(ratio, 2)}x",
            "<=": f"<= {_f(ratio, 2)}x (the baseline's max is a lower bound)",
            ">=": f">= {_f(ratio, 2)}x (the agent's max is a lower bound)",
            "?": f"{_f(ratio, 2)}x of lower bounds only (neither side failed on its own account)",
        }[kind]
        same = res["cpu_per_call_ratio_at_same_load"]
        lines += [
            f"  max calls agent/baseline: {text}",
            f"  CPU per call agent/baseline: {_f(res['cpu_per_call_ratio_at_max'], 2)}x at each side's max, "
            f"{_f(same['value'], 2)}x at the same load ({same['calls']} calls)",
        ]
    if any(s["stopped_by"] == "generator" for s in sides.values()):
        lines.append(
            "  -> 'generator': the bench or the engine could not keep real time, or other processes kept the machine "
            "busy (on a 2-core machine they all compete with the server for CPU): the server's own limit is at or "
            "above that step, not measurable here"
        )
    for name, notes in report.get("shutdown_notes", {}).items():
        lines += [f"  [{name}] {n}" for n in notes]
    lines += ["", f"results: {report['out']} ({report['wall_s']:.0f} s)"]
    return "\n".join(lines)
