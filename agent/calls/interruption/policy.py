"""Was it a real interruption? Decided from evidence, with no I/O: the `adaptive` policy's rules.

The line went quiet the moment the caller seemed to talk over the bot (their onset on the line, or the model's
`speech_started`). From then on each piece of evidence (how long they have spoken, whether they stopped, what the
transcript says, whether it was the bot's own voice coming back) is weighed here, and the answer is one of:

* CUT: a real interruption. The bot's answer is cancelled and cut to what was heard; the caller gets an answer.
* RESUME: not one. The bot carries on from the exact sample where it stopped; nothing is lost or forgotten.
* WAIT: not sure yet; ask again on new evidence or after `recheck_ms`.

Local evidence from the line itself (`agent.audio.speech_onset`) settles what needs no model: a sound with no
voicing for `noise_ms` (a cough, a rustle, a thud) → resume at once; a sound that ended `quiet_ms` ago while the
model's VAD heard no speech → resume.

PLAY is a provisional resume: a short voiced sound (under `short_speech_ms`) over for `resume_quiet_ms` on the
line (`NOISE_END_MS` when it ended on an unvoiced burst: a word's last consonant), its transcript not in yet. The
bot plays on from where it stopped while the pause stays open: a transcript with a stop word or content words
still cuts it (then, to what was heard, the resumed part included), and the caller starting again pauses it
again. The transcript of a murmur takes 0.05-1.5 s; the bot need not be silent that long for it.

Words that would resume the bot wait until the caller has been quiet for `turn_end_ms` (on the line, or by the
VAD): while paused the VAD closes a turn after a shorter silence, so that its words are on their way while that
runs; a breath inside a sentence ("okay, | but I meant Thursday") splits it, and the rest decides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.calls.interruption.words import WordLists

NOISE_END_MS = 100.0  # a sound with no voice in it, over for this long, was no speech


class Verdict(enum.Enum):
    WAIT = "wait"
    CUT = "cut"
    RESUME = "resumed"
    PLAY = "playing"  # resume provisionally: the pause stays open until the transcript decides


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""  # stop_word | words | duration | backchannel | noise | no_speech | echo | timeout | short_sound
    recheck_ms: float | None = None  # WAIT: ask again after this long, even with no new evidence


@dataclass(frozen=True)
class Rules:
    long_speech_ms: float = 1300.0
    short_speech_ms: float = 800.0
    transcript_wait_ms: float = 1200.0
    max_pause_ms: float = 2500.0
    confirm_ms: float = 800.0
    min_words: int = 2
    noise_ms: float = 200.0  # this much sound with no voiced frame is not speech
    quiet_ms: float = 200.0  # the line this quiet after a sound the VAD did not take for speech: it is over
    # A short voiced sound over for this long: play on while its words come (0: off). Shorter plays on in the
    # breath after a sentence's first word ("no, | stop"): 140-180 ms in the bench's speech.
    resume_quiet_ms: float = 200.0
    # A caller quiet this long has finished what they were saying: words that would resume the bot wait for it.
    # While paused the VAD closes a turn sooner (`vad_silence_ms`), so that its words come while this runs.
    turn_end_ms: float = 200.0


@dataclass(frozen=True)
class Evidence:
    paused_ms: float  # since the line went quiet
    vad: bool  # the model's VAD heard speech (speech_started)
    speaking: bool  # still talking: the VAD has not said speech_stopped
    speech_ms: float  # the caller's speech so far (or in all, once stopped)
    stopped_ms: float | None = None  # since the VAD's speech_stopped; None while speaking
    transcript: str | None = None  # None until the transcript arrives
    echo: bool = False  # only the bot's own voice, coming back, was on the line
    # The line itself (None: no local detector): the latest sound's length, its voiced part, the quiet since.
    local_quiet_ms: float | None = None
    local_ms: float = 0.0
    local_voiced_ms: float = 0.0
    playing: bool = False  # resumed provisionally (PLAY): the bot plays while the pause waits for the words
    tail_unvoiced: bool = False  # the latest sound had no voice, an earlier one had: a word's last consonant
    vad_silence_ms: float = 0.0  # the silence the VAD waits for before its speech_stopped
    # The sound may still be the bot's own echo, which its end will tell (the echo check needs it over for a moment):
    # words that would cut wait this much longer at most, for they may be the bot's own, heard back.
    echo_pending_ms: float = 0.0

    @property
    def caller_quiet_ms(self) -> float | None:
        """How long the caller has been quiet: on the line itself if the detector heard them, else by the VAD
        (its silence, then the time since it said they stopped); None while the VAD hears them."""
        if self.local_quiet_ms is not None:
            return self.local_quiet_ms
        return None if self.stopped_ms is None else self.stopped_ms + self.vad_silence_ms


def decide(e: Evidence, rules: Rules, words: WordLists) -> Decision:
    if e.echo:
        return Decision(Verdict.RESUME, "echo")
    if e.transcript is not None:
        heard = words.hear(e.transcript)
        cut = "stop_word" if heard.stop else "words" if heard.content >= rules.min_words else None
        if cut is not None and e.echo_pending_ms > 0:
            return Decision(Verdict.WAIT, recheck_ms=e.echo_pending_ms)
        if cut is not None:
            return Decision(Verdict.CUT, cut)
        if e.speech_ms >= rules.long_speech_ms:
            return Decision(Verdict.CUT, "duration")
        quiet = e.caller_quiet_ms
        if quiet is not None and quiet < rules.turn_end_ms and not e.playing and e.paused_ms < rules.max_pause_ms:
            # They may go on: hear it all (though never past the longest pause: a noisy line is never quiet).
            return Decision(Verdict.WAIT, recheck_ms=min(rules.turn_end_ms - quiet, rules.max_pause_ms - e.paused_ms))
        if heard.content == 0:
            return Decision(Verdict.RESUME, "noise" if heard.empty else "backchannel")
        if e.speech_ms >= rules.short_speech_ms:
            return Decision(Verdict.CUT, "words")  # one word, said at length: not a murmur
        if not e.speaking:
            return Decision(Verdict.RESUME, "backchannel")  # one short word: the bot goes on
    if e.local_quiet_ms is not None and e.transcript is None:
        if (
            e.local_voiced_ms == 0
            and e.local_ms > 0
            and (e.local_ms >= rules.noise_ms or e.local_quiet_ms >= NOISE_END_MS)
        ):
            return Decision(Verdict.RESUME, "noise")  # a cough, a rustle: no voice in it
        if not e.vad and e.local_quiet_ms >= rules.quiet_ms:
            return Decision(Verdict.RESUME, "no_speech")  # over, and the model heard no speech in it
    if (
        not e.playing
        and rules.resume_quiet_ms > 0
        and e.transcript is None
        and e.local_quiet_ms is not None
        and e.local_quiet_ms >= (min(NOISE_END_MS, rules.resume_quiet_ms) if e.tail_unvoiced else rules.resume_quiet_ms)
        and e.local_voiced_ms > 0
        and e.speech_ms < rules.short_speech_ms
    ):
        return Decision(Verdict.PLAY, "short_sound")
    if e.speech_ms >= rules.long_speech_ms and (e.vad or e.speaking) and not e.playing:
        return Decision(Verdict.CUT, "duration")
    if e.paused_ms >= rules.max_pause_ms:
        return Decision(Verdict.CUT if e.speaking and not e.playing else Verdict.RESUME, "timeout")
    waits = [rules.max_pause_ms - e.paused_ms]
    if not e.vad:
        if e.local_quiet_ms is not None and e.local_quiet_ms < rules.quiet_ms:
            waits.append(rules.quiet_ms - e.local_quiet_ms)
        if e.paused_ms >= rules.confirm_ms:
            return Decision(Verdict.RESUME, "no_speech")
        waits.append(rules.confirm_ms - e.paused_ms)
    if e.speaking and not e.playing:
        waits.append(rules.long_speech_ms - e.speech_ms)
    elif e.stopped_ms is not None and e.transcript is None:
        if e.stopped_ms >= rules.transcript_wait_ms:
            return Decision(Verdict.RESUME, "timeout")
        waits.append(rules.transcript_wait_ms - e.stopped_ms)
    return Decision(Verdict.WAIT, recheck_ms=max(1.0, min(waits)))
