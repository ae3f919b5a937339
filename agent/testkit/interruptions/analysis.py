"""Each event's outcome, from what the carrier played and what the engine generated and was told.

Nothing here reads the agent's internals. The carrier's record is every stretch of bot audio it played, on the call
clock (``SimCall.bot_pieces``); the engine's is every response's audio as sent, its status, and the client's
``response.cancel`` / ``conversation.item.truncate`` / ``conversation.item.delete``. Replies carry a fresh noise
floor, so every played piece is found again, sample-exact, in exactly one response: that tells which response
the caller heard when, and which samples of it (a resume from the exact sample continues where the pause began).

For an event with caller onset t (call clock), R is the response playing at t. R's *runs* are its stretches of
contiguous play (no silent tick, no jump in position); the first run after t is the one that contains t.

* R **played to its end**: the engine completed R and the caller heard its last sample;
  otherwise R was **cut for good** (it stopped before its end and never came back).
* **talk-over** (real interruptions cut for good): t → the end of the first run (the first silence on the line);
  **talk in all**: how much of R played after t, every run counted (a real interruption resumed by mistake, then
  cut, talks over the caller again); **resumed by mistake**: R played again after a gap before it was cut.
* **paused and resumed** (false events not cut): R played again after a gap that began after t;
  **pause** = the sum of those gaps (what the caller heard as the bot hesitating); **dead air** = the first
  resume − the end of the caller's sound (negative: the bot resumed while the sound still ran; not for echo).
* **answer audio lost**: R's generated audio the caller never heard (generated ms − heard ms, a sample heard twice
  counts once): on a resume it is what the resume skipped; on a cut, what was generated and dropped.
* **model told** (engine): R's item was truncated or deleted by the client; truncate error = |audio_end_ms − the
  furthest position of R the caller heard|.
"""

from __future__ import annotations

import base64
import itertools
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from agent.audio.codecs import Int16Array, mulaw_to_pcm16
from agent.stats import percentile
from agent.testkit.interruptions.caller import CallRun
from agent.testkit.interruptions.sounds import ANSWERS, FALSE_KINDS, RATE

PER_MS = RATE / 1000
MIN_SEARCH = 16  # shorter pieces are only attributed as the continuation of the one before
TICK_MS = 20.0
STAGES = ("vad_stopped", "transcript", "decided", "resumed")
LEFT_MS = 1000.0  # an event lands mid-answer when at least this much of the answer is still to come


@dataclass
class Run:
    response: int  # index into the session's responses
    pos: int  # first sample of the response heard in this run
    end_pos: int
    t: float  # call-clock ms
    t_end: float


@dataclass
class Outcome:
    call: int
    index: int
    kind: str
    sound: str
    onset_ms: float | None
    sound_ms: float = 0.0
    landed: bool = False
    note: str = ""
    response_id: str | None = None
    generated_ms: float = 0.0
    heard_ms: float = 0.0
    played_to_end: bool = False
    cut: bool = False
    talk_over_ms: float | None = None
    talk_total_ms: float | None = None
    resumed_then_cut: bool = False
    paused: bool = False
    resumed: bool = False
    pause_ms: float = 0.0
    dead_air_ms: float | None = None
    # Where the dead air went (ms after the caller's sound ended, on the shared monotonic clock): the engine's
    # speech_stopped and transcript of the caller's item, the client's delete of it (the decision to resume),
    # and the bot back on the line. Empty when the item or the clocks are unknown.
    stages_ms: dict[str, float] = field(default_factory=dict)
    skipped_ms: float = 0.0  # positions jumped over at resumes (negative: repeated)
    lost_ms: float = 0.0
    engine_status: str | None = None
    engine_reason: str | None = None
    client_cancelled: bool = False
    truncated_ms: float | None = None
    deleted: bool = False
    truncate_error_ms: float | None = None


@dataclass
class SessionAudio:
    ids: list[str]
    audio: list[Int16Array]
    blob: bytes = b""
    starts: list[int] = field(default_factory=list)  # sample offset of each response in the blob

    @classmethod
    def of(cls, session: dict[str, Any]) -> SessionAudio:
        ids = [str(r["id"]) for r in session["responses"]]
        audio = [mulaw_to_pcm16(base64.b64decode(r.get("audio") or "")) for r in session["responses"]]
        starts, total = [], 0
        for a in audio:
            starts.append(total)
            total += len(a)
        blob = np.concatenate(audio).astype("<i2").tobytes() if audio else b""
        return cls(ids, audio, blob, starts)

    def find(self, samples: Int16Array) -> tuple[int, int] | None:
        """(response, position) where these samples are, if anywhere (the first aligned match)."""
        needle = samples.astype("<i2").tobytes()
        at = self.blob.find(needle)
        while at >= 0 and at % 2:
            at = self.blob.find(needle, at + 1)
        if at < 0:
            return None
        sample = at // 2
        r = int(np.searchsorted(self.starts, sample, side="right")) - 1
        return r, sample - self.starts[r]


def pair_sessions(calls: list[CallRun], sessions: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Call index -> its engine session, by the caller frames both saw (most keys in common, at least 5)."""
    out: dict[int, dict[str, Any]] = {}
    taken: set[int] = set()
    for call in calls:
        keys = set(call.keys)
        scores = [(len(keys & set(s.get("keys", []))), i) for i, s in enumerate(sessions) if i not in taken]
        if scores and keys:
            best, i = max(scores)
            if best >= 5:
                out[call.index] = sessions[i]
                taken.add(i)
    return out


def attribute(pieces: list[tuple[int, Int16Array]], audio: SessionAudio) -> tuple[list[Run], float]:
    """The played pieces as runs of responses; and the ms of played audio found in no response."""
    runs: list[Run] = []
    unknown = 0
    cursor: tuple[int, int] | None = None
    for offset, samples in pieces:
        n = len(samples)
        if n == 0:
            continue
        where = None
        if cursor is not None:
            r, pos = cursor
            if np.array_equal(audio.audio[r][pos : pos + n], samples):
                where = cursor
        if where is None and n >= MIN_SEARCH:
            where = audio.find(samples)
        if where is None:
            unknown += n
            cursor = None
            continue
        r, pos = where
        t, t_end = offset / PER_MS, (offset + n) / PER_MS
        last = runs[-1] if runs else None
        if last is not None and last.response == r and last.end_pos == pos and t - last.t_end < TICK_MS:
            last.end_pos, last.t_end = pos + n, t_end
        else:
            runs.append(Run(r, pos, pos + n, t, t_end))
        cursor = (r, pos + n)
    return runs, unknown / PER_MS


def _heard(runs: list[Run]) -> tuple[int, int]:
    """(samples heard at least once, furthest position heard)."""
    spans = sorted((r.pos, r.end_pos) for r in runs)
    total, reach, furthest = 0, 0, 0
    for lo, hi in spans:
        lo = max(lo, reach)
        if hi > lo:
            total += hi - lo
        reach = max(reach, hi)
        furthest = max(furthest, hi)
    return total, furthest


def outcomes_of_call(call: CallRun, session: dict[str, Any] | None) -> tuple[list[Outcome], float]:
    out = [
        Outcome(call.index, e.event.index, e.event.kind, e.event.sound, e.onset_ms, e.event.sound_ms, note=e.note)
        for e in call.events
    ]
    if session is None:
        for o in out:
            o.note = o.note or "no engine session paired with this call"
        return out, 0.0
    audio = SessionAudio.of(session)
    runs, unknown_ms = attribute(call.pieces, audio)
    by_response: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        by_response[run.response].append(run)
    truncates = {t["item_id"]: float(t["audio_end_ms"]) for t in session["truncates"]}
    deletes = {d["item_id"] for d in session["deletes"]}
    cancels = {c.get("response_id") for c in session["cancels"]}
    for o in out:
        if o.onset_ms is None:
            o.note = o.note or "the event did not happen"
            continue
        t = o.onset_ms
        at = [r for r in runs if r.t <= t <= r.t_end + TICK_MS]
        if not at:
            o.note = "the bot was not playing at the onset"
            continue
        ri = at[-1].response
        resp = session["responses"][ri]
        position = at[-1].pos + (t - at[-1].t) * PER_MS
        if resp.get("text") not in ANSWERS or position > (float(resp.get("full_ms") or 0) - LEFT_MS) * PER_MS:
            o.note = f"landed in {resp.get('text')!r}, not with {LEFT_MS:g} ms of an answer still to come"
            continue
        mine = by_response[ri]
        first = mine.index(at[-1])
        after = mine[first:]
        generated = len(audio.audio[ri])
        heard, furthest = _heard(mine)
        o.landed = True
        o.response_id = audio.ids[ri]
        o.generated_ms, o.heard_ms = generated / PER_MS, heard / PER_MS
        o.engine_status, o.engine_reason = resp.get("status"), resp.get("reason")
        o.played_to_end = resp.get("status") == "completed" and furthest >= generated - 1
        o.cut = not o.played_to_end
        o.lost_ms = max(0, generated - heard) / PER_MS
        gaps = [(b.t - a.t_end, b.pos - a.end_pos) for a, b in itertools.pairwise(after)]
        o.paused = bool(gaps)
        o.resumed = o.paused and not o.cut
        o.pause_ms = sum(g for g, _ in gaps)
        o.skipped_ms = sum(s for _, s in gaps) / PER_MS
        if o.resumed and o.sound_ms > 0:
            o.dead_air_ms = after[1].t - (t + o.sound_ms)
            if call.t0 is not None:
                o.stages_ms = _stages(session, call.t0, t, t + o.sound_ms, after[1].t)
        if o.cut:
            o.talk_over_ms = after[0].t_end - t
            o.talk_total_ms = sum(r.t_end - max(r.t, t) for r in after)
            o.resumed_then_cut = o.paused
        item = resp.get("item_id")
        o.client_cancelled = audio.ids[ri] in cancels
        o.deleted = item in deletes
        if item in truncates:
            o.truncated_ms = truncates[item]
            o.truncate_error_ms = abs(truncates[item] - furthest / PER_MS)
    return out, unknown_ms


def _stages(session: dict[str, Any], t0: float, onset: float, end: float, resumed: float) -> dict[str, float]:
    """The dead air's stages (see `Outcome.stages_ms`), for the caller item the VAD opened between the onset and
    the resume (call-clock ms in; ms after `end` out)."""
    lo, hi = t0 + onset / 1000 - 0.05, t0 + resumed / 1000
    started = [v for v in session["vad"] if v["type"] == "speech_started" and lo <= v["t"] <= hi]
    stages = {"resumed": resumed - end}
    if not started:
        return stages
    item = started[-1]["item_id"]
    found = {
        "vad_stopped": [v["t"] for v in session["vad"] if v["type"] == "speech_stopped" and v["item_id"] == item],
        "transcript": [x["t"] for x in session["transcripts"] if x["item_id"] == item],
        "decided": [d["t"] for d in session["deletes"] if d["item_id"] == item],
    }
    for stage, times in found.items():
        if times:
            stages[stage] = (times[0] - t0) * 1000 - end
    return stages


def analyse(calls: list[CallRun], engine: dict[str, Any]) -> dict[str, Any]:
    """Every event's outcome and the figures of one side."""
    sessions = engine.get("sessions", [])
    paired = pair_sessions(calls, sessions)
    outcomes: list[Outcome] = []
    unknown_ms = 0.0
    problems = [f"call {c.index}: {c.error}" for c in calls if c.error]
    problems += [f"call {c.index}: carrier protocol error {e}" for c in calls for e in c.protocol_errors[:3]]
    problems += [f"engine: {e}" for e in engine.get("internal_errors", [])]
    for s in sessions:
        problems += [f"engine session {s['id']}: protocol error {e}" for e in s.get("protocol_errors", [])[:3]]
    for call in calls:
        got, unknown = outcomes_of_call(call, paired.get(call.index))
        outcomes += got
        unknown_ms += unknown
    if unknown_ms > 0:
        problems.append(f"{unknown_ms:.0f} ms of played bot audio matched no response the engine generated")
    return {
        "figures": figures(outcomes),
        "events": [asdict(o) for o in outcomes],
        "problems": problems,
        "transcripts": [m for s in sessions for m in s.get("matches", [])],
        "turn_detection": sessions[0].get("turn_detection") if sessions else None,
        "sessions": [_timeline(s) for s in sessions],
    }


def _timeline(session: dict[str, Any]) -> list[str]:
    """The session's story at the engine, for reading a surprising outcome (seconds since it opened)."""
    t0 = float(session.get("opened") or 0.0)
    story: list[tuple[float, str]] = []
    for r in session["responses"]:
        ms = len(base64.b64decode(r.get("audio") or "")) / PER_MS
        story.append((r.get("t_created") or t0, f"response {r['id'][-6:]} created ({ms:.0f} ms generated)"))
        if r.get("t_done"):
            story.append((r["t_done"], f"response {r['id'][-6:]} {r.get('status')} {r.get('reason') or ''}"))
    story += [(v["t"], f"VAD {v['type']}") for v in session["vad"]]
    story += [(x["t"], f"transcript {x['text']!r}") for x in session["transcripts"]]
    story += [(x["t"], f"client cancel {str(x.get('response_id'))[-6:]}") for x in session["cancels"]]
    story += [(x["t"], f"client truncate at {x['audio_end_ms']} ms") for x in session["truncates"]]
    story += [(x["t"], "client delete") for x in session["deletes"]]
    story += [(x["t"], f"session.update {x['turn_detection']}") for x in session["session_updates"]]
    story += [(x["t"], f"client {x['type']}") for x in session.get("other_client_events", [])]
    return [f"{t - t0:7.2f} {what}" for t, what in sorted(story)]


def _pct(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None


def _p50_p95(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95)}


def figures(outcomes: list[Outcome]) -> dict[str, Any]:
    real = [o for o in outcomes if o.kind == "real" and o.landed]
    false = [o for o in outcomes if o.kind in FALSE_KINDS and o.landed]
    recalled = [o for o in real if o.cut]
    talk = [o.talk_over_ms for o in recalled if o.talk_over_ms is not None]
    talk_total = [o.talk_total_ms for o in recalled if o.talk_total_ms is not None]
    mistaken = [o for o in recalled if o.resumed_then_cut]
    resumed = [o for o in false if o.resumed]
    told = [o for o in recalled if o.truncated_ms is not None or o.deleted]
    errors = [o.truncate_error_ms for o in recalled if o.truncate_error_ms is not None]
    by_kind = {
        k: {
            "n": len(ks := [o for o in false if o.kind == k]),
            "cut_pct": _pct(sum(o.cut for o in ks), len(ks)),
            "paused_pct": _pct(sum(o.paused for o in ks), len(ks)),
            "resume_pause_ms": _p50_p95([o.pause_ms for o in ks if o.resumed]),
            "dead_air_ms": _p50_p95([o.dead_air_ms for o in ks if o.dead_air_ms is not None]),
            "stages_ms_p50": {
                stage: percentile([o.stages_ms[stage] for o in ks if stage in o.stages_ms], 50) for stage in STAGES
            },
        }
        for k in FALSE_KINDS
    }
    return {
        "events": len(outcomes),
        "not_landed": [f"{o.kind} #{o.index}: {o.note}" for o in outcomes if not o.landed],
        "real": {
            "n": len(real),
            "recall_pct": _pct(len(recalled), len(real)),
            "talk_over_ms": {"p50": percentile(talk, 50), "p95": percentile(talk, 95), "max": max(talk, default=None)},
            "talk_total_ms": _p50_p95(talk_total) | {"max": max(talk_total, default=None)},
            "resumed_then_cut": len(mistaken),
            "resumed_then_cut_sounds": [o.sound for o in mistaken],
            "model_told_pct": _pct(len(told), len(recalled)),
            "truncate_error_ms_p95": percentile(errors, 95),
            "missed": [o.sound for o in real if not o.cut],
        },
        "false": {
            "n": len(false),
            "cut_pct": _pct(sum(o.cut for o in false), len(false)),
            "by_kind": by_kind,
            "paused_and_resumed": len(resumed),
            "resume_pause_ms": {
                "p50": percentile([o.pause_ms for o in resumed], 50),
                "p95": percentile([o.pause_ms for o in resumed], 95),
            },
            "dead_air_ms": _p50_p95([o.dead_air_ms for o in resumed if o.dead_air_ms is not None]),
            "lost_on_resume_ms": {
                "total": round(sum(o.lost_ms for o in resumed), 1),
                "max": max((round(o.lost_ms, 1) for o in resumed), default=None),
            },
            "skipped_on_resume_ms": {
                "min": min((round(o.skipped_ms, 1) for o in resumed), default=None),
                "max": max((round(o.skipped_ms, 1) for o in resumed), default=None),
            },
            "lost_on_cut_ms_total": round(sum(o.lost_ms for o in false if o.cut), 1),
            "cut_sounds": [o.sound for o in false if o.cut],
        },
    }
