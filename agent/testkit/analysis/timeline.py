"""The human view of one call: who spoke when, latency per turn, barge-ins and what was truncated."""

from __future__ import annotations

import math
from collections.abc import Sequence

from agent.stats import RESPONSE_LATENCY
from agent.testkit.analysis.metrics import CallMetrics


def _fmt_s(ms: float) -> str:
    return f"{ms / 1000:7.2f}s"


def _lanes(m: CallMetrics, width: int = 96) -> list[str]:
    """Two text lanes, one column per time slice: who was audible when, at a glance."""
    end = max([m.end_ms or 0.0, m.duration_ms] + [a.end_ms for a in m.answers] + [u.end_ms for u in m.caller])
    if end <= 0:
        return []
    step = max(end / width, 20.0)
    cols = math.ceil(end / step)

    def lane(spans: Sequence[tuple[float, float]], mark: str) -> str:
        cells = [" "] * cols
        for s, e in spans:
            for c in range(int(s // step), min(cols, math.ceil(e / step))):
                cells[c] = mark
        return "".join(cells)

    caller = lane([(u.start_ms, u.end_ms) for u in m.caller], "█")
    bot = lane([(a.start_ms, a.end_ms) for a in m.answers], "█")
    bot_cells = list(bot)
    for c_ms in m.clears_ms:
        bot_cells[min(cols - 1, int(c_ms // step))] = "✕"
    return [
        f"  caller |{caller}|",
        f"  bot    |{''.join(bot_cells)}|",
        f"          0s{' ' * max(0, cols - 8)}{end / 1000:.1f}s  (1 column = {step:.0f} ms, ✕ = clearAudio)",
    ]


def format_timeline(m: CallMetrics) -> list[str]:
    """Who spoke when, latency per turn, barge-ins and what was truncated: one line per thing that happened."""
    rows: list[tuple[float, int, str]] = []
    if m.answer_ms is not None:
        rows.append((-m.answer_ms, 0, f"carrier  answer webhook -> 200 in {m.answer_ms:.0f} ms"))
    rows.append((0.0, 0, "carrier  stream started"))
    for u in m.caller:
        label = f' "{u.label}"' if u.label else ""
        rows.append((u.start_ms, 1, f"caller   speaks{label} until {u.end_ms / 1000:.2f}s ({u.duration_ms:.0f} ms)"))
    for a in m.answers:
        if a.kind == "greeting":
            what = f"greeting, {a.start_ms:.0f} ms after start"
        elif a.response_ms is not None:
            what = f"answer, response latency {a.response_ms:.0f} ms (at the carrier)"
        else:
            what = "speaks unprompted"
        ending = "interrupted" if a.interrupted else "finished"
        gaps = f", {len(a.gaps_ms)} playout gap(s) {sum(a.gaps_ms):.0f} ms" if a.gaps_ms else ""
        text = f' "{a.text}"' if a.text else ""
        rows.append(
            (
                a.start_ms,
                2,
                f"bot      {what}; {ending} at {a.end_ms / 1000:.2f}s, heard {a.heard_ms:.0f} ms{gaps}{text}",
            )
        )
    for b in m.barge_ins:
        if b.clear_ms is None:
            rows.append((b.speech_ms + 1, 3, "barge-in caller talked over the bot but it did not stop (no clearAudio)"))
            continue
        trunc = ""
        if b.truncated_ms is not None:
            err = f", error {b.truncation_error_ms:+.0f} ms" if b.truncation_error_ms is not None else ""
            trunc = f"; model truncated at {b.truncated_ms:.0f} ms{err}"
        rows.append(
            (
                b.clear_ms,
                3,
                f"barge-in clearAudio {b.time_to_silence_ms:.0f} ms after the caller started; "
                f"caller heard {b.heard_ms or 0:.0f} ms of that answer{trunc}",
            )
        )
    if m.end_ms is not None:
        after = f"; then {', '.join(m.after_stream)}" if m.after_stream else ""
        rows.append((m.end_ms, 4, f"call     ended ({end_reason_text(m)}){after}"))
    lines = [f"{_fmt_s(t)}  {text}" for t, _, text in sorted(rows, key=lambda r: (r[0], r[1]))]
    lines += ["", *_lanes(m), "", *summary_lines(m)]
    return lines


def end_reason_text(m: CallMetrics) -> str:
    """The agent's end reason (what its console shows) when known; the carrier's view otherwise, said so."""
    if m.agent_end_reason is not None:
        return m.agent_end_reason
    return f"{m.end_reason or 'unknown'}, as the carrier saw it"


def summary_lines(m: CallMetrics) -> list[str]:
    def ms_list(values: Sequence[float]) -> str:
        return ", ".join(f"{v:.0f}" for v in values) + " ms" if values else "-"

    status = "OK" if m.ok else f"FAILED ({m.failure}: {m.failure_detail})"
    unseen = "not measured (the agent's model side is not visible from here)"
    trunc = ms_list(m.truncation_error_ms) if m.truncation_error_ms or not m.barge_in_ms else unseen
    queue = f"max {m.queue_max_ms:.0f} ms, avg {m.queue_avg_ms:.0f} ms" if m.queue_max_ms is not None else "-"
    if m.agent_response_ms is not None:
        response = [
            f"  response latency  {ms_list(m.agent_response_ms)} (the agent's record, as on its console)",
            f"    at the carrier  {ms_list(m.response_ms)} (caller's last speech frame sent -> first bot audio played)",
        ]
    else:
        response = [f"  response latency  {ms_list(m.response_ms)} (measured at the carrier)"]
    return [
        f"  result            {status}",
        f"  ended             {end_reason_text(m)}",
        f"  answer time       {ms_list([m.answer_ms] if m.answer_ms is not None else [])}",
        f"  greeting time     {ms_list([m.greeting_ms] if m.greeting_ms is not None else [])}",
        f"  ({RESPONSE_LATENCY})",
        *response,
        f"  barge-in -> quiet {ms_list(m.barge_in_ms)}",
        f"  truncation error  {trunc}",
        f"  playout gaps      {ms_list(m.playout_gaps_ms)}",
        f"  carrier queue     {queue}",
        f"  bot audio heard   {m.bot_heard_ms / 1000:.2f} s",
        *(f"  webhook error     {e}" for e in m.webhook_errors),
    ]
