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

Caller speech is found from the caller's own audio (energy per 20 ms frame), so WAV files, spoken lines and
tones are all measured the same way.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from agent.stats import RESPONSE_LATENCY
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
    "apply_agent_record",
    "failed_call",
    "format_timeline",
]

FailureCause = Literal[
    "answer_failed",
    "rejected",
    "stream_failed",
    "simulator_error",
    "protocol_error",
    "no_greeting",
    "stream_dropped",
    "no_response",
    "barge_in_missed",
    "scenario_failed",
    "timeout",
]
# Ends of the stream that mean the line went dead under the caller, not a deliberate hang-up or goodbye.
_DROPPED_ENDS = frozenset({"agent_closed", "network_drop", "stream_timeout", "error"})


@dataclass(frozen=True)
class AnalysisOptions:
    """Thresholds of the analysis; the defaults suit phone speech, tones and eSpeak lines alike."""

    speech_rms: float = 300.0  # int16 RMS of a 20 ms caller frame that counts as speech (about -40 dBFS)
    utterance_merge_ms: float = 300.0  # pauses shorter than this stay inside one caller utterance
    min_utterance_ms: float = 100.0  # shorter bursts are clicks, not turns
    max_gap_ms: float = 1000.0  # silence inside one bot answer longer than this starts a new answer
    response_timeout_ms: float = 8000.0  # a caller turn with no bot answer within this is unanswered
    barge_window_ms: float = 2000.0  # a clearAudio later than this after the caller started is not a reaction
    barge_missed_ms: float = 1500.0  # bot still talking this long after being interrupted, with no clear


@dataclass(frozen=True)
class Truncation:
    """What the agent told the model was heard when it cut an answer short (engine or agent side)."""

    t: float  # time.monotonic() when the truncate happened (same clock as the carrier timeline)
    audio_end_ms: float


class Span(BaseModel):
    start_ms: float
    end_ms: float
    label: str = ""

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


class Answer(BaseModel):
    """One bot answer as the caller heard it; ``gaps_ms`` are the silences inside it."""

    start_ms: float
    end_ms: float
    kind: Literal["greeting", "response", "unprompted"]
    response_ms: float | None = None
    heard_ms: float = 0.0
    interrupted: bool = False
    gaps_ms: list[float] = Field(default_factory=list)
    text: str | None = None  # filled by a recogniser when one is used


class BargeIn(BaseModel):
    speech_ms: float  # the caller started talking over the bot
    clear_ms: float | None  # the carrier got clearAudio (None: missed)
    time_to_silence_ms: float | None
    heard_ms: float | None = None  # of the interrupted answer, per the carrier
    truncated_ms: float | None = None  # per the agent/model
    truncation_error_ms: float | None = None


class CallMetrics(BaseModel):
    """Everything measured on one call; plain data, JSON-able, mergeable across processes and machines."""

    call_uuid: str
    scenario: str = ""
    index: int | None = None  # position in a load test
    started_at: float | None = None  # epoch seconds when the call was placed
    ok: bool = True
    failure: FailureCause | None = None
    failure_detail: str = ""
    end_reason: str | None = None
    duration_ms: float = 0.0
    answer_ms: float | None = None
    greeting_ms: float | None = None
    response_ms: list[float] = Field(default_factory=list)
    barge_in_ms: list[float] = Field(default_factory=list)
    truncation_error_ms: list[float] = Field(default_factory=list)
    playout_gaps_ms: list[float] = Field(default_factory=list)
    queue_max_ms: float | None = None
    queue_avg_ms: float | None = None
    bot_heard_ms: float = 0.0
    unanswered_turns: int = 0
    missed_barge_ins: int = 0
    caller: list[Span] = Field(default_factory=list)
    answers: list[Answer] = Field(default_factory=list)
    barge_ins: list[BargeIn] = Field(default_factory=list)
    clears_ms: list[float] = Field(default_factory=list)
    end_ms: float | None = None  # the stream closed
    after_stream: list[str] = Field(default_factory=list)  # XML verbs Vobiz ran after the stream
    protocol_errors: list[str] = Field(default_factory=list)
    webhook_errors: list[str] = Field(default_factory=list)  # the agent answered a webhook with an error
    warnings: list[str] = Field(default_factory=list)
    # From the agent's own record of the call, when it could be read (in-process, or through the console).
    agent_response_ms: list[float] | None = None
    agent_end_reason: str | None = None


def apply_agent_record(m: CallMetrics, record: Mapping[str, Any]) -> None:
    """Take the agent's stored figures (a `CallRecord.to_dict()`, or the console's JSON of one): its response
    latency per answer and its end reason, which are what the console shows for this call."""
    turns = record.get("turns") or []
    m.agent_response_ms = [
        round(float(t["latency_ms"]), 1)
        for t in turns
        if isinstance(t, Mapping) and t.get("speaker") == "assistant" and t.get("latency_ms") is not None
    ]
    reason = record.get("end_reason")
    m.agent_end_reason = str(reason) if reason else None


def failed_call(call_uuid: str, cause: FailureCause, detail: str, scenario: str = "") -> CallMetrics:
    """A call that never got as far as a stream (or broke the simulator): only the cause is known."""
    return CallMetrics(call_uuid=call_uuid, scenario=scenario, ok=False, failure=cause, failure_detail=detail)


# ----------------------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Interval:
    """Bot audio playing on the line without a break, with the call's heard total (ms) at its start and end.

    Heard audio can be less than the interval's length: a tick that got only part of a frame plays it short.
    """

    start_ms: float
    end_ms: float
    played_before_ms: float
    played_after_ms: float
    cleared: bool

    def played_at(self, ms: float) -> float:
        """Heard total at call time ``ms`` inside the interval, assuming even playout across it."""
        if self.end_ms <= self.start_ms:
            return self.played_after_ms
        share = min(1.0, max(0.0, (ms - self.start_ms) / (self.end_ms - self.start_ms)))
        return self.played_before_ms + share * (self.played_after_ms - self.played_before_ms)


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


def _heard_total_ms(call: SimCall) -> float:
    return call.played.size * 1000 / (call.played_rate or call.media_format.rate)


def _bot_intervals(call: SimCall, t0: float, end_t: float) -> list[_Interval]:
    """Playout runs on the carrier's 20 ms tick grid; a run that ran dry ended at the tick that found nothing."""
    frame_ms = call.options.frame_ms
    intervals: list[_Interval] = []
    open_: _Interval | None = None
    for e in call.timeline:
        if e.kind == "bot_audio_started":
            # Nothing plays between intervals, so this one starts where the last ended (the event's own
            # played_ms may already include part of the frame now playing when the tick ran late).
            played = intervals[-1].played_after_ms if intervals else 0.0
            open_ = _Interval(float(e.detail["call_ms"]), math.inf, played, played, False)
        elif e.kind == "bot_audio_stopped" and open_ is not None:
            open_.played_after_ms = float(e.detail["played_ms"])
            if e.detail.get("reason") == "queue empty":
                # The first silent tick, on the tick grid: a late tick records the stop late, never early.
                frames = math.ceil((open_.played_after_ms - open_.played_before_ms) / frame_ms - 1e-6)
                end_ms = open_.start_ms + frames * frame_ms
            else:  # clearAudio or the stream ending cut the audio off at that moment
                end_ms = (e.t - t0) * 1000
            open_.end_ms = max(open_.start_ms, end_ms)
            open_.cleared = e.detail.get("reason") == "clearAudio"
            intervals.append(open_)
            open_ = None
    if open_ is not None:
        open_.end_ms = (end_t - t0) * 1000
        open_.played_after_ms = _heard_total_ms(call)
        intervals.append(open_)
    return intervals


def _answers(intervals: list[_Interval], utterances: list[Span], opts: AnalysisOptions) -> list[Answer]:
    """Group playout intervals into answers: a new answer needs a clear, a caller turn or a long silence."""
    out: list[Answer] = []
    first_played = 0.0  # the call's heard total when the current answer began
    utter_starts = [u.start_ms for u in utterances]
    for iv in intervals:
        if out:
            last = out[-1]
            gap = iv.start_ms - last.end_ms
            spoke = bisect.bisect_left(utter_starts, last.end_ms) < bisect.bisect_left(utter_starts, iv.start_ms)
            if not last.interrupted and gap < opts.max_gap_ms and not spoke:
                last.gaps_ms.append(round(gap, 1))
                last.end_ms, last.interrupted = iv.end_ms, iv.cleared
                last.heard_ms = round(iv.played_after_ms - first_played, 1)
                continue
        first_played = iv.played_before_ms
        kind: Literal["greeting", "response", "unprompted"] = "response" if out else "greeting"
        heard = round(iv.played_after_ms - first_played, 1)
        out.append(Answer(start_ms=iv.start_ms, end_ms=iv.end_ms, kind=kind, interrupted=iv.cleared, heard_ms=heard))
    return out


def _link_responses(answers: list[Answer], utterances: list[Span], call_end_ms: float, opts: AnalysisOptions) -> int:
    """Set response times; return how many caller turns got no answer while the call went on long enough."""
    answered: set[int] = set()
    for answer in answers:
        if answer.kind == "greeting":
            continue
        # The caller's last utterance that had ended by now (even one said over the bot and not acted on at
        # once: the caller still waited from its end), with nobody still talking when the bot starts.
        candidates = [j for j, u in enumerate(utterances) if u.end_ms <= answer.start_ms]
        talking = any(u.start_ms < answer.start_ms < u.end_ms for u in utterances)
        if candidates and not talking and candidates[-1] not in answered:
            answered.add(candidates[-1])
            answer.response_ms = round(answer.start_ms - utterances[candidates[-1]].end_ms, 1)
        else:
            answer.kind = "unprompted"
    timeout = opts.response_timeout_ms
    return sum(
        1
        for u in utterances
        if u.end_ms + timeout <= call_end_ms and not any(u.start_ms < a.start_ms <= u.end_ms + timeout for a in answers)
    )


def _queue_depths(call: SimCall, t0: float, intervals: list[_Interval]) -> list[float]:
    """Carrier queue (ms) right after each playAudio: received - dropped by clears - played so far."""
    events = sorted(
        [(e.t, "audio", float(e.detail.get("ms", 0.0))) for e in call.timeline if e.kind == "play_audio_received"]
        + [(c.t, "clear", c.queued_ms_dropped) for c in call.clears]
    )
    starts = [iv.start_ms for iv in intervals]
    depths: list[float] = []
    received = dropped = 0.0
    for t, kind, ms in events:
        if kind == "clear":
            dropped += ms
            continue
        received += ms
        now_ms = (t - t0) * 1000
        i = bisect.bisect_left(starts, now_ms) - 1  # the last interval that began before now
        played = intervals[i].played_at(now_ms) if i >= 0 else 0.0
        depths.append(max(0.0, received - dropped - played))
    return depths


def _barge_ins(
    utterances: list[Span],
    answers: list[Answer],
    clears: list[float],
    truncations: Sequence[tuple[float, float]],
    opts: AnalysisOptions,
) -> list[BargeIn]:
    """Caller speech that began while bot audio played, each matched with the clear that silenced it."""
    out: list[BargeIn] = []
    used_clears: set[int] = set()
    used_truncs: set[int] = set()
    for u in utterances:
        # Talking during a short playout gap is still talking over the bot: answers span their gaps.
        playing = next((a for a in answers if a.start_ms <= u.start_ms < a.end_ms), None)
        if playing is None:
            continue
        match = next(
            (
                i
                for i, c_ms in enumerate(clears)
                if i not in used_clears and u.start_ms <= c_ms <= u.start_ms + opts.barge_window_ms
            ),
            None,
        )
        if match is None:
            if playing.end_ms - u.start_ms >= opts.barge_missed_ms:
                out.append(BargeIn(speech_ms=u.start_ms, clear_ms=None, time_to_silence_ms=None))
            continue
        used_clears.add(match)
        clear_ms = clears[match]
        answer = next((a for a in answers if a.interrupted and a.start_ms <= clear_ms <= a.end_ms + 1), None)
        heard = answer.heard_ms if answer is not None else None
        barge = BargeIn(
            speech_ms=u.start_ms,
            clear_ms=round(clear_ms, 1),
            time_to_silence_ms=round(clear_ms - u.start_ms, 1),
            heard_ms=heard,
        )
        # The agent truncates right after sending clearAudio, so the model may see it before the carrier sees
        # the clear: any truncation between the caller's first word and shortly after the clear belongs here.
        trunc = next(
            (
                i
                for i, (t_ms, _) in enumerate(truncations)
                if i not in used_truncs and u.start_ms <= t_ms <= clear_ms + opts.barge_window_ms
            ),
            None,
        )
        if trunc is not None:
            used_truncs.add(trunc)
            barge.truncated_ms = truncations[trunc][1]
            if heard is not None:
                barge.truncation_error_ms = round(barge.truncated_ms - heard, 1)
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
    start = next((e for e in call.timeline if e.kind == "start_sent"), None)
    t0 = start.t if start else (call.timeline[0].t if call.timeline else 0.0)
    closed = next((e for e in call.timeline if e.kind == "ws_closed"), None)
    end_t = closed.t if closed else (call.timeline[-1].t if call.timeline else t0)

    def ms(t: float) -> float:
        return round((t - t0) * 1000, 1)

    utterances = _caller_utterances(call, opts)
    intervals = _bot_intervals(call, t0, end_t)
    answers = _answers(intervals, utterances, opts)
    # With no bot audio at all the call is reported as "no greeting", not as many unanswered turns.
    unanswered = _link_responses(answers, utterances, ms(end_t), opts) if answers else 0
    clears = [ms(c.t) for c in call.clears]
    truncs = [(ms(t.t), t.audio_end_ms) for t in truncations]
    barges = _barge_ins(utterances, answers, clears, truncs, opts)
    depths = _queue_depths(call, t0, intervals)
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
        bot_heard_ms=round(_heard_total_ms(call), 1),
        unanswered_turns=unanswered,
        missed_barge_ins=sum(1 for b in barges if b.clear_ms is None),
        caller=utterances,
        answers=answers,
        barge_ins=barges,
        clears_ms=clears,
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


# ----------------------------------------------------------------------------------------------------------
# The human timeline
# ----------------------------------------------------------------------------------------------------------


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
