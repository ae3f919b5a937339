"""Whether a bench run can be trusted and what went wrong in it: event-loop stalls and GC pauses lined up with
playout gaps, the server's log boiled down, and the problems worth a human's attention."""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from agent.testkit.analysis.hops import BARGE_WINDOW_S, CallResult, Matched, stats

_UUIDISH = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\b(sess|item|resp|event)_\w+")
_NUMBER = re.compile(r"\b\d+(\.\d+)?\b")
_LOG_LINE = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) call=\S+ (.*)$")


_GC_PAUSE = re.compile(r"^GCPAUSE t=(\d+\.\d+) gen=(\d+) ms=(\d+\.\d+)", re.MULTILINE)


def gc_pauses(log_text: str) -> list[tuple[float, float, int]]:
    """(ended at, ms, generation) of every long collection the `--gc-probe` logged (bench/gcprobe)."""
    return [(float(t), float(ms), int(gen)) for t, gen, ms in _GC_PAUSE.findall(log_text)]


def summarize_log(text: str, top: int = 12) -> dict[str, Any]:
    """Count warnings and errors by message shape (ids and numbers blanked) in the agent's log."""
    levels: Counter[str] = Counter()
    shapes: Counter[str] = Counter()
    tracebacks = 0
    for line in text.splitlines():
        if line.startswith("Traceback"):
            tracebacks += 1
        match = _LOG_LINE.match(line)
        if match is None:
            continue
        level, logger, message = match.groups()
        levels[level] += 1
        if level in ("WARNING", "ERROR", "CRITICAL"):
            shapes[f"{level} {logger}: {_NUMBER.sub('N', _UUIDISH.sub('<id>', message))[:160]}"] += 1
    return {"levels": dict(levels), "tracebacks": tracebacks, "top": shapes.most_common(top)}


ENGINE_IDLE_S = 8.0  # how long the bench waits for the server to close its model sockets after the calls
LAG_LIMIT_MS = 100.0  # beyond this the pipeline is behind real time and latencies measure backlog, not hops


def overload(m: Matched, engine: dict[str, Any]) -> list[str]:
    """Why this side's latency figures cannot be trusted, if they cannot: empty when the run kept real time."""
    reasons = []
    sent, ticks = stats(m.send_lag_ms), stats(m.playout_lag_ms)
    engine_lag = stats(engine.get("loop_lag_ms", []))
    if (sent["p99"] or 0) > LAG_LIMIT_MS:
        reasons.append(
            f"caller frames left the carrier up to {sent['max']:.0f} ms late (p99 {sent['p99']:.0f} ms): "
            "the server stopped reading its socket (back-pressure) or the bench was starved of CPU"
        )
    if (ticks["p99"] or 0) > LAG_LIMIT_MS:
        reasons.append(f"the carrier's playout clock ran up to {ticks['max']:.0f} ms late (p99 {ticks['p99']:.0f} ms)")
    if (engine_lag["p99"] or 0) > LAG_LIMIT_MS:
        reasons.append(f"the engine's event loop lagged (p99 {engine_lag['p99']:.0f} ms)")
    return reasons


def collect_problems(
    calls: Sequence[CallResult], engine: dict[str, Any], m: Matched, side: str
) -> tuple[list[str], dict[str, Any]]:
    """Lines worth a human's attention, plus the raw tallies behind them."""
    problems: list[str] = []
    failed = [c for c in calls if c.error]
    if failed:
        reasons = Counter(c.error.split(":")[0] if c.error else "" for c in failed)
        problems.append(f"{len(failed)}/{len(calls)} calls had errors: {dict(reasons)}; first: {failed[0].error}")
    proto = Counter(e for c in calls for e in c.protocol_errors)
    if proto:
        problems.append(f"carrier protocol errors: {sum(proto.values())} ({proto.most_common(3)})")
    hooks = Counter(f for c in calls for f in c.webhook_failures)
    if hooks:
        problems.append(f"webhooks answered with errors: {sum(hooks.values())} ({hooks.most_common(4)})")
    internal = [e for c in calls for e in c.internal_errors]
    if internal:
        problems.append(f"carrier simulator internal errors: {internal[:3]}")
    warns = Counter(w for c in calls for w in c.warnings)
    sessions: list[dict[str, Any]] = engine.get("sessions", [])
    engine_proto = Counter(e for s in sessions for e in s["protocol_errors"])
    if engine_proto:
        problems.append(f"engine saw {sum(engine_proto.values())} protocol errors: {engine_proto.most_common(3)}")
    engine_errors = Counter(re.sub(r"\d+", "N", e) for s in sessions for e in s["errors"])
    if engine_errors:
        problems.append(
            f"engine answered with {sum(engine_errors.values())} error events: {engine_errors.most_common(4)}"
        )
    if engine.get("internal_errors"):
        problems.append(f"engine internal errors: {engine['internal_errors'][:3]}")
    if engine.get("still_open"):
        by_index = {c.index: c for c in calls}
        left = []
        for s_idx, sess in enumerate(sessions):
            if sess.get("open_at_drain"):
                call = by_index.get(m.session_call.get(s_idx, -1))
                left.append(f"call {call.index} ({call.end_reason})" if call else f"unpaired session {sess['id']}")
        problems.append(
            f"{engine['still_open']} model session(s) still open {ENGINE_IDLE_S:g}+ s after every call had ended: "
            + ", ".join(left[:5])
        )
    c = m.counts
    if c["barge_ins_not_cleared"]:
        problems.append(
            f"{c['barge_ins_not_cleared']}/{c['barge_ins']} barge-ins got no clearAudio within {BARGE_WINDOW_S:g} s"
        )
    if c["clears_without_speech"]:
        problems.append(f"{c['clears_without_speech']} clearAudio without a speech_started before it")
    if c["frames_lost"]:
        problems.append(f"{c['frames_lost']} caller frames never reached the model (not counting the last 0.5 s)")
    if c["frames_delivered_twice"]:
        problems.append(f"{c['frames_delivered_twice']} caller frames reached the model twice")
    if c["sessions_unpaired"]:
        problems.append(f"{c['sessions_unpaired']} engine sessions could not be paired with a call")
    if c["truncates_unmatched"]:
        problems.append(f"{c['truncates_unmatched']}/{c['truncates']} truncates could not be paired with a clear")
    tds = {str(s.get("turn_detection")) for s in sessions if s.get("turn_detection")}
    timeouts: Counter[str] = Counter()
    for call in calls:
        timeouts.update({k: v for k, v in call.turns.items() if k.endswith("_timeout")})
    if timeouts:
        problems.append(f"caller turns that waited in vain for bot audio: {dict(timeouts)}")
    extensions = Counter(s.get("extensions") or "none" for s in sessions)
    tallies = {
        "carrier_warnings": warns.most_common(5),
        "engine_error_events": engine_errors.most_common(8),
        "engine_turn_detection": sorted(tds),
        "model_socket_extensions": dict(extensions),
    }
    for note in m.notes:
        problems.append(f"note ({side}): {note}")
    return problems, tallies


STALL_SLACK_S = (0.05, 0.02)  # a stall explains a gap that began up to 50 ms after it ended (20 ms before it began)
# The server needs a moment to pass audio on: audio the engine sent later than this before the carrier ran dry
# could not have been there in time, whatever the server did.
ENGINE_MARGIN_S = 0.05
GAP_CAUSES = ("engine", "carrier", "agent")  # whose doing a playout gap was (gap_causes)


def _stalls(spikes: Iterable[tuple[float, float]]) -> tuple[list[tuple[float, float]], list[float]]:
    """(start, end) of each stall, sorted by start, and the latest end among the first i+1."""
    stalls = sorted((t - lag / 1000, t) for t, lag in spikes)
    return stalls, list(itertools.accumulate((b for _, b in stalls), max))


def _stalled_at(stalls: tuple[list[tuple[float, float]], list[float]], t: float) -> bool:
    spans, latest_end = stalls
    after, before = STALL_SLACK_S
    i = bisect.bisect_right(spans, (t + before, math.inf))
    return bool(i) and latest_end[i - 1] >= t - after


def gaps_during_stalls(gap_spans: Sequence[tuple[float, float]], spikes: Iterable[tuple[float, float]]) -> int:
    """How many gaps began while an event loop of the generator was stalled.

    A spike (woke at, lag ms) means the loop slept through [woke - lag, woke]. A stalled bench reads late what the
    server sent in time (its playout clock catches up first and finds the queue empty), and a stalled engine sends
    a response's audio late: either can empty the carrier's queue with no fault of the server's.
    """
    stalls = _stalls(spikes)
    return sum(1 for g0, _g1 in gap_spans if _stalled_at(stalls, g0))


def gap_causes(
    gap_spans: Sequence[tuple[float, float]],
    audio_sent: Sequence[float | None],
    carrier_spikes: Iterable[tuple[float, float]],
    engine_spikes: Iterable[tuple[float, float]],
) -> list[str]:
    """Whose doing each playout gap was, one of GAP_CAUSES.

    * engine: the audio the carrier ran out of left the engine less than ENGINE_MARGIN_S before (a stall of the
      engine's loop right after it stamped the send counts as sending late); with no such record, the engine's
      loop was stalled when the carrier ran dry;
    * carrier: the bench process (the carrier simulator) was stalled then, so it read in time what came late
      or played its ticks late;
    * agent: neither, so the audio was at the agent in time and the carrier was listening: the server's fault.
    """
    engine = _stalls(engine_spikes)
    carrier = _stalls(carrier_spikes)
    out: list[str] = []
    for (g0, _g1), sent in zip(gap_spans, audio_sent, strict=True):
        if sent is None:
            late = _stalled_at(engine, g0)
        else:
            # A stall that began as the engine stamped the send delayed the send itself.
            held = [end for start, end in engine[0] if start <= sent + 0.005 and end >= sent]
            late = max([sent, *held]) > g0 - ENGINE_MARGIN_S
        out.append("engine" if late else "carrier" if _stalled_at(carrier, g0) else "agent")
    return out
