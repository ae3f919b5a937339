"""The adaptive interruption policy: pause first, decide, then cut or resume. The agent owns the caller's turns.

The session is configured with `create_response: false, interrupt_response: false`: the server only detects and
commits the caller's speech. So:

* The caller starts talking while the bot is audible (their onset on the line, not the bot's echo; or the model's
  `speech_started`): the line goes quiet at once (clearAudio, the unheard audio kept: `Playout.hold`) and a
  `Pause` collects evidence until `policy.decide` says CUT or RESUME.
* CUT: the bot's answer is cancelled and cut to what was heard (exactly as a barge-in always was), and every
  caller turn of the pause is answered (`response.create`) as soon as it is committed.
* RESUME: the held audio plays on from the exact sample where it stopped; the model is told nothing, and the
  caller's committed murmur is deleted from the conversation (`conversation.item.delete`), so that its memory
  holds the answer and not the "mm-hmm", and no reply to it ever starts.
* PLAY (a short voiced sound, over on the line, its words not known yet): the held audio plays on as for RESUME,
  but the pause stays open. Its transcript may still CUT (the line goes quiet then, and the answer is cut to what
  was heard, the resumed part included); the caller talking again holds the line again.
* The bot is silent: an ordinary turn, answered the moment it is committed (an answer still being prepared, not
  yet heard, is cancelled, as the server's `interrupt_response` used to).
* `speech_started` while the line carries only the bot's echo is not trusted: no pause, and its item is deleted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Protocol

from agent.audio.echo import EchoEstimator
from agent.audio.speech_onset import SpeechOnset
from agent.calls.context import CallContext
from agent.calls.interruption.policy import Decision, Evidence, Rules, Verdict, decide
from agent.calls.interruption.states import Line, Spawn
from agent.calls.interruption.words import WordLists
from agent.protocol.realtime import client_commands, session_config
from agent.waiting import wait_event

NOISE_BACKOFF_S = 1.5  # after a pause on a sound the model did not take for speech, only voiced onsets count
# While paused the server VAD closes the caller's turn after this much silence: its words are on their way while
# the policy waits for the caller to have finished (`Rules.turn_end_ms`, 200 ms), not only after that.
PAUSE_VAD_SILENCE_MS = 100.0
FED_S = 0.1  # no frame through the line's detector for this long: it is not listening (the bot is silent)
ECHO_END_MS = 40.0  # a sound over for this long may be judged by its end: did it stop one echo delay after the bot?


class LineControl(Protocol):
    """What the adaptive policy asks of the line machine."""

    @property
    def line(self) -> Line: ...

    def hold_line(self, source: str) -> bool: ...

    async def send_clear(self) -> float: ...

    async def cut_held(self, reason: str, paused_ms: float, clear_ms: float, transcript: str | None) -> None: ...

    async def cut_playing(self, reason: str, paused_ms: float, transcript: str | None) -> None: ...

    def release_held(self) -> None: ...

    async def cancel_unheard_answer(self) -> None: ...


@dataclass
class Pause:
    """One spell of the line held while deciding; evidence on the playout's clock (seconds) and the model's
    input-audio clock (ms)."""

    started: float
    source: str  # onset | vad
    speech_from: float  # when the caller's speech seems to have begun
    clear_ms: float = 0.0
    items: list[str] = field(default_factory=list)  # the caller's items (speech_started) during the pause
    audio_start_ms: int | None = None
    stopped_at: float | None = None
    speech_ms: float | None = None  # once stopped: from the VAD's audio clock
    transcripts: dict[str, str] = field(default_factory=dict)
    committed: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    local: bool = False  # the line's detector heard the sound this pause is about (its onset, or sound since)
    playing: bool = False  # resumed provisionally (PLAY): the bot plays while the pause waits for the words
    plays: int = 0  # provisional resumes so far
    voiced_ms: float = 0.0  # the most voicing any sound of this pause had (a word's last consonant is unvoiced)
    quiet_s: float = 0.0  # how long the line was held, over the spells of this pause that ended

    def evidence(self, now: float, detector: SpeechOnset | None = None, vad_silence_ms: float = 0.0) -> Evidence:
        vad = bool(self.items)
        latest = self.items[-1] if self.items else None
        speaking = self.stopped_at is None
        speech_ms = self.speech_ms if self.speech_ms is not None else (now - self.speech_from) * 1000
        transcript = None
        if latest is not None and latest in self.transcripts:
            transcript = " ".join(self.transcripts[i] for i in self.items if i in self.transcripts)
        stopped_ms = None if self.stopped_at is None else (now - self.stopped_at) * 1000
        return Evidence(
            paused_ms=(now - self.started) * 1000,
            vad=vad,
            speaking=speaking,
            speech_ms=max(0.0, speech_ms),
            stopped_ms=stopped_ms,
            transcript=transcript,
            local_quiet_ms=detector.quiet_ms if detector is not None and self.local else None,
            local_ms=detector.sound_ms if detector is not None else 0.0,
            local_voiced_ms=max(self.voiced_ms, detector.voiced_ms) if detector is not None else 0.0,
            playing=self.playing,
            tail_unvoiced=(
                detector is not None and detector.voiced_ms == 0 and detector.sound_ms > 0 and self.voiced_ms > 0
            ),
            vad_silence_ms=vad_silence_ms,
        )

    def held_ms(self, now: float) -> float:
        """How long the caller heard the bot stopped, over this pause's spells."""
        return (self.quiet_s + (0.0 if self.playing else now - self.started)) * 1000

    def heard_text(self) -> str | None:
        words = [self.transcripts[i] for i in self.items if i in self.transcripts]
        return " ".join(words) if words else None


class AdaptiveTurns:
    def __init__(self, ctx: CallContext, line: LineControl, spawn: Spawn) -> None:
        self._ctx = ctx
        self._line = line
        self._spawn = spawn
        settings, meta = ctx.settings, ctx.prompt.meta
        self.rules = Rules(
            long_speech_ms=settings.interruption_long_speech_ms,
            short_speech_ms=settings.interruption_short_speech_ms,
            transcript_wait_ms=settings.interruption_transcript_wait_ms,
            max_pause_ms=settings.interruption_max_pause_ms,
            confirm_ms=settings.early_barge_in_confirm_ms,
            min_words=settings.interruption_min_words,
            resume_quiet_ms=settings.interruption_resume_quiet_ms,
        )
        policy = meta.interruptions
        languages = policy.languages or [meta.language or "en", "en"]
        self.words = WordLists.for_languages(languages, policy.backchannels, policy.stop_words)
        self._onset_ms = settings.early_barge_in_onset_ms
        self._silence_ms = self._prompt_silence_ms = session_config.vad_silence_ms(ctx.prompt)
        self._padding_ms = session_config.prefix_padding_ms(ctx.prompt)
        self.pause: Pause | None = None
        self._fates: dict[str, str] = {}  # caller item -> turn | pending | cut | resumed | echo
        self._vad_item: str | None = None  # the caller item the model's VAD is in, if any
        self._onsets_ignored_until = 0.0  # until then, only a voiced onset pauses
        self._all_onsets_ignored_until = 0.0  # until then, none does
        self._noise_resumed_at = float("-inf")
        self.local: SpeechOnset | None = None  # the caller's line detector (`CallerAudio`), if any
        self._heard_at = float("-inf")  # the latest frame the detector heard (playout clock)
        self._sound = asyncio.Event()  # set on every frame the detector hears
        self._held_answer: str | None = None  # a cut turn answered once the caller has finished, not at a breath

    # --- evidence in -------------------------------------------------------------------------------------------

    async def on_onset(self, *, caller_speaking: bool, voiced: bool = True) -> None:
        ctx = self._ctx
        now = ctx.playout.clock()
        if self.pause is not None and self.pause.playing and now >= self._all_onsets_ignored_until:
            await self._hold_again(self.pause)  # the caller goes on after the murmur the bot played on over
            return
        if self.pause is not None or self._line.line is not Line.PLAYING or ctx.ending.closing:
            return
        if caller_speaking and self._fates.get(self._vad_item or "") not in ("echo", "resumed"):
            return  # the model already hears the caller: its speech_started came (and was dealt with)
        if now < self._all_onsets_ignored_until or not ctx.playout.is_audible(now):
            return
        if now < self._onsets_ignored_until and not voiced:
            return
        # While the VAD hears what it took for echo, the caller's onset joins that item: it had the caller in it.
        await self._start("onset", now - self._onset_ms / 1000, self._vad_item if caller_speaking else None)

    async def on_speech_started(self, item_id: str, audio_start_ms: int) -> None:
        ctx = self._ctx
        self._vad_item = item_id
        self._held_answer = None  # the caller went on: this item's commit is answered, with all they said
        if ctx.ending.closing:
            return
        now = ctx.playout.clock()
        if self.pause is not None:
            if self.pause.playing and ctx.sound.echo_at > ctx.sound.caller_at:
                self._fates[item_id] = "echo"  # the bot, played on, came back: not the caller's murmur
                return
            self._attach(self.pause, item_id, audio_start_ms)
            return
        if self._line.line is Line.PLAYING and ctx.playout.is_audible(now):
            if ctx.echo is not None and ctx.sound.echo_only(now):
                self._fates[item_id] = "echo"
                self._report(Verdict.RESUME, "echo", 0.0, None, "vad")
                return
            local = self.local
            if now - self._noise_resumed_at < 1.0 and local is not None and local.voiced_ms == 0:
                self._fates[item_id] = "resumed"  # the noise just resumed over; a voice in it pauses again
                return
            if await self._start("vad", now, item_id, audio_start_ms) is not None:
                return
        self._fates[item_id] = "turn"
        if ctx.responses.active:
            await self._line.cancel_unheard_answer()

    def on_speech_stopped(self, item_id: str, audio_end_ms: int) -> None:
        if self._vad_item == item_id:
            self._vad_item = None
        pause = self.pause
        if pause is None or not pause.items or pause.items[-1] != item_id:
            return
        pause.stopped_at = self._ctx.playout.clock()
        if pause.audio_start_ms is not None:
            spoken = audio_end_ms - self._silence_ms - pause.audio_start_ms - self._padding_ms
            pause.speech_ms = max(0.0, spoken, (pause.stopped_at - pause.speech_from) * 1000 - self._silence_ms)
        else:
            pause.speech_ms = max(0.0, (pause.stopped_at - pause.speech_from) * 1000 - self._silence_ms)
        pause.changed.set()

    def on_local_sound(self, loud: bool) -> None:
        """A frame of the caller's line went through the detector: new local evidence for a pause."""
        self._heard_at = self._ctx.playout.clock()
        self._sound.set()
        pause = self.pause
        if pause is not None:
            pause.local = pause.local or loud
            if self.local is not None:
                pause.voiced_ms = max(pause.voiced_ms, self.local.voiced_ms)
            pause.changed.set()

    def on_transcript(self, item_id: str, text: str) -> None:
        pause = self.pause
        if pause is not None and item_id in pause.items:
            pause.transcripts[item_id] = text
            pause.changed.set()

    async def on_committed(self, item_id: str) -> None:
        """The server closed a caller turn: answer it, forget it, or (mid-pause) let the decision say which."""
        fate = self._fates.pop(item_id, "turn")
        pause = self.pause
        if fate == "pending" and pause is not None and item_id in pause.items:
            self._fates[item_id] = fate
            pause.committed.add(item_id)
            pause.changed.set()
        elif fate in ("resumed", "echo"):
            await self._forget(item_id)
        else:
            await self._answer(item_id)

    def abandon(self) -> None:
        """The line was lost or the hold ended otherwise: the pause's turns count as real ones."""
        pause, self.pause = self.pause, None
        if pause is None:
            return
        self._spawn(self._vad_silence(None), "vad-silence")
        for item_id in pause.items:
            self._fates[item_id] = "cut"
        pause.changed.set()

    # --- the pause -------------------------------------------------------------------------------------------

    def _attach(self, pause: Pause, item_id: str, audio_start_ms: int | None) -> None:
        if item_id not in pause.items:
            pause.items.append(item_id)
        self._fates[item_id] = "pending"
        pause.audio_start_ms = audio_start_ms
        pause.stopped_at = pause.speech_ms = None
        pause.changed.set()

    async def _start(
        self, source: str, speech_from: float, item_id: str | None = None, audio_start_ms: int | None = None
    ) -> Pause | None:
        ctx = self._ctx
        now = ctx.playout.clock()
        if not self._line.hold_line("pause"):
            return None
        self.pause = pause = Pause(now, source, speech_from, audio_start_ms=audio_start_ms, local=source == "onset")
        if item_id is not None:
            self._attach(pause, item_id, audio_start_ms)
        self._spawn(self._watch(pause), "interruption-pause")
        pause.clear_ms = await self._line.send_clear()
        if self.pause is pause:
            await self._vad_silence(PAUSE_VAD_SILENCE_MS)
        return pause

    async def _hold_again(self, pause: Pause) -> None:
        if not self._line.hold_line("pause"):
            return
        pause.playing, pause.local = False, True
        pause.started = self._ctx.playout.clock()
        pause.clear_ms = await self._line.send_clear()
        pause.changed.set()

    def _play_on(self, pause: Pause, decision: Decision) -> None:
        """PLAY: the held audio plays on; the pause stays open for the transcript."""
        ctx = self._ctx
        now = ctx.playout.clock()
        pause.quiet_s += now - pause.started
        pause.playing = True
        pause.plays += 1
        self._line.release_held()
        if ctx.echo is not None:
            ctx.echo.rearm()  # a sound that stopped with the bot may have been its echo: it comes back now
        ctx.record.event(
            "interruption_playing", reason=decision.reason, paused_ms=round(pause.quiet_s * 1000), source=pause.source
        )

    async def _vad_silence(self, silence_ms: float | None) -> None:
        """A murmur's turn closes sooner while the bot is paused (its transcript decides): the server VAD's silence
        is shortened for the pause and put back when it ends. The `session.update` names only turn_detection."""
        update = session_config.turn_detection_update(self._ctx.prompt, silence_ms=silence_ms)
        if update is None:
            return
        self._silence_ms = self._prompt_silence_ms if silence_ms is None else silence_ms
        await self._ctx.link.send(update)

    async def _watch(self, pause: Pause) -> None:
        while self.pause is pause:
            pause.changed.clear()
            evidence = pause.evidence(self._ctx.playout.clock(), self.local, self._silence_ms)
            if self._echo_ended(pause, evidence):
                evidence = replace(evidence, echo=True)
            else:
                evidence = replace(evidence, echo_pending_ms=self._echo_pending_ms(pause, evidence))
            decision = decide(evidence, self.rules, self.words)
            if decision.verdict is Verdict.PLAY:
                self._play_on(pause, decision)
                continue
            if decision.verdict is not Verdict.WAIT:
                await self._settle(pause, decision)
                return
            await wait_event(pause.changed, (decision.recheck_ms or 50.0) / 1000)

    def _echo_ended(self, pause: Pause, evidence: Evidence) -> bool:
        """The sound that paused the bot stopped one echo delay after the bot did, and followed its voice: an echo
        that began after the line had shown none (`EchoEstimator.followed_bot`). No need to wait for quiet, and its
        transcript, if the model's VAD took it for speech, is the bot's own words."""
        echo = self._echo_judges(pause, evidence)
        return (
            echo is not None
            and evidence.local_quiet_ms is not None
            and evidence.local_quiet_ms >= ECHO_END_MS
            and echo.followed_bot(pause.speech_from)
        )

    def _echo_judges(self, pause: Pause, evidence: Evidence) -> EchoEstimator | None:
        """The echo estimator, when it can judge this pause's sound by its end: the line's detector heard the sound,
        and the bot is held (not played on)."""
        echo = self._ctx.echo
        judges = echo is not None and pause.local and not pause.playing and evidence.local_quiet_ms is not None
        return echo if judges else None

    def _echo_pending_ms(self, pause: Pause, evidence: Evidence) -> float:
        """How much longer words that would cut should wait for `_echo_ended` to judge the sound: it may be the bot's
        echo (whose transcript is the bot's own words) until it has been over `ECHO_END_MS`, and an echo outlasts
        the bot by its delay at most. 0 when there is nothing to wait for: a real caller's words come after they
        stopped (the VAD's silence, then the transcript), so only an echo's words can come this early."""
        echo = self._echo_judges(pause, evidence)
        if echo is None or evidence.local_quiet_ms is None or evidence.local_quiet_ms >= ECHO_END_MS:
            return 0.0  # nothing to judge, or over long enough: `_echo_ended` has had its say
        return max(0.0, echo.max_delay_ms + ECHO_END_MS - evidence.paused_ms)

    async def _settle(self, pause: Pause, decision: Decision) -> None:
        await self._decided(pause, decision)
        if self.pause is None:
            await self._vad_silence(None)

    async def _decided(self, pause: Pause, decision: Decision) -> None:
        ctx = self._ctx
        self.pause = None
        paused_ms = pause.held_ms(ctx.playout.clock())
        text = pause.heard_text()
        self._report(decision.verdict, decision.reason, paused_ms, text, pause.source, pause.plays > 0)
        if decision.verdict is Verdict.CUT:
            for item_id in pause.items:
                self._fates[item_id] = "cut"
            if pause.playing:
                await self._line.cut_playing(decision.reason, paused_ms, text)
            else:
                await self._line.cut_held(decision.reason, paused_ms, pause.clear_ms, text)
            # One answer, once the caller's turn is whole: while paused the VAD's short silence may have split
            # their sentence at a breath ("okay, | stop, I meant Tuesday"); a part still open answers on its commit.
            committed = [i for i in pause.items if i in pause.committed]
            for item_id in committed:
                self._fates.pop(item_id, None)
            if committed and (self._vad_item is None or self._vad_item not in pause.items):
                self._held_answer = committed[-1]
                self._spawn(self._answer_once_done(committed[-1]), "answer-when-done")
            return
        self._line.release_held()
        ctx.metrics.early_clear_false_alarms.inc()
        now = ctx.playout.clock()
        if decision.reason == "no_speech":
            # A sound the model never took for speech (often the bot's own echo, stopping when the bot did):
            # no onset pauses the bot again for a while, voiced or not.
            self._onsets_ignored_until = self._all_onsets_ignored_until = now + NOISE_BACKOFF_S
            if ctx.echo is not None:
                ctx.echo.rearm()
        elif decision.reason == "noise" and not pause.transcripts:
            self._onsets_ignored_until = now + NOISE_BACKOFF_S  # only a voiced onset: a cough, then words
            self._noise_resumed_at = now
        for item_id in pause.items:
            self._fates[item_id] = "resumed"
            if item_id in pause.committed:
                self._fates.pop(item_id, None)
                await self._forget(item_id)

    def _report(
        self, verdict: Verdict, reason: str, paused_ms: float, text: str | None, source: str, played: bool = False
    ) -> None:
        """`played`: the bot had played on (PLAY) before this verdict."""
        outcome = "cut" if verdict is Verdict.CUT else "resumed"
        self._ctx.record.event(
            "interruption",
            outcome=outcome,
            reason=reason,
            paused_ms=round(paused_ms),
            transcript=text,
            source=source,
            played_on=played,
        )

    # --- the caller's turns ---------------------------------------------------------------------------------

    async def _answer_once_done(self, item_id: str) -> None:
        """Answer a cut turn once the caller has been quiet for `Rules.turn_end_ms` on the line: its words may
        have come at a breath ("wait, | wait, I meant..."). If they go on, the VAD's next item takes over (its
        commit is answered) and this answer is dropped."""
        end_ms, since = self.rules.turn_end_ms, self._ctx.playout.clock()
        while self._held_answer == item_id:
            now = self._ctx.playout.clock()
            # The line's own quiet, in audio heard (late frames under load are still counted); once the detector
            # is not fed any more (the bot's echo tail is over), the time since it last was.
            detector = self.local
            if detector is not None and now - self._heard_at < FED_S:
                quiet_ms = detector.quiet_ms
            else:
                quiet_ms = (now - max(since, self._heard_at)) * 1000
            if quiet_ms >= end_ms:
                self._held_answer = None
                await self._answer(item_id)
                return
            self._sound.clear()
            await wait_event(self._sound, max(end_ms - quiet_ms, 20.0) / 1000)

    async def _answer(self, item_id: str) -> None:
        """A real turn: ask for its answer now (after the interrupted answer's end, if that is still on its way)."""
        self._ctx.record.event("turn_answer_requested", item_id=item_id)
        await self._ctx.responses.request()

    async def _forget(self, item_id: str) -> None:
        """Not a turn: out of the model's conversation (and never re-told to a new session)."""
        ctx = self._ctx
        ctx.record.dismiss(item_id)
        if ctx.turns.turn_item == item_id:
            ctx.turns.answered()
        ctx.record.event("caller_item_deleted", item_id=item_id)
        await ctx.link.send(client_commands.delete_item(item_id))
