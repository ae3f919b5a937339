"""The one place each call figure is defined: playout runs and gaps, answers, response latency, talk-over,
barge-in reaction and truncation error.

The per-call report (:mod:`agent.testkit.analysis.call`, behind ``voice-agent call/eval/loadtest``) and the
bench's per-hop summaries (:mod:`agent.testkit.analysis.hops`) both compute their figures here, so a number
printed under one name means the same thing in both. Times are ``time.monotonic()`` seconds (one clock for the
carrier, the engine and the agent on Linux); durations come back in milliseconds.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.testkit.carrier import SimCall

RAN_DRY = "queue empty"  # the carrier's reason when a playout tick found no audio
CLEARED = "clearAudio"


@dataclass(frozen=True)
class Run:
    """Bot audio playing on the line without a break, with the call's heard total (ms) at its start and end.

    ``start`` is the tick that began it, on the carrier's schedule. A run that ran dry ends at the first silent
    tick of that schedule (a late tick records the stop late, never early); one cut off by ``clearAudio`` or the
    stream's end ends at that moment. Heard audio can be less than the run's length: a tick that got only part
    of a frame plays it short.
    """

    start: float
    end: float
    played_before_ms: float
    played_after_ms: float
    ended_by: str  # RAN_DRY, CLEARED, another carrier reason, or "" while still playing at the call's end

    @property
    def ran_dry(self) -> bool:
        return self.ended_by == RAN_DRY

    @property
    def cleared(self) -> bool:
        return self.ended_by == CLEARED

    def played_at(self, t: float) -> float:
        """Heard total at time ``t`` inside the run, assuming even playout across it."""
        if self.end <= self.start:
            return self.played_after_ms
        share = min(1.0, max(0.0, (t - self.start) / (self.end - self.start)))
        return self.played_before_ms + share * (self.played_after_ms - self.played_before_ms)


def call_start(call: SimCall) -> float:
    """The call clock's zero: when the carrier sent ``start`` (the first event if it never did)."""
    start = next((e for e in call.timeline if e.kind == "start_sent"), None)
    return start.t if start else (call.timeline[0].t if call.timeline else 0.0)


def heard_total_ms(call: SimCall) -> float:
    return call.played.size * 1000 / (call.played_rate or call.media_format.rate)


def bot_runs(call: SimCall, end_t: float | None = None) -> list[Run]:
    """The carrier's playout runs, from its timeline; a run still open is closed at ``end_t`` (the call's end)."""
    t0 = call_start(call)
    frame_s = call.options.frame_ms / 1000
    runs: list[Run] = []
    open_at: float | None = None
    for e in call.timeline:
        if e.kind == "bot_audio_started":
            open_at = t0 + float(e.detail["call_ms"]) / 1000
        elif e.kind == "bot_audio_stopped" and open_at is not None:
            # Nothing plays between runs, so this one starts where the last ended (the event's own played_ms
            # may already include part of the frame now playing when the tick ran late).
            before = runs[-1].played_after_ms if runs else 0.0
            after = float(e.detail["played_ms"])
            reason = str(e.detail.get("reason", ""))
            if reason == RAN_DRY:
                frames = math.ceil((after - before) / (frame_s * 1000) - 1e-6)
                end = open_at + frames * frame_s
            else:
                end = e.t
            runs.append(Run(open_at, max(open_at, end), before, after, reason))
            open_at = None
    if open_at is not None:
        before = runs[-1].played_after_ms if runs else 0.0
        last = end_t if end_t is not None else (call.timeline[-1].t if call.timeline else open_at)
        runs.append(Run(open_at, max(open_at, last), before, heard_total_ms(call), ""))
    return runs


@dataclass
class Answer:
    """Consecutive runs of one bot answer; the silences between them are playout gaps."""

    runs: list[Run]

    @property
    def start(self) -> float:
        return self.runs[0].start

    @property
    def end(self) -> float:
        return self.runs[-1].end

    @property
    def interrupted(self) -> bool:
        return self.runs[-1].cleared

    @property
    def heard_ms(self) -> float:
        return self.runs[-1].played_after_ms - self.runs[0].played_before_ms

    def gap_spans(self) -> list[tuple[float, float]]:
        """(the carrier ran dry, the answer went on) for each playout gap inside the answer."""
        return [(a.end, b.start) for a, b in itertools.pairwise(self.runs)]

    def gaps_ms(self) -> list[float]:
        return [(b - a) * 1000 for a, b in self.gap_spans()]


def answers(
    runs: Sequence[Run],
    *,
    onsets: Sequence[float] = (),
    response_starts: Sequence[float] | None = None,
    max_gap_s: float = 1.0,
) -> list[Answer]:
    """Group runs into answers. A run continues the answer before it when that one ran dry (not cleared) and
    no new response began: known exactly from ``response_starts`` (when each response's first audio reached the
    carrier) when the engine's record is at hand; otherwise the silence was shorter than ``max_gap_s`` and the
    caller did not start speaking during it (``onsets``)."""
    out: list[Answer] = []
    starts = sorted(response_starts) if response_starts is not None else None
    onset_list = sorted(onsets)
    for run in runs:
        if out and out[-1].runs[-1].ran_dry:
            prev = out[-1].runs[-1]
            if starts is not None:
                k = bisect.bisect_right(starts, prev.end)
                same = not (k < len(starts) and starts[k] <= run.start + 0.001)
            else:
                spoke = bisect.bisect_left(onset_list, prev.end) < bisect.bisect_left(onset_list, run.start)
                same = run.start - prev.end < max_gap_s and not spoke
            if same:
                out[-1].runs.append(run)
                continue
        out.append(Answer([run]))
    return out


def response_latencies(
    turns: Sequence[tuple[float, float]], answer_starts: Sequence[float], end_t: float, timeout_s: float
) -> tuple[list[float | None], int]:
    """Response latency: the end of the caller's last utterance (start, end) before an answer -> that answer
    starts playing at the carrier, in ms per answer (None: the greeting, which is the first answer, or
    unprompted, or the caller was still talking); and how many utterances got no answer within ``timeout_s``
    while the call went on that long."""
    answered: set[int] = set()
    out: list[float | None] = [None] if answer_starts else []
    for start in answer_starts[1:]:
        # The caller's last utterance that had ended by now (even one said over the bot and not acted on at
        # once: the caller still waited from its end), with nobody still talking when the bot starts.
        candidates = [j for j, (_, u_end) in enumerate(turns) if u_end <= start]
        talking = any(u_start < start < u_end for u_start, u_end in turns)
        if candidates and not talking and candidates[-1] not in answered:
            answered.add(candidates[-1])
            out.append((start - turns[candidates[-1]][1]) * 1000)
        else:
            out.append(None)
    unanswered = sum(
        1
        for u_start, u_end in turns
        if u_end + timeout_s <= end_t and not any(u_start < a <= u_end + timeout_s for a in answer_starts)
    )
    return out, unanswered


@dataclass(frozen=True)
class TalkOver:
    """The caller started speaking while the bot's answer played (``onset``); ``clear``: the ``clearAudio``
    that silenced it, None when none came within the window."""

    onset: float
    clear: float | None
    answer: Answer
    missed: bool  # no clear, and the bot kept talking long enough that the caller was plainly not heard

    @property
    def ms(self) -> float | None:
        """How long the bot talked over the caller."""
        return None if self.clear is None else (self.clear - self.onset) * 1000


def talk_over(
    onsets: Sequence[float],
    answer_list: Sequence[Answer],
    clears: Sequence[float],
    *,
    window_s: float = 2.0,
    missed_s: float = 1.5,
) -> list[TalkOver]:
    """Caller speech that began while an answer played (its playout gaps included: talking during a short gap
    is still talking over the bot), each matched with the first unused clear within ``window_s`` after it.
    Whatever detected the speech (the model's VAD or the agent's own onset detector) counts: the onset is when
    the caller's speech begins on their track, which only the caller side knows."""
    out: list[TalkOver] = []
    used: set[int] = set()
    for onset in sorted(onsets):
        playing = next((a for a in answer_list if a.start <= onset < a.end), None)
        if playing is None:
            continue
        match = next((i for i, c in enumerate(clears) if i not in used and onset <= c <= onset + window_s), None)
        if match is not None:
            used.add(match)
        clear = clears[match] if match is not None else None
        out.append(TalkOver(onset, clear, playing, clear is None and playing.end - onset >= missed_s))
    return out


def barge_in_reaction(
    speech_started: Sequence[float],
    clears: Sequence[float],
    bot_on: Callable[[float], bool],
    *,
    window_s: float = 1.0,
    early_s: float = 1.0,
) -> list[tuple[int | None, bool]]:
    """Per ``speech_started`` (the model's VAD): the index of the clear that answered it, or None, and whether
    the bot was playing. A clear answers the latest speech_started before it, never one after the next one; an
    early barge-in (the agent's onset detector) may clear up to ``early_s`` before the model speaks up. The
    reaction time is ``clears[i] - speech_started`` (negative: early)."""
    out: list[tuple[int | None, bool]] = []
    speech = sorted(speech_started)
    used = -1  # each clear answers one speech_started
    for n, t_s in enumerate(speech):
        i = max(bisect.bisect_left(clears, t_s - early_s), used + 1)
        until = min(t_s + window_s, speech[n + 1] if n + 1 < len(speech) else math.inf)
        cleared = i < len(clears) and clears[i] <= until
        # Was the bot talking when the caller interrupted (at the clear, if that came first)?
        on = bot_on(min(t_s, clears[i] - 0.001) if cleared else t_s)
        if cleared:
            used = i
        out.append((i if cleared else None, on))
    return out


def truncation_error_ms(audio_end_ms: float, played_at_clear_ms: float, played_at_answer_start_ms: float) -> float:
    """What the agent told the model the caller heard of the interrupted answer, minus what the carrier really
    played of it by the clear (< 0: the model was told less than was heard)."""
    return audio_end_ms - (played_at_clear_ms - played_at_answer_start_ms)
