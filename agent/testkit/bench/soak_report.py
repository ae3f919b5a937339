"""The soak's text report, from its JSON."""

from __future__ import annotations

import math
from typing import Any

from agent.testkit.bench.soak_state import CALL_SECONDS

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
        f"({q['playout_gaps_of_the_agent']} the agent's own, {q['playout_gaps_during_generator_stalls']} began during "
        "a bench/engine stall"
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
