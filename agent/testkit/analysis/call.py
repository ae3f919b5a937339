"""Turn one finished simulated call into the numbers and the story a person wants: who spoke when, how fast.

The synthetic-call tool, the demo and the load test all measure calls here, so a number means the same thing
wherever it is printed. Everything is on the call clock: milliseconds after the carrier sent ``start``.

Definitions (what a caller would notice):

* answer time: answer webhook sent -> HTTP response received (negative side of the call clock).
* greeting time: ``start`` sent -> the first bot audio played on the line.
* response latency: end of a caller utterance -> the next bot answer starts playing (the caller's last speech
  frame sent -> the first bot audio played at the carrier). The agent stores the same figure per answer
  (`Turn.latency_ms`); when its record is at hand (`apply_agent_record`) that is what is printed, so the CLI,
  the console and the load-test report show one number under one label (`agent.stats.RESPONSE_LATENCY`).
* barge-in time to silence: caller starts talking over the bot -> the carrier gets ``clearAudio`` (playout stops).
* truncation error: what the agent told the model was heard - what the carrier really played of that answer.
* playout gaps: silent stretches inside one bot answer (the agent fell behind the line).
* carrier queue depth: bot audio accepted by the carrier but not yet played, sampled at each ``playAudio``.

Each figure is computed by :mod:`agent.testkit.analysis.measures`, the same code behind the bench's summaries.
Caller speech is found from the caller's own audio (energy per 20 ms frame), so WAV files, spoken lines and
tones are all measured the same way.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import numpy as np

from agent.testkit.analysis import measures
from agent.testkit.analysis.measures import Run
from agent.testkit.analysis.metrics import (
    AnalysisOptions,
    Answer,
    BargeIn,
    CallMetrics,
    FailureCause,
    Span,
    Truncation,
    apply_agent_record,
    failed_call,
)
from agent.testkit.analysis.timeline import end_reason_text, format_timeline, summary_lines
from agent.testkit.carrier import SimCall

__all__ = [
    "AnalysisOptions",
    "Answer",
    "BargeIn",
    "CallMetrics",
    "FailureCause",
    "Span",
    "Truncation",
    "analyze_call",
    "answer_time_ms",
    "apply_agent_record",
    "end_reason_text",
    "failed_call",
    "format_timeline",
    "summary_lines",
]
# Ends of the stream that mean the line went dead under the caller, not a deliberate hang-up or goodbye.
_DROPPED_ENDS = frozenset({"agent_closed", "network_drop", "stream_timeout", "error"})


def _caller_utterances(call: SimCall, opts: AnalysisOptions) -> list[Span]:
    """Loud 20 ms frames of the caller track, merged across short pauses, labelled by the script segment."""
    frame_ms = call.options.frame_ms
    track = call.caller_track()
    n = call.media_format.samples_per_frame(frame_ms)
    frames = len(track) // n
    if frames == 0:
        return []
    power = np.mean(np.square(track[: frames * n].reshape(frames, n).astype(np.float64)), axis=1)
    loud = np.flatnonzero(power >= opts.speech_rms**2)
    spans: list[Span] = []
    for index in loud.tolist():
        start, end = float(index * frame_ms), float((index + 1) * frame_ms)
        if spans and start - spans[-1].end_ms < opts.utterance_merge_ms:
            spans[-1].end_ms = end
        else:
            spans.append(Span(start_ms=start, end_ms=end))
    segments = [
        (e.detail["call_ms"], e.detail["label"])
        for e in call.timeline
        if e.kind == "caller_segment_started" and e.detail.get("kind") != "silence"
    ]
    starts = [s for s, _ in segments]
    kept = [s for s in spans if s.duration_ms >= opts.min_utterance_ms]
    for span in kept:
        i = bisect.bisect_right(starts, span.start_ms + frame_ms) - 1
        if i >= 0:
            span.label = str(segments[i][1])
    return kept


def _queue_depths(call: SimCall, runs: Sequence[Run]) -> list[float]:
    """Carrier queue (ms) right after each playAudio: received - dropped by clears - played so far."""
    events = sorted(
        [(e.t, "audio", float(e.detail.get("ms", 0.0))) for e in call.timeline if e.kind == "play_audio_received"]
        + [(c.t, "clear", c.queued_ms_dropped) for c in call.clears]
    )
    starts = [run.start for run in runs]
    depths: list[float] = []
    received = dropped = 0.0
    for t, kind, ms in events:
        if kind == "clear":
            dropped += ms
            continue
        received += ms
        i = bisect.bisect_left(starts, t) - 1  # the last run that began before now
        played = runs[i].played_at(t) if i >= 0 else 0.0
        depths.append(max(0.0, received - dropped - played))
    return depths


def _barge_ins(
    talk: Sequence[measures.TalkOver],
    found: Sequence[measures.Answer],
    truncations: Sequence[Truncation],
    ms: Callable[[float], float],
    window_s: float,
) -> list[BargeIn]:
    """Each time the caller talked over the bot and was heard (or plainly missed), with what the agent told the
    model it had played: the agent truncates right after sending clearAudio, so the model may see it before the
    carrier sees the clear; any truncation between the caller's first word and shortly after the clear counts."""
    out: list[BargeIn] = []
    used: set[int] = set()
    for over in talk:
        if over.clear is None:
            if over.missed:
                out.append(BargeIn(speech_ms=ms(over.onset), clear_ms=None, time_to_silence_ms=None))
            continue
        clear = over.clear
        answer = next((a for a in found if a.interrupted and a.start <= clear <= a.end + 0.001), None)
        barge = BargeIn(
            speech_ms=ms(over.onset),
            clear_ms=ms(clear),
            time_to_silence_ms=round(over.ms or 0.0, 1),
            heard_ms=round(answer.heard_ms, 1) if answer is not None else None,
        )
        trunc = next(
            (i for i, t in enumerate(truncations) if i not in used and over.onset <= t.t <= clear + window_s), None
        )
        if trunc is not None:
            used.add(trunc)
            barge.truncated_ms = truncations[trunc].audio_end_ms
            if answer is not None:
                played_at_clear = answer.runs[-1].played_after_ms
                error = measures.truncation_error_ms(
                    barge.truncated_ms, played_at_clear, answer.runs[0].played_before_ms
                )
                barge.truncation_error_ms = round(error, 1)
        out.append(barge)
    return out


def _failure(call: SimCall, m: CallMetrics) -> tuple[FailureCause | None, str]:
    if call.internal_errors:
        return "simulator_error", "; ".join(call.internal_errors)
    if call.protocol_errors:
        return "protocol_error", call.protocol_errors[0]
    if not m.answers:
        return "no_greeting", "no bot audio was ever played"
    if m.end_reason in _DROPPED_ENDS:
        return "stream_dropped", f"stream ended: {m.end_reason} (close code {call.close_code})"
    if m.unanswered_turns:
        return "no_response", f"{m.unanswered_turns} caller turn(s) got no answer"
    if m.missed_barge_ins:
        return "barge_in_missed", f"{m.missed_barge_ins} interruption(s) did not stop the bot"
    return None, ""


def analyze_call(
    call: SimCall,
    *,
    answer_ms: float | None = None,
    truncations: Sequence[Truncation] = (),
    scenario: str = "",
    failure: tuple[FailureCause, str] | None = None,
    options: AnalysisOptions | None = None,
) -> CallMetrics:
    """Measure a finished call; ``failure`` overrides the cause found from the call (e.g. a scenario check)."""
    opts = options or AnalysisOptions()
    t0 = measures.call_start(call)
    closed = next((e for e in call.timeline if e.kind == "ws_closed"), None)
    end_t = closed.t if closed else (call.timeline[-1].t if call.timeline else t0)

    def ms(t: float) -> float:
        return round((t - t0) * 1000, 1)

    utterances = _caller_utterances(call, opts)
    turns = [(t0 + u.start_ms / 1000, t0 + u.end_ms / 1000) for u in utterances]
    runs = measures.bot_runs(call, end_t)
    found = measures.answers(runs, onsets=[s for s, _ in turns], max_gap_s=opts.max_gap_ms / 1000)
    # With no bot audio at all the call is reported as "no greeting", not as many unanswered turns.
    latencies: list[float | None] = []
    unanswered = 0
    if found:
        timeout_s = opts.response_timeout_ms / 1000
        latencies, unanswered = measures.response_latencies(turns, [a.start for a in found], end_t, timeout_s)
    answers = [
        Answer(
            start_ms=ms(a.start),
            end_ms=ms(a.end),
            kind="greeting" if n == 0 else ("response" if latency is not None else "unprompted"),
            response_ms=None if latency is None else round(latency, 1),
            heard_ms=round(a.heard_ms, 1),
            interrupted=a.interrupted,
            gaps_ms=[round(g, 1) for g in a.gaps_ms()],
        )
        for n, (a, latency) in enumerate(zip(found, latencies or [None] * len(found), strict=True))
    ]
    clears = [c.t for c in call.clears]
    window_s = opts.barge_window_ms / 1000
    talk = measures.talk_over(
        [s for s, _ in turns], found, clears, window_s=window_s, missed_s=opts.barge_missed_ms / 1000
    )
    barges = _barge_ins(talk, found, sorted(truncations, key=lambda t: t.t), ms, window_s)
    depths = _queue_depths(call, runs)
    m = CallMetrics(
        call_uuid=call.call_uuid,
        scenario=scenario,
        end_reason=call.end_reason,
        duration_ms=ms(end_t),
        answer_ms=None if answer_ms is None else round(answer_ms, 1),
        greeting_ms=answers[0].start_ms if answers else None,
        response_ms=[a.response_ms for a in answers if a.response_ms is not None],
        barge_in_ms=[b.time_to_silence_ms for b in barges if b.time_to_silence_ms is not None],
        truncation_error_ms=[b.truncation_error_ms for b in barges if b.truncation_error_ms is not None],
        playout_gaps_ms=[g for a in answers for g in a.gaps_ms],
        queue_max_ms=round(max(depths), 1) if depths else None,
        queue_avg_ms=round(sum(depths) / len(depths), 1) if depths else None,
        bot_heard_ms=round(measures.heard_total_ms(call), 1),
        unanswered_turns=unanswered,
        missed_barge_ins=sum(1 for b in barges if b.clear_ms is None),
        caller=utterances,
        answers=answers,
        barge_ins=barges,
        clears_ms=[ms(t) for t in clears],
        end_ms=ms(end_t) if closed else None,
        after_stream=[a.verb for a in call.after_stream],
        protocol_errors=list(call.protocol_errors),
        webhook_errors=[
            f"{w.event} {w.method} {w.url}: {w.error or f'HTTP {w.status}'}"
            for w in call.webhooks
            if w.status is None or w.status >= 400
        ],
        warnings=list(call.warnings),
    )
    cause, detail = failure if failure is not None else _failure(call, m)
    m.ok, m.failure, m.failure_detail = cause is None, cause, detail
    return m


def answer_time_ms(call: SimCall, responded_at: float | None) -> float | None:
    """Answer webhook sent -> response received, from the carrier's webhook record and a response timestamp."""
    sent = next((w.t for w in call.webhooks if w.event == "StartApp"), None)
    return None if sent is None or responded_at is None else (responded_at - sent) * 1000
