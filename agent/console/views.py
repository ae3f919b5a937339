"""What the console pages show, computed from records, registry calls and stats: plain data for the templates
(no requests, no I/O), so each view can be tested on its own."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from agent.calls.call import Call
from agent.console import charts
from agent.console.rendering import call_url, fmt_duration, fmt_json, fmt_ms, fmt_pct, fmt_time, fmt_usd
from agent.records.record import CallRecord
from agent.stats import (
    MIN_CALLS_PER_ARM,
    Interval,
    bootstrap_percentile,
    percentile,
    proportion_interval,
)
from agent.storage import CallStats, CallSummary, Percentiles, PromptVersionInfo
from agent.storage.call_results import ArmData, EvalRunResult

# --- live calls ------------------------------------------------------------------------------------------------


def call_state(call: Call) -> str:
    """A one-word answer to "what is this call doing right now", from flags the call already keeps."""
    if call.closing or call.done.is_set():
        return "ending"
    if not call.model_ready.is_set():
        return "connecting"
    if call.caller_speaking:
        return "caller speaking"
    if call.playout.is_audible():
        return "bot speaking"
    return "listening"


def live_rows(calls: Sequence[Call], now: float | None = None) -> list[dict[str, Any]]:
    now = time.monotonic() if now is None else now
    rows = []
    for call in sorted(calls, key=lambda c: c.started_monotonic):
        record = call.record
        rows.append(
            {
                "call_id": call.call_id,
                "url": call_url(call.call_id),
                "from": record.from_number,
                "to": record.to_number,
                "prompt": call.prompt.name,
                "duration_s": round(max(now - call.started_monotonic, 0.0), 1),
                "duration": fmt_duration(now - call.started_monotonic),
                "turns": sum(1 for t in record.turns if t.text.strip()),
                "barge_ins": call.barge_ins,
                "state": call_state(call),
            }
        )
    return rows


def recent_rows(calls: Sequence[CallSummary]) -> list[dict[str, Any]]:
    return [
        {
            "call_id": c.call_id,
            "url": call_url(c.call_id),
            "from": c.from_number,
            "to": c.to_number,
            "prompt": c.prompt_name,
            "started": fmt_time(c.started_at),
            "duration": fmt_duration(c.duration_s),
            "turns": c.turn_count,
            "barge_ins": c.barge_in_count,
            "end_reason": c.end_reason or "—",
        }
        for c in calls
    ]


# --- one call --------------------------------------------------------------------------------------------------


def safe_recording(recordings_dir: Path, stored: str | None) -> Path | None:
    """The recording file a call points at, only if it is a `.wav` file inside the recordings folder.

    The stored path comes from the database, so it is not trusted: it is resolved (following `..` and symlinks)
    and refused unless it lands inside `recordings_dir`. A relative path is tried against the working directory
    (how the agent writes it) and against the recordings folder itself.
    """
    if not stored or "\x00" in stored:
        return None
    root = recordings_dir.resolve()
    for candidate in (Path(stored), root / stored):
        try:
            path = candidate.resolve()
        except (OSError, RuntimeError):
            continue
        if path.is_relative_to(root) and path.suffix.lower() == ".wav" and path.is_file():
            return path
    return None


def call_view(record: CallRecord) -> dict[str, Any]:
    """Transcript, timeline, latencies, barge-ins and tools of one call, with times relative to its start."""
    t0 = record.started_at
    end = record.ended_at if record.ended_at is not None else time.time()
    duration = max(end - t0, 0.0)
    turns = []
    spans: list[charts.Span] = []
    for i, turn in enumerate(record.turns):
        start = turn.started_at - t0
        stop = (turn.ended_at - t0) if turn.ended_at is not None else max(start + 0.3, duration)
        turns.append(
            {
                "n": i + 1,
                "speaker": turn.speaker,
                "text": turn.text,
                "at": start,
                "length": max(stop - start, 0.0),
                "interrupted": turn.interrupted,
                "heard_ms": turn.heard_ms,
                "audio_ms": turn.audio_ms,
                "latency_ms": turn.latency_ms,
            }
        )
        tip = f"{turn.speaker} at {start:.2f} s: {turn.text[:120]}"
        if turn.latency_ms is not None:
            tip += f" (response latency {turn.latency_ms:.0f} ms)"
        if turn.interrupted:
            tip += f" — interrupted, heard {fmt_ms(turn.heard_ms)}"
        css = "interrupted" if turn.interrupted else turn.speaker
        spans.append(charts.Span(turn.speaker, start, stop, css, tip))
    for tool in record.tools:
        start = tool.started_at - t0
        stop = (tool.ended_at - t0) if tool.ended_at is not None else start + 0.3
        state = "ok" if tool.ok else ("failed" if tool.ok is False else "no result")
        spans.append(charts.Span("tools", start, stop, "tool", f"{tool.name} ({state}) at {start:.2f} s"))
    markers = [
        charts.Marker(
            b.t - t0,
            "barge",
            f"barge-in at {b.t - t0:.2f} s: heard {b.heard_ms:.0f} ms, cleared in {b.clear_ms:.1f} ms",
        )
        for b in record.barge_ins
    ]
    lanes = ["caller", "assistant"]
    if any(t.speaker == "system" for t in record.turns):
        lanes.append("system")
    if record.tools:
        lanes.append("tools")
    latencies = [t.latency_ms for t in record.turns if t.speaker == "assistant" and t.latency_ms is not None]
    answers = [t for t in record.turns if t.speaker == "assistant"]
    # Answers are "#n" everywhere on the page (the nth assistant answer), never the model's item ids.
    answer_numbers = {t.item_id: i + 1 for i, t in enumerate(answers) if t.item_id}
    return {
        "duration": duration,
        "turns": turns,
        "timeline": charts.timeline(lanes, spans, markers, duration, title="Timeline of turns"),
        "latencies": [
            {"n": i + 1, "at": t.started_at - t0, "latency_ms": t.latency_ms, "text": t.text}
            for i, t in enumerate(answers)
            if t.latency_ms is not None
        ],
        "latency_median": percentile(latencies, 50),
        "latency_max": max(latencies) if latencies else None,
        "barge_ins": [
            {
                "at": b.t - t0,
                "answer": answer_numbers.get(b.item_id or ""),
                "heard_ms": b.heard_ms,
                "clear_ms": b.clear_ms,
            }
            for b in record.barge_ins
        ],
        "tools": [
            {
                "name": u.name,
                "arguments": fmt_json(u.arguments),
                "at": u.started_at - t0,
                "took": (u.ended_at - u.started_at) if u.ended_at is not None else None,
                "ok": u.ok,
                "result": u.result,
            }
            for u in record.tools
        ],
        "interruptions": [
            {
                "at": e.t - t0,
                "outcome": str(e.detail.get("outcome", "")),
                "reason": str(e.detail.get("reason", "")),
                "paused_ms": e.detail.get("paused_ms"),
                "transcript": e.detail.get("transcript"),
                "source": str(e.detail.get("source", "")),
            }
            for e in record.events
            if e.kind == "interruption"
        ],
        "events": [{"at": e.t - t0, "kind": e.kind, "detail": fmt_json(e.detail)} for e in record.events],
        "usage": record.usage,
        "cost_usd": record.cost_usd,
    }


# --- charts and comparisons ------------------------------------------------------------------------------------


def stats_rows(a: CallStats, b: CallStats) -> list[tuple[str, str, str, str]]:
    """Metric, run A, run B, difference (B − A): the side-by-side table of the runs page."""

    def diff(x: float | None, y: float | None, fmt: Any) -> str:
        if x is None or y is None:
            return ""
        delta = y - x
        sign = "+" if delta > 0 else ("−" if delta < 0 else "±")
        return sign + str(fmt(abs(delta)))

    def row(label: str, x: float | None, y: float | None, fmt: Any) -> tuple[str, str, str, str]:
        return label, fmt(x), fmt(y), diff(x, y, fmt)

    def count(v: float | None) -> str:
        return "—" if v is None else f"{v:,.0f}"

    def num(v: float | None) -> str:
        return "—" if v is None else f"{v:,.2f}"

    rows = [
        row("Calls", a.calls, b.calls, count),
        row("Answers with a response latency", a.latency_ms.count, b.latency_ms.count, count),
        row("Response latency p50", a.latency_ms.p50, b.latency_ms.p50, fmt_ms),
        row("Response latency p90", a.latency_ms.p90, b.latency_ms.p90, fmt_ms),
        row("Response latency p99", a.latency_ms.p99, b.latency_ms.p99, fmt_ms),
        row("Assistant answers", a.assistant_turns, b.assistant_turns, count),
        row("Interrupted answers", a.interrupted_turns, b.interrupted_turns, count),
        row("Barge-ins", a.barge_ins, b.barge_ins, count),
        row("Barge-in rate", a.barge_in_rate, b.barge_in_rate, fmt_pct),
        row("Calls with a barge-in", a.calls_with_barge_in, b.calls_with_barge_in, count),
        row("Total cost", a.total_cost_usd, b.total_cost_usd, fmt_usd),
        row("Mean cost per call", a.mean_cost_usd, b.mean_cost_usd, fmt_usd),
        row("Mean duration", a.mean_duration_s, b.mean_duration_s, fmt_duration),
        row("Mean turns", a.mean_turns, b.mean_turns, num),
        row("Tool calls", a.tool_calls, b.tool_calls, count),
        row("Tool failures", a.tool_failures, b.tool_failures, count),
    ]
    for reason in sorted(a.end_reasons.keys() | b.end_reasons.keys()):
        rows.append(row(f"Ended: {reason}", a.end_reasons.get(reason, 0), b.end_reasons.get(reason, 0), count))
    return rows


def version_row(version: PromptVersionInfo, stats: CallStats | None, evals: list[EvalRunResult]) -> dict[str, Any]:
    """One version's line on the Prompts page: how calls on it went, and its eval runs."""
    return {
        "v": version,
        "stats": stats,
        "endings": sorted(stats.end_reasons.items(), key=lambda kv: (-kv[1], kv[0])) if stats else [],
        "evals": evals,
    }


def _interval_text(interval: Interval | None, fmt: Any) -> str:
    if interval is None:
        return "—"
    return f"{fmt(interval.value)} ({fmt(interval.low)}–{fmt(interval.high)})"


def experiment_rows(control: ArmData, candidate: ArmData) -> dict[str, Any]:
    """Control and candidate side by side, each figure with its 95% interval, and a verdict per row that only
    calls a difference when the intervals do not overlap and both arms have enough calls."""
    enough = min(control.stats.calls, candidate.stats.calls) >= MIN_CALLS_PER_ARM
    rows: list[dict[str, str]] = []

    def add(label: str, a: Interval | None, b: Interval | None, fmt: Any) -> None:
        if a is None or b is None:
            verdict = "no data"
        elif not enough:
            verdict = "not enough calls yet"
        elif a.overlaps(b):
            verdict = "within noise"
        else:
            verdict = "candidate higher" if b.value > a.value else "candidate lower"
        rows.append(
            {"label": label, "control": _interval_text(a, fmt), "candidate": _interval_text(b, fmt), "verdict": verdict}
        )

    add(
        "Response latency p50",
        bootstrap_percentile(control.latencies_ms, 50),
        bootstrap_percentile(candidate.latencies_ms, 50),
        fmt_ms,
    )
    add(
        "Response latency p95",
        bootstrap_percentile(control.latencies_ms, 95),
        bootstrap_percentile(candidate.latencies_ms, 95),
        fmt_ms,
    )
    a, b = control.stats, candidate.stats
    add(
        "Barge-in rate (per answer)",
        proportion_interval(a.barge_ins, a.assistant_turns),
        proportion_interval(b.barge_ins, b.assistant_turns),
        fmt_pct,
    )
    add(
        "Calls with a barge-in",
        proportion_interval(a.calls_with_barge_in, a.calls),
        proportion_interval(b.calls_with_barge_in, b.calls),
        fmt_pct,
    )
    for reason in sorted(a.end_reasons.keys() | b.end_reasons.keys()):
        add(
            f"Ended: {reason}",
            proportion_interval(a.end_reasons.get(reason, 0), a.calls),
            proportion_interval(b.end_reasons.get(reason, 0), b.calls),
            fmt_pct,
        )
    add(
        "Tool failures (per tool call)",
        proportion_interval(a.tool_failures, a.tool_calls),
        proportion_interval(b.tool_failures, b.tool_calls),
        fmt_pct,
    )
    return {
        "rows": rows,
        "enough": enough,
        "calls": (a.calls, b.calls),
        "cost": (fmt_usd(a.mean_cost_usd), fmt_usd(b.mean_cost_usd)),
    }


def percentile_series(points: Sequence[Percentiles]) -> list[charts.Series]:
    return [
        charts.Series("p50", [p.p50 for p in points], "s1"),
        charts.Series("p90", [p.p90 for p in points], "s2"),
        charts.Series("p99", [p.p99 for p in points], "s3"),
    ]


def ms_axis(v: float) -> str:
    return f"{v / 1000:g} s" if v >= 1000 else f"{v:.0f} ms"


def usd_axis(v: float) -> str:
    return f"${v:.2g}" if v else "$0"


def pct_axis(v: float) -> str:
    return f"{v:.0f}%"


def query_string(params: Mapping[str, str | int | None], **changes: str | int | None) -> str:
    merged = {k: v for k, v in {**params, **changes}.items() if v not in (None, "")}
    return urlencode(merged)
