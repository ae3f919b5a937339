"""Leaving a voicemail on an answering machine: wait for its greeting (and beep) to end, say the prompt's message
once, hang up when it has played.

Vobiz's machine detection says *that* a machine answered, not *when* it starts recording: speaking at once would
put the message over the greeting, where nobody hears it. So the callee's audio is watched frame by frame
(`GreetingEnd`): a beep (a steady pure tone) followed by quiet ends the greeting at once; otherwise a stretch of
quiet after the greeting does; a machine that says nothing, or one that never stops, gets the message after a
bounded wait. Meanwhile nothing the machine says reaches the model (it is no caller turn to answer) and any bot
audio already asked for (a greeting) is muted and cancelled.

While it waits, the caller's frames are diverted here instead of to the model (`CallerAudio.divert`) and the
interruption state machine drops any bot audio but the message's (`Interruption.admit_only`); the call runs `run`
in its task group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import NoReturn, Protocol

import numpy as np

from agent.audio.codecs import Int16Array
from agent.calls.caller_audio import CallerAudio
from agent.calls.context import CallContext
from agent.calls.interruption import Interruption
from agent.calls.outcome import EndAction
from agent.prompts.schema import AnsweringMachine
from agent.waiting import wait_event

log = logging.getLogger("agent.voicemail")

ANSWERED_BY_TAG = "answered_by"
LOUD_RMS = 350.0  # int16 RMS of a frame that counts as sound (speech, a beep), well above line noise
MIN_GREETING_MS = 300.0  # less sound than this is not a greeting yet (a click, a breath)
BEEP_MIN_MS = 120.0  # a pure tone at least this long is the record beep
BEEP_PURITY = 0.6  # share of a frame's energy within ±1 bin of its peak for it to be a tone
BEEP_BAND_HZ = (400.0, 2600.0)
AFTER_BEEP_MS = 150.0  # quiet after the beep before speaking: recording has started
NO_GREETING_MS = 5000.0  # a machine that says nothing: speak after this much silence from the start


class GreetingEnd:
    """Decides, one frame at a time, when an answering machine's greeting is over; `reason` says why."""

    def __init__(self, silence_ms: float, no_greeting_ms: float = NO_GREETING_MS) -> None:
        self.silence_ms = silence_ms
        self.no_greeting_ms = no_greeting_ms
        self.elapsed_ms = 0.0
        self.sound_ms = 0.0
        self.quiet_run_ms = 0.0
        self.tone_run_ms = 0.0
        self.beep_ended_at: float | None = None
        self.reason: str | None = None

    def feed(self, pcm: Int16Array, rate: int) -> bool:
        """Add one frame; True once the greeting is over (and from then on)."""
        if self.reason is not None or pcm.size == 0:
            return self.reason is not None
        ms = pcm.size * 1000.0 / rate
        self.elapsed_ms += ms
        samples = pcm.astype(np.float64)
        loud = float(np.sqrt(np.mean(samples * samples))) >= LOUD_RMS
        if loud:
            self.sound_ms += ms
            self.quiet_run_ms = 0.0
            if _is_tone(samples, rate):
                self.tone_run_ms += ms
            else:
                self._tone_ended()
        else:
            self._tone_ended()
            self.quiet_run_ms += ms
        if self.beep_ended_at is not None and self.quiet_run_ms >= AFTER_BEEP_MS:
            self.reason = "beep"
        elif self.sound_ms >= MIN_GREETING_MS and self.quiet_run_ms >= self.silence_ms:
            self.reason = "silence"
        elif self.sound_ms < MIN_GREETING_MS and self.elapsed_ms >= self.no_greeting_ms:
            self.reason = "no_greeting"
        return self.reason is not None

    def _tone_ended(self) -> None:
        if self.tone_run_ms >= BEEP_MIN_MS:
            self.beep_ended_at = self.elapsed_ms
        self.tone_run_ms = 0.0


def _is_tone(samples: np.ndarray, rate: int) -> bool:
    """A frame whose energy sits in one narrow peak inside the beep band: a beep, not speech or noise."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size))) ** 2
    total = float(spectrum.sum())
    if total <= 0:
        return False
    peak = int(np.argmax(spectrum))
    hz = peak * rate / samples.size
    if not BEEP_BAND_HZ[0] <= hz <= BEEP_BAND_HZ[1]:
        return False
    return float(spectrum[max(peak - 1, 0) : peak + 2].sum()) / total >= BEEP_PURITY


class VoicemailHost(Protocol):
    """What leaving a message needs of the call."""

    @property
    def ctx(self) -> CallContext: ...

    @property
    def interruption(self) -> Interruption: ...

    @property
    def caller(self) -> CallerAudio: ...

    async def say(self, guidance: str) -> bool: ...

    async def finish(self, action: EndAction, reason: str) -> NoReturn: ...


class Voicemail:
    """One call's voicemail: greeting-end detection, the bot muted until the message, the message, the hang-up."""

    def __init__(self, host: VoicemailHost, policy: AnsweringMachine) -> None:
        self._host = host
        self.policy = policy
        self.detector = GreetingEnd(policy.silence_ms)
        self.greeting_over = asyncio.Event()
        self.speaking = False
        self.started = time.monotonic()
        host.caller.divert = self.feed  # a machine's greeting is no caller turn for the model to answer
        host.interruption.admit_only(lambda _response_id: self.speaking)  # nothing is heard before the message

    def feed(self, pcm: Int16Array) -> None:
        """A frame of the machine's audio."""
        if self.greeting_over.is_set():
            return
        if self.detector.feed(pcm, self._host.ctx.format.rate):
            self.greeting_over.set()
        else:
            self._host.caller.active()  # the machine is talking: no idle reminder over it

    async def run(self) -> None:
        """Stop whatever the bot was saying, wait for the greeting to end (bounded), say the message, hang up
        once it has played."""
        host = self._host
        ctx = host.ctx
        await ctx.link.ready.wait()
        await host.interruption.silence()
        over = await wait_event(self.greeting_over, self.policy.max_wait_s)
        reason = self.detector.reason if over else "max_wait"
        waited_ms = round((time.monotonic() - self.started) * 1000)
        ctx.record.event("voicemail_greeting_end", reason=reason, waited_ms=waited_ms)
        await host.interruption.silence()  # whatever is being said now was not the message
        self.speaking = True
        message = self.policy.message or ""
        heard = await host.say(
            "You have reached an answering machine and it is recording now. Leave this message, word for "
            f"word, and nothing else: {message}"
        )
        ctx.record.tags["voicemail"] = "left" if heard else "not_confirmed"
        ctx.record.event("voicemail_left", heard=heard)
        ctx.log.info("voicemail %s after greeting end (%s)", "left" if heard else "sent", reason)
        await host.finish(EndAction.HANGUP, "voicemail_left")


def policy_for(ctx: CallContext, *, answered_by_machine: bool) -> AnsweringMachine | None:
    """The prompt's voicemail policy when a machine answered and the prompt leaves a message, else None."""
    policy = ctx.prompt.meta.answering_machine
    if policy is None or policy.action != "voicemail" or not answered_by_machine:
        return None
    return policy


def at_answer(ctx: CallContext) -> AnsweringMachine | None:
    """Voicemail mode from the start: synchronous detection tagged the call as answered by a machine."""
    return policy_for(ctx, answered_by_machine=ctx.record.tags.get(ANSWERED_BY_TAG) == "machine")
