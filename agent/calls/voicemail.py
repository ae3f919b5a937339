"""Leaving a voicemail on an answering machine: wait for its greeting (and beep) to end, say the prompt's message
once, hang up when it has played.

Vobiz's machine detection says *that* a machine answered, not *when* it starts recording: speaking at once would
put the message over the greeting, where nobody hears it. So the callee's audio is watched frame by frame
(`GreetingEnd`): a beep (a steady pure tone) followed by quiet ends the greeting at once; otherwise a stretch of
quiet after the greeting does; a machine that says nothing, or one that never stops, gets the message after a
bounded wait. Meanwhile nothing the machine says reaches the model (it is no caller turn to answer) and any bot
audio already asked for (a greeting) is muted and cancelled.

The call keeps a `voicemail` attribute (None for a person) and calls `feed` for caller frames, `mutes` for bot
audio and `run` in its task group; see the `[voicemail hook]` lines in `agent.calls.call`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.audio.codecs import Int16Array
from agent.carrier import messages
from agent.prompts.schema import AnsweringMachine
from agent.waiting import wait_event

if TYPE_CHECKING:
    from agent.calls.call import Call

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


class Voicemail:
    """One call's voicemail: greeting-end detection, the bot muted until the message, the message, the hang-up."""

    def __init__(self, call: Call, policy: AnsweringMachine) -> None:
        self.call = call
        self.policy = policy
        self.detector = GreetingEnd(policy.silence_ms)
        self.greeting_over = asyncio.Event()
        self.speaking = False
        self.muted: set[str] = set()
        self.started = time.monotonic()

    def feed(self, pcm: Int16Array) -> None:
        """A frame of the machine's audio; it never goes to the model (there is no caller turn to answer)."""
        if self.greeting_over.is_set():
            return
        if self.detector.feed(pcm, self.call.format.rate):
            self.greeting_over.set()
        else:
            self.call.caller_activity = time.monotonic()  # the machine is talking: no idle reminder over it
            self.call.activity.set()

    def mutes(self, response_id: str, item_id: str) -> bool:
        """Bot audio of a response asked for before the message (a greeting) is dropped and the response
        cancelled; only responses asked for once the greeting is over are heard."""
        if self.speaking and response_id not in self.muted:
            return False
        self.mute(response_id)
        self.call.interrupted_items.add(item_id)
        return True

    def mute(self, response_id: str) -> None:
        if response_id in self.muted:
            return
        self.muted.add(response_id)
        self.call.interrupted_responses.add(response_id)
        self._spawn(self.call.model_send({"type": "response.cancel", "response_id": response_id}), "voicemail-cancel")

    def _spawn(self, job: Coroutine[Any, Any, Any], name: str) -> None:
        group = self.call._tg
        if group is None:
            job.close()
            return
        try:
            group.create_task(job, name=name)
        except RuntimeError:  # the call's task group is shutting down: the call is ending anyway
            job.close()

    async def run(self) -> None:
        """Wait for the greeting to end (bounded), say the message, hang up once it has played."""
        from agent.calls.call import EndAction

        call = self.call
        over = await wait_event(self.greeting_over, self.policy.max_wait_s)
        reason = self.detector.reason if over else "max_wait"
        waited_ms = round((time.monotonic() - self.started) * 1000)
        call.record.event("voicemail_greeting_end", reason=reason, waited_ms=waited_ms)
        await call.model_ready.wait()
        if call.responses.active_id:
            self.mute(call.responses.active_id)  # whatever is being said now was not the message
        self.speaking = True
        message = self.policy.message or ""
        heard = await call.say(
            "You have reached an answering machine and it is recording now. Leave this message, word for "
            f"word, and nothing else: {message}"
        )
        call.record.tags["voicemail"] = "left" if heard else "not_confirmed"
        call.record.event("voicemail_left", heard=heard)
        log.info("call %s: voicemail %s after greeting end (%s)", call.call_id, "left" if heard else "sent", reason)
        await call.finish(EndAction.HANGUP, "voicemail_left")


def for_call(call: Call) -> Voicemail | None:
    """Voicemail mode from the start: Vobiz said at answer time that a machine answered (synchronous
    detection) and the prompt leaves a message."""
    policy = call.prompt.meta.answering_machine
    if policy is None or policy.action != "voicemail" or call.record.tags.get(ANSWERED_BY_TAG) != "machine":
        return None
    return Voicemail(call, policy)


def engage(call: Call) -> None:
    """Voicemail mode mid-call (asynchronous detection): stop talking over the greeting, then as above."""
    policy = call.prompt.meta.answering_machine
    if policy is None or policy.action != "voicemail" or call.voicemail is not None or call.closing:
        return
    vm = Voicemail(call, policy)
    call.voicemail = vm
    call.record.event("voicemail_engaged")
    if call.responses.active_id:
        vm.mute(call.responses.active_id)
    if call.playout.is_audible():
        call.playout.clear()
        vm._spawn(call._send_carrier(messages.clear_audio(call.stream_id)), "voicemail-clear")
    vm._spawn(vm.run(), "voicemail")
