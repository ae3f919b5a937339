"""Was it a real interruption? Decided from evidence, with no I/O: the `adaptive` policy's rules.

The line went quiet the moment the caller seemed to talk over the bot (their onset on the line, or the model's
`speech_started`). From then on each piece of evidence (how long they have spoken, whether they stopped, what the
transcript says, whether it was the bot's own voice coming back) is weighed here, and the answer is one of:

* CUT: a real interruption. The bot's answer is cancelled and cut to what was heard; the caller gets an answer.
* RESUME: not one. The bot carries on from the exact sample where it stopped; nothing is lost or forgotten.
* WAIT: not sure yet; ask again on new evidence or after `recheck_ms`.

In order: echo → resume; a stop word ("stop", "ruko", "नहीं") → cut; `min_words` words that are not
backchannels → cut; `long_speech_ms` of speech → cut; a transcript of backchannels only (or nothing) → resume;
no word from the model's VAD `confirm_ms` after a local onset → resume; no transcript `transcript_wait_ms` after
the speech ended → resume; `max_pause_ms` without an answer → cut if the caller is still talking, else resume.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.calls.interruption.words import WordLists


class Verdict(enum.Enum):
    WAIT = "wait"
    CUT = "cut"
    RESUME = "resumed"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""  # stop_word | words | duration | backchannel | noise | no_speech | echo | timeout
    recheck_ms: float | None = None  # WAIT: ask again after this long, even with no new evidence


@dataclass(frozen=True)
class Rules:
    long_speech_ms: float = 1300.0
    short_speech_ms: float = 800.0
    transcript_wait_ms: float = 1200.0
    max_pause_ms: float = 2500.0
    confirm_ms: float = 800.0
    min_words: int = 2


@dataclass(frozen=True)
class Evidence:
    paused_ms: float  # since the line went quiet
    vad: bool  # the model's VAD heard speech (speech_started)
    speaking: bool  # still talking: the VAD has not said speech_stopped
    speech_ms: float  # the caller's speech so far (or in all, once stopped)
    stopped_ms: float | None = None  # since the VAD's speech_stopped; None while speaking
    transcript: str | None = None  # None until the transcript arrives
    echo: bool = False  # only the bot's own voice, coming back, was on the line


def decide(e: Evidence, rules: Rules, words: WordLists) -> Decision:
    if e.echo:
        return Decision(Verdict.RESUME, "echo")
    if e.transcript is not None:
        heard = words.hear(e.transcript)
        if heard.stop:
            return Decision(Verdict.CUT, "stop_word")
        if heard.content >= rules.min_words:
            return Decision(Verdict.CUT, "words")
        if e.speech_ms >= rules.long_speech_ms:
            return Decision(Verdict.CUT, "duration")
        if heard.content == 0:
            return Decision(Verdict.RESUME, "noise" if heard.empty else "backchannel")
        if e.speech_ms >= rules.short_speech_ms:
            return Decision(Verdict.CUT, "words")  # one word, said at length: not a murmur
        if not e.speaking:
            return Decision(Verdict.RESUME, "backchannel")  # one short word: the bot goes on
    if e.speech_ms >= rules.long_speech_ms and (e.vad or e.speaking):
        return Decision(Verdict.CUT, "duration")
    if e.paused_ms >= rules.max_pause_ms:
        return Decision(Verdict.CUT, "timeout") if e.speaking else Decision(Verdict.RESUME, "timeout")
    waits = [rules.max_pause_ms - e.paused_ms]
    if not e.vad:
        if e.paused_ms >= rules.confirm_ms:
            return Decision(Verdict.RESUME, "no_speech")
        waits.append(rules.confirm_ms - e.paused_ms)
    if e.speaking:
        waits.append(rules.long_speech_ms - e.speech_ms)
    elif e.stopped_ms is not None and e.transcript is None:
        if e.stopped_ms >= rules.transcript_wait_ms:
            return Decision(Verdict.RESUME, "timeout")
        waits.append(rules.transcript_wait_ms - e.stopped_ms)
    return Decision(Verdict.WAIT, recheck_ms=max(1.0, min(waits)))
