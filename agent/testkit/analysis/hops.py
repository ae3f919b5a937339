"""Match what the carrier saw with what the engine saw, and turn it into per-hop numbers.

All timestamps are ``time.monotonic()`` (CLOCK_MONOTONIC), which is one clock for every process on Linux, so
a carrier timestamp in the bench process and an engine timestamp in the engine process can be subtracted.

Matching (μ-law): caller frames by the digest of their 160 bytes (the agent forwards them unchanged, possibly
several per append); responses by the base64 prefix of their first audio delta, found again in the first
``playAudio`` of that response. For L16 the bytes change on the way (resampling), so sessions are paired with
calls by opening order, frames by audio duration (a frame has arrived once the model audio so far covers its end,
so resampler buffering counts) and responses by time; those numbers are marked approximate.

The call figures themselves (answers and playout gaps, talk-over, barge-in reaction, truncation error) are
computed by :mod:`agent.testkit.analysis.measures`, as for the per-call report; this module supplies what only
the engine's record tells: which response each playout belongs to and when the model heard the caller.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.audio.codecs import pcm16_to_mulaw
from agent.stats import summary
from agent.testkit.analysis import measures
from agent.testkit.analysis.measures import Run
from agent.testkit.bench.wire import FRAME_MS, frame_key, is_mulaw
from agent.testkit.carrier import SimCall

BARGE_WINDOW_S = 1.0  # a clearAudio later than this after speech_started is not a reaction to it
EARLY_S = 1.0  # with AGENT_EARLY_BARGE_IN the clear may come up to this long before the model's speech_started
STARTUP_S = 1.0  # caller frames this early in a call wait for the model session: reported apart
TAIL_GRACE_S = 0.5  # frames sent this close to the hang-up may legitimately never reach the model
# L16 frames are matched by duration: frame k has reached the model once the model audio appended so far covers
# the end of frame k. The resampler's buffering (soxr "LQ" emits 8 kHz input in 37.5 ms blocks) counts as latency.
L16_ROUNDING_MS = 1.0


def stats(values: Iterable[float]) -> dict[str, float | int | None]:
    """n, p50, p95, p99, max and mean of one hop, in ms to the microsecond (:func:`agent.stats.summary`)."""
    return summary(list(values), digits=3)


@dataclass
class CallResult:
    """What the analysis needs of one call; plain data, JSON-able."""

    index: int
    call_uuid: str = ""
    error: str | None = None
    answer_t: float | None = None
    start_t: float | None = None
    end_t: float | None = None
    end_reason: str | None = None
    frames: list[tuple[float, str | None]] = field(default_factory=list)  # (sent at, digest) per media frame
    plays: list[tuple[float, str]] = field(default_factory=list)  # (received at, payload prefix) per playAudio
    clears: list[tuple[float, float, float]] = field(default_factory=list)  # (t, played ms at clear, dropped ms)
    runs: list[Run] = field(default_factory=list)  # bot audio playing without a break (measures.bot_runs)
    turns: dict[str, int] = field(default_factory=dict)
    playout_lag_ms: list[float] = field(default_factory=list)  # how late the sim's playout ticks ran
    webhook_failures: list[str] = field(default_factory=list)  # "<event>: HTTP <status>" for non-2xx answers
    played_ms: float = 0.0
    checkpoints: dict[str, int] = field(default_factory=dict)
    protocol_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    internal_errors: list[str] = field(default_factory=list)
    speech_at: list[float] = field(default_factory=list)  # when each caller utterance begins on the caller's track


def summarize_call(
    index: int,
    call: SimCall,
    plays: list[tuple[float, str]] | None,
    turns: Counter[str],
    speech_ms: Sequence[float] = (),
) -> CallResult:
    """Boil a finished call down to what the matching needs (timestamps, frame digests, playAudio prefixes)."""
    res = CallResult(index, call.call_uuid)
    res.answer_t = call.webhooks[0].t if call.webhooks else None
    mulaw = is_mulaw(call.media_format.content_type)
    track = call.caller_track()
    n = call.media_format.samples_per_frame(call.options.frame_ms)
    for entry in call.timeline:
        kind = entry.kind
        if kind == "frame_sent":
            k = int(entry.detail["chunk"]) - 1
            key = frame_key(pcm16_to_mulaw(track[k * n : (k + 1) * n])) if mulaw else None
            res.frames.append((entry.t, key))
        elif kind == "bot_audio_started":
            if res.start_t is not None and "call_ms" in entry.detail:
                res.playout_lag_ms.append((entry.t - res.start_t) * 1000 - float(entry.detail["call_ms"]))
        elif kind == "start_sent":
            res.start_t = entry.t
        elif kind == "ws_closed":
            res.end_t = entry.t
    # Without the tap, fall back to arrival times alone (responses are then matched by time, not bytes).
    res.plays = plays if plays is not None else [(e.t, "") for e in call.timeline if e.kind == "play_audio_received"]
    res.clears = [(c.t, c.played_ms_at_clear, c.queued_ms_dropped) for c in call.clears]
    res.runs = measures.bot_runs(call, res.end_t)
    res.turns = dict(turns)
    res.end_reason = call.end_reason
    res.played_ms = call.played_ms
    res.checkpoints = {
        "received": len(call.received_checkpoints),
        "acked": len(call.acked_checkpoints),
        "dropped": len(call.dropped_checkpoints),
    }
    res.webhook_failures = [
        f"{w.event}: {f'HTTP {w.status}' if w.status is not None else w.error}"
        for w in call.webhooks
        if w.status is None or w.status >= 400
    ]
    if res.start_t is not None:
        res.speech_at = [res.start_t + ms / 1000 for ms in speech_ms if ms < len(res.frames) * call.options.frame_ms]
    res.protocol_errors = list(call.protocol_errors)
    res.warnings = list(call.warnings)
    res.internal_errors = list(call.internal_errors)
    return res


@dataclass
class Matched:
    """Everything derived for one side (baseline or agent)."""

    session_call: dict[int, int] = field(default_factory=dict)  # session index -> call index
    frame_ms: list[float] = field(default_factory=list)  # caller frames after the first STARTUP_S of the call
    startup_frame_ms: list[float] = field(default_factory=list)  # caller frames in the first STARTUP_S
    delta_ms: list[float] = field(default_factory=list)  # every response but the greeting
    greeting_delta_ms: list[float] = field(default_factory=list)  # the first response of each session
    barge_ms: list[float] = field(default_factory=list)  # speech_started -> clearAudio (< 0: early barge-in)
    onset_clear_ms: list[float] = field(default_factory=list)  # the caller starts talking -> clearAudio
    trunc_err_ms: list[float] = field(default_factory=list)
    trunc_signed_ms: list[float] = field(default_factory=list)  # < 0: the model was told less than was heard
    gaps_ms: list[float] = field(default_factory=list)
    answers: dict[int, list[measures.Answer]] = field(default_factory=dict)  # call -> its bot answers
    gap_spans: list[tuple[float, float]] = field(default_factory=list)  # (carrier ran dry, audio resumed)
    gap_where: list[tuple[int, float, float]] = field(default_factory=list)  # (call, s into the call, gap ms)
    # Per gap: when the engine sent the audio the carrier ran out of (None: not known, e.g. L16)
    gap_audio_sent: list[float | None] = field(default_factory=list)
    # call -> (first playAudio at the carrier, the engine's [send time, audio ms so far] per delta) per response
    call_responses: dict[int, list[tuple[float, list[list[float]]]]] = field(default_factory=dict)
    send_lag_ms: list[float] = field(default_factory=list)  # caller frame sent vs its schedule (back-pressure)
    playout_lag_ms: list[float] = field(default_factory=list)  # the sim's playout ticks vs their schedule
    response_starts: dict[int, list[float]] = field(default_factory=dict)  # call -> first playAudio times
    item_first_play: dict[tuple[int, str], float] = field(default_factory=dict)  # (session, item) -> t
    unmatched_responses: Counter[int] = field(default_factory=Counter)  # call -> responses not found
    speech_clear: dict[tuple[int, int], int] = field(default_factory=dict)  # (session, speech #) -> clear #
    counts: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    outliers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _pair_sessions_by_frames(calls: Sequence[CallResult], sessions: Sequence[dict[str, Any]], m: Matched) -> None:
    """Digest -> (call, sent at); pairs sessions with calls by majority of matched frames; records latencies."""
    seen: dict[str, tuple[int, float, bool]] = {}
    dup: set[str] = set()
    for call in calls:
        startup_end = (call.start_t or 0.0) + STARTUP_S
        for t, key in call.frames:
            if key is None:
                continue
            if key in seen:
                dup.add(key)
            else:
                seen[key] = (call.index, t, t < startup_end)
    for key in dup:
        seen.pop(key, None)
    m.counts["frames_ambiguous"] = len(dup)
    delivered: set[str] = set()
    worst: list[dict[str, Any]] = []
    for s_idx, sess in enumerate(sessions):
        votes: Counter[int] = Counter()
        for t_append, _nbytes, keys in sess["appends"]:
            m.counts["appends"] += 1
            m.counts["append_frames"] += len(keys)
            if len(keys) > 1:
                m.counts["appends_batched"] += 1
            for key in keys:
                hit = seen.get(key)
                if hit is None:
                    m.counts["append_frames_unknown"] += 1
                    continue
                if key in delivered:
                    m.counts["frames_delivered_twice"] += 1
                    continue
                delivered.add(key)
                call_idx, t_sent, startup = hit
                votes[call_idx] += 1
                lat = (t_append - t_sent) * 1000
                if startup:
                    m.startup_frame_ms.append(lat)
                    continue
                m.frame_ms.append(lat)
                worst.append({"ms": round(lat, 1), "call": call_idx, "session": sess["id"], "t": t_sent})
        if votes:
            m.session_call[s_idx] = votes.most_common(1)[0][0]
    worst.sort(key=lambda x: -float(x["ms"]))
    m.outliers["caller_to_model"] = worst[:5]
    for call in calls:
        end = call.end_t or math.inf
        for t, key in call.frames:
            if key is not None and key not in delivered and key not in dup and t < end - TAIL_GRACE_S:
                m.counts["frames_lost"] += 1


def _pair_sessions_by_order(calls: Sequence[CallResult], sessions: Sequence[dict[str, Any]], m: Matched) -> None:
    placed = sorted((c for c in calls if c.answer_t is not None), key=lambda c: c.answer_t or 0.0)
    opened = sorted(range(len(sessions)), key=lambda i: sessions[i].get("opened") or math.inf)
    if len(placed) != len(opened):
        m.notes.append(f"{len(opened)} engine sessions for {len(placed)} calls: pairing by order is unreliable")
    for s_idx, placed_call in zip(opened, placed, strict=False):
        m.session_call[s_idx] = placed_call.index


def _frames_by_duration(calls: Sequence[CallResult], sessions: Sequence[dict[str, Any]], m: Matched) -> None:
    by_index = {c.index: c for c in calls}
    for s_idx, sess in enumerate(sessions):
        call = by_index.get(m.session_call.get(s_idx, -1))
        if call is None:
            continue
        bytes_per_ms = 8.0 if sess["input_format"] in ("audio/pcmu", "audio/pcma") else 48.0
        cum_ms: list[float] = []
        times: list[float] = []
        total = 0.0
        for t_append, nbytes, _keys in sess["appends"]:
            m.counts["appends"] += 1
            total += nbytes / bytes_per_ms
            cum_ms.append(total)
            times.append(t_append)
        for k, (t_sent, _key) in enumerate(call.frames):
            i = bisect.bisect_left(cum_ms, (k + 1) * FRAME_MS - L16_ROUNDING_MS)
            if i >= len(cum_ms):
                if t_sent < (call.end_t or math.inf) - TAIL_GRACE_S:
                    m.counts["frames_lost"] += 1
                continue
            lat = (times[i] - t_sent) * 1000
            (m.startup_frame_ms if t_sent < (call.start_t or 0.0) + STARTUP_S else m.frame_ms).append(lat)


def _answers(calls: Sequence[CallResult], m: Matched) -> None:
    """Each call's runs grouped into answers: by the responses found at the carrier when every one of the
    call's responses was found there, else by the silences and the caller's speech."""
    for call in calls:
        starts = None if m.unmatched_responses[call.index] else m.response_starts.get(call.index, [])
        m.answers[call.index] = measures.answers(call.runs, onsets=call.speech_at, response_starts=starts)


def _onset_clears(calls: Sequence[CallResult], m: Matched) -> None:
    """How long the caller talks over the bot (:func:`measures.talk_over`): from when an interrupting utterance
    begins (the bench knows; the server under test does not) to clearAudio at the carrier."""
    for call in calls:
        clears = [c[0] for c in call.clears]
        for over in measures.talk_over(call.speech_at, m.answers.get(call.index, []), clears):
            if over.ms is not None:
                m.onset_clear_ms.append(over.ms)
            elif over.missed:
                m.counts["interruptions_not_cleared"] += 1


def _bot_on(runs: Sequence[Run]) -> Callable[[float], bool]:
    starts = [r.start for r in runs]

    def on(t: float) -> bool:
        j = bisect.bisect_right(starts, t) - 1
        return j >= 0 and t < runs[j].end

    return on


def _first_after(times: Sequence[float], t: float) -> int:
    return bisect.bisect_left(times, t)


def match_side(calls: Sequence[CallResult], engine: dict[str, Any], content_type: str) -> Matched:
    m = Matched()
    sessions: list[dict[str, Any]] = engine.get("sessions", [])
    good = [c for c in calls if c.error is None or c.frames]
    exact = is_mulaw(content_type)
    if exact:
        _pair_sessions_by_frames(good, sessions, m)
    else:
        m.notes.append("L16: sessions paired by opening order, frames by duration, responses by time (approximate)")
        _pair_sessions_by_order(good, sessions, m)
        _frames_by_duration(good, sessions, m)
    by_index = {c.index: c for c in good}
    pairs = [(s_idx, sessions[s_idx], by_index[c_idx]) for s_idx, c_idx in m.session_call.items() if c_idx in by_index]
    for sess in sessions:
        m.counts["responses"] += len(sess["responses"])
        for resp in sess["responses"]:
            m.counts[f"responses_{resp.get('status') or 'unfinished'}"] += 1
    _model_to_caller(pairs, good, exact, m)
    _answers(good, m)
    _barge_ins(pairs, m)
    _onset_clears(good, m)
    _truncations(pairs, m)
    _playout_gaps(good, m)
    for call in good:
        if call.start_t is not None:
            m.send_lag_ms.extend(
                (t - call.start_t) * 1000 - (k + 1) * FRAME_MS for k, (t, _key) in enumerate(call.frames)
            )
        m.playout_lag_ms.extend(call.playout_lag_ms)
    m.counts["bot_audio_ms"] = round(sum(c.played_ms for c in good))
    m.counts["sessions"] = len(sessions)
    m.counts["sessions_unpaired"] = len(sessions) - len(pairs)
    return m


Pair = tuple[int, dict[str, Any], CallResult]


def _model_to_caller(pairs: Sequence[Pair], calls: Sequence[CallResult], exact: bool, m: Matched) -> None:
    """A response's first audio delta (engine) -> the first playAudio of that response (carrier)."""
    play_at: dict[str, float] = {}
    if exact:
        for call in calls:
            for t, prefix in call.plays:
                play_at.setdefault(prefix, t)
    worst: list[dict[str, Any]] = []
    for s_idx, sess, call in pairs:
        created = [r for r in sess["responses"] if r.get("t_created") is not None]
        greeting = min(created, key=lambda r: float(r["t_created"]))["id"] if created else None
        play_times = [t for t, _ in call.plays]
        by_bytes = exact and any(prefix for _, prefix in call.plays)
        for resp in sess["responses"]:
            t_delta = resp.get("t_first_delta")
            if t_delta is None:
                continue
            t_play: float | None = None
            if by_bytes and resp.get("prefix"):
                t_play = play_at.get(str(resp["prefix"]))
            elif not by_bytes:
                i = _first_after(play_times, t_delta)
                if i < len(play_times) and play_times[i] - t_delta < BARGE_WINDOW_S:
                    t_play = play_times[i]
            if t_play is None:
                m.counts["responses_never_played"] += 1
                m.unmatched_responses[call.index] += 1
                continue
            lat = (t_play - t_delta) * 1000
            (m.greeting_delta_ms if resp["id"] == greeting else m.delta_ms).append(lat)
            worst.append({"ms": round(lat, 1), "call": call.index, "session": sess["id"], "response": resp["id"]})
            m.response_starts.setdefault(call.index, []).append(t_play)
            m.call_responses.setdefault(call.index, []).append((t_play, resp.get("audio_sent") or []))
            if resp.get("item_id"):
                m.item_first_play[(s_idx, str(resp["item_id"]))] = t_play
    worst.sort(key=lambda x: -float(x["ms"]))
    m.outliers["model_to_caller"] = worst[:5]
    for starts in m.response_starts.values():
        starts.sort()
    for played in m.call_responses.values():
        played.sort(key=lambda r: r[0])


def _barge_ins(pairs: Sequence[Pair], m: Matched) -> None:
    """speech_started while the carrier was playing bot audio -> clearAudio at the carrier
    (:func:`measures.barge_in_reaction`)."""
    worst: list[dict[str, Any]] = []
    silent: list[dict[str, Any]] = []
    for s_idx, sess, call in pairs:
        clear_times = [c[0] for c in call.clears]
        hung_up = call.end_t if call.end_t is not None else math.inf
        everything = sorted(sess["speech_started"])
        # The socket may close before any reaction to speech this close to the hang-up could arrive.
        speech = [t for t in everything if t <= hung_up - BARGE_WINDOW_S]
        m.counts["speech_at_hangup"] += len(everything) - len(speech)
        reactions = measures.barge_in_reaction(speech, clear_times, _bot_on(call.runs), window_s=BARGE_WINDOW_S)
        for n, (t_s, (i, bot_on)) in enumerate(zip(speech, reactions, strict=True)):
            if i is not None:
                m.speech_clear[(s_idx, n)] = i
            if bot_on:
                m.counts["barge_ins"] += 1
                if i is not None:
                    lat = (clear_times[i] - t_s) * 1000
                    m.barge_ms.append(lat)
                    worst.append({"ms": round(lat, 1), "call": call.index, "session": sess["id"], "t": t_s})
                else:
                    m.counts["barge_ins_not_cleared"] += 1
                continue
            m.counts["speech_while_bot_silent"] += 1
            if i is not None:
                m.counts["clears_while_bot_silent"] += 1
                before = [r for r in call.runs if r.end <= t_s]
                silent.append(
                    {
                        "call": call.index,
                        "call_ms": round((t_s - (call.start_t or t_s)) * 1000),
                        "bot_stopped_ms_before": round((t_s - before[-1].end) * 1000, 1) if before else None,
                        "stop_reason": before[-1].ended_by if before else None,
                    }
                )
        for t_c in clear_times:
            k = bisect.bisect_right(everything, t_c + EARLY_S) - 1
            if k < 0 or t_c - everything[k] > BARGE_WINDOW_S:
                m.counts["clears_without_speech"] += 1
    worst.sort(key=lambda x: -float(x["ms"]))
    m.outliers["barge_in"] = worst[:5]
    m.outliers["clears_while_bot_silent"] = silent[:10]


def _truncations(pairs: Sequence[Pair], m: Matched) -> None:
    """What the agent told the model the caller heard of the item playing when it sent clearAudio, vs what the
    carrier had played of it (its cumulative played ms at the clear minus where that item started)."""
    worst: list[dict[str, Any]] = []
    for s_idx, sess, call in pairs:
        clear_times = [c[0] for c in call.clears]
        starts_t = [r.start for r in call.runs]
        starts_played = [r.played_before_ms for r in call.runs]
        items = sorted((t, item) for (s, item), t in m.item_first_play.items() if s == s_idx)
        item_times = [t for t, _ in items]
        truncated: set[str] = set()
        speech = sorted(sess["speech_started"])
        for tr in sorted(sess["truncates"], key=lambda x: float(x["t"])):
            m.counts["truncates"] += 1
            item_id = str(tr.get("item_id"))
            # The truncate answers the latest speech_started (both engine timestamps); that one's clearAudio is
            # the clear to compare with (carrier timestamps can lag the engine's when the bench is busy).
            n = bisect.bisect_right(speech, tr["t"]) - 1
            i = m.speech_clear.get((s_idx, n), -1)
            if i < 0:
                m.counts["truncates_without_clear"] += 1
                continue
            k = bisect.bisect_right(item_times, clear_times[i]) - 1
            current = items[k][1] if k >= 0 else None
            if item_id != current:
                m.counts["truncates_repeated" if item_id in truncated else "truncates_of_other_items"] += 1
                continue
            truncated.add(item_id)
            t_first = items[k][0]
            j = _first_after(starts_t, t_first - 0.001)
            if j >= len(starts_t) or starts_t[j] - t_first > 1.0 or starts_t[j] > clear_times[i]:
                m.counts["truncates_unmatched"] += 1
                continue
            signed = measures.truncation_error_ms(float(tr["audio_end_ms"]), call.clears[i][1], starts_played[j])
            heard = call.clears[i][1] - starts_played[j]
            m.trunc_err_ms.append(abs(signed))
            m.trunc_signed_ms.append(signed)
            worst.append(
                {
                    "ms": round(signed, 1),
                    "call": call.index,
                    "audio_end_ms": tr["audio_end_ms"],
                    "heard": round(heard, 1),
                }
            )
    worst.sort(key=lambda x: -abs(float(x["ms"])))
    m.outliers["truncation"] = worst[:5]


def _playout_gaps(calls: Sequence[CallResult], m: Matched) -> None:
    """The carrier ran dry in the middle of an answer, then went on with it (:func:`measures.answers`); for each
    gap, when the engine sent the audio that was missing (:func:`_missing_audio_sent`)."""
    for call in calls:
        responses = m.call_responses.get(call.index, [])
        for answer in m.answers.get(call.index, []):
            for (a, b), before in zip(answer.gap_spans(), answer.runs, strict=False):
                m.gaps_ms.append((b - a) * 1000)
                m.gap_spans.append((a, b))
                m.gap_where.append((call.index, round(a - (call.start_t or a), 2), round((b - a) * 1000, 1)))
                heard = before.played_after_ms - answer.runs[0].played_before_ms
                m.gap_audio_sent.append(_missing_audio_sent(responses, answer.start, heard))


def _missing_audio_sent(
    responses: Sequence[tuple[float, list[list[float]]]], answer_start: float, heard_ms: float
) -> float | None:
    """When the engine sent the audio that follows the first `heard_ms` of the response that began playing at
    `answer_start`; None when that response or that much of its audio is not on record."""
    k = bisect.bisect_right([t for t, _ in responses], answer_start + 0.001) - 1
    if k < 0 or answer_start - responses[k][0] > BARGE_WINDOW_S:
        return None
    sent = responses[k][1]
    i = bisect.bisect_right([end for _, end in sent], heard_ms + 0.5)
    return float(sent[i][0]) if i < len(sent) else None


def ratio(agent: float | None, baseline: float | None) -> float | None:
    if agent is None or baseline is None or baseline <= 0 or math.isnan(agent) or math.isnan(baseline):
        return None
    return round(agent / baseline, 2)
