"""The caller's side of a call: their audio from the carrier into the model, their key presses, and when they last
made a sound (what the idle watcher and the session switch need to know)."""

from __future__ import annotations

import asyncio
import binascii
import time
from collections import deque
from collections.abc import Callable

from agent.audio.codecs import Int16Array
from agent.audio.speech_onset import SpeechOnset
from agent.audio.transcode import CallerAudioConverter
from agent.calls.context import CallContext, pcm16
from agent.calls.interruption import Interruption, Spawn
from agent.carrier.inbound_rate import InboundRateLimiter
from agent.model.connection import MODEL_ERRORS
from agent.protocol.realtime import client_commands

_ECHO_TAIL_S = 0.4  # after the bot stops, its echo may still be on the way back
Drop = Callable[[str, str], None]  # (reason, detail): an inbound message counted and dropped


class CallerAudio:
    def __init__(self, ctx: CallContext, interruption: Interruption, drop: Drop, spawn: Spawn) -> None:
        self._ctx = ctx
        self._interruption = interruption
        self._drop = drop
        self._spawn = spawn
        settings = ctx.settings
        self._converter = CallerAudioConverter(ctx.format, settings.l16_byte_order)
        self._passthrough = ctx.format.is_mulaw  # the model takes the carrier's μ-law as it is
        self._bytes_per_s = ctx.format.bytes_per_ms * 1000
        # A token holder must not pump audio into the model session (and the bill) faster than a phone line can.
        self._rate = InboundRateLimiter(settings.inbound_audio_max_rate, settings.inbound_audio_burst_s)
        mode = settings.interruption_mode
        self._onset = SpeechOnset(onset_ms=settings.early_barge_in_onset_ms) if mode != "immediate" else None
        if self._onset is not None:
            interruption.listen(self._onset)
        self._echo = ctx.echo if mode == "adaptive" else None
        # The stream's position, in carrier bytes: every frame counts, whether the echo model is shown it or not.
        self._received = 0
        self._queue: deque[bytes] = deque()
        self._queued_ms = 0.0
        self._data = asyncio.Event()
        self._sending = False  # the pump is handing a backlog to the model
        # Frames read in this pass of the event loop, written together at its end (one, unless it fell behind).
        self._batch: list[tuple[bytes, str | None]] = []
        self._batch_ms = 0.0
        self._bytes_per_ms = ctx.format.model_bytes_per_ms
        # The loop's call_soon, looked up once: `asyncio.get_running_loop()` makes a getpid system call each time
        # (CPython checks for a fork), and `_forward` would ask 50 times a second per call.
        self._call_soon: Callable[[Callable[[], None]], object] | None = None
        self._dtmf: list[str] = []
        self._dtmf_task: asyncio.Task[None] | None = None
        self.speaking = False
        self.last_sound = time.monotonic()
        # Set while the callee's audio is no turn for the model (an answering machine's greeting): frames go here.
        self.divert: Callable[[Int16Array], None] | None = None

    @property
    def queued(self) -> bool:
        return bool(self._queue) or bool(self._batch)

    @property
    def queued_ms(self) -> float:
        """Caller audio that arrived but was not handed to the model yet."""
        return self._queued_ms + self._batch_ms

    def active(self, *, speaking: bool | None = None) -> None:
        """The caller made a sound (or the model's VAD says they started or stopped talking)."""
        if speaking is not None:
            self.speaking = speaking
        self.last_sound = time.monotonic()
        self._ctx.activity.set()

    async def on_media(self, payload_b64: str) -> None:
        ctx = self._ctx
        try:
            # `base64.b64decode(validate=True)` less its Python layer: the same strict check, the same errors
            # (binascii.Error; ValueError for a non-ASCII string).
            payload = binascii.a2b_base64(payload_b64, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            self._drop("bad_audio", str(exc))
            return
        if not self._rate.admit(len(payload) / self._bytes_per_s, time.monotonic()):
            self._drop("too_fast", "caller audio arriving faster than real time")
            return
        position = self._received  # of this frame, in bytes
        self._received += len(payload)
        if self._passthrough:
            audio = payload
        else:
            try:
                audio = self._converter.convert(payload)
            except ValueError as exc:
                self._drop("bad_audio", str(exc))
                return
        recorder = ctx.recorder
        if recorder is not None and recorder.mulaw:
            recorder.caller_mulaw(payload)  # as it came: decoded when the file is written, off the event loop
            recorder = None
        # Samples only for whoever needs them now: most frames of a call need none (the bot is silent).
        pcm = None
        listening_at = self._listening_at()
        if self.divert is not None or recorder is not None or listening_at is not None:
            pcm = pcm16(ctx.format, payload, self._converter.big_endian)  # once, for all who need samples
        if self.divert is not None and pcm is not None:
            self.divert(pcm)
        elif audio:
            # The carrier's own base64 goes on unchanged when the model takes the same bytes (μ-law).
            self._forward(audio, payload_b64 if self._passthrough else None)
        if pcm is not None and recorder is not None:
            recorder.caller(pcm, ctx.format.rate)
        if pcm is not None and listening_at is not None:
            await self._detect(pcm, listening_at, position)
        elif self._onset is not None:
            self._onset.reset()  # no sound in progress while the bot (and its echo) is silent

    def _listening_at(self) -> float | None:
        """The playout clock now if the onset detector wants this frame (the bot audible, or its echo may still
        come back); None otherwise, and for most frames of a call. Asked once per frame."""
        if self._onset is None:
            return None
        playout = self._ctx.playout
        now = playout.clock()
        return now if playout.is_audible(now) or now < playout.idle_at() + _ECHO_TAIL_S else None

    async def _detect(self, pcm: Int16Array, now: float, position: int) -> None:
        """While the bot is audible (and its echo may still come back): is the caller starting to talk over it?
        `position`: the frame's in the stream, in carrier bytes."""
        ctx, onset = self._ctx, self._onset
        assert onset is not None
        echo = self._echo is not None and self._echo.inbound(pcm, now, position // ctx.format.bytes_per_sample)
        fired = onset.feed(pcm, ctx.format.rate, echo=echo)
        if echo:
            ctx.sound.echo_at = now
        elif onset.loud:
            ctx.sound.caller_at = now
        if fired:
            await self._interruption.on_onset(caller_speaking=self.speaking, voiced=onset.voiced_ms > 0)
        self._interruption.on_local_sound(onset.loud)

    def _forward(self, audio: bytes, audio_b64: str | None) -> None:
        """Send a frame to the model without a second task: it joins the frames read in this pass of the event
        loop, written together at its end (`_flush`, one write a frame while the loop keeps up, fewer when it
        fell behind). Only a backlog (the model link not ready or its socket's buffer full, or the pump still
        sending earlier audio) goes through the queue and the pump: waking a second task for every frame cost
        more than the rest of the frame's handling."""
        ctx = self._ctx
        ms = len(audio) / self._bytes_per_ms
        ctx.latency.caller_frame(ms, ctx.playout.clock())
        if not self._batch:
            link = ctx.link
            if self._queue or self._sending or link.socket is None or not link.ready.is_set():
                self._enqueue(audio, ms)
                return
            call_soon = self._call_soon
            if call_soon is None:
                call_soon = self._call_soon = asyncio.get_running_loop().call_soon
            call_soon(self._flush)
        # While a batch waits the queue stays empty and the pump idle, so the order of the frames is kept.
        self._batch.append((audio, audio_b64))
        self._batch_ms += ms

    def _flush(self) -> None:
        batch, self._batch, self._batch_ms = self._batch, [], 0.0
        if not batch:
            return
        link = self._ctx.link
        model = link.socket
        if len(batch) == 1:
            audio, audio_b64 = batch[0]
            if audio_b64 is not None and len(audio_b64) == 4 * ((len(audio) + 2) // 3):  # canonical, as ours
                text = client_commands.append_audio_b64_json(audio_b64)
            else:
                text = client_commands.append_audio_json(audio)
        else:
            audio = b"".join(frame for frame, _ in batch)
            text = client_commands.append_audio_json(audio)
        try:
            sent = model is not None and link.ready.is_set() and model.send_now(text)
        except MODEL_ERRORS:
            # The model reader notices the drop and reconnects; the pump gives this audio to the new session.
            sent = False
            link.ready.clear()
        if not sent:  # not ready since, or the socket is holding back writes: the pump waits for it
            for frame, _ in batch:
                self._enqueue(frame, len(frame) / self._bytes_per_ms)
            return
        self._ctx.turns.sent(audio)

    def _enqueue(self, audio: bytes, ms: float) -> None:
        """Bounded: if the model side stalls, the oldest caller audio goes first and is counted."""
        self._queue.append(audio)
        self._queued_ms += ms
        while self._queued_ms > self._ctx.settings.caller_queue_ms and len(self._queue) > 1:
            dropped = self._queue.popleft()
            ms = len(dropped) / self._bytes_per_ms
            self._queued_ms -= ms
            self._ctx.metrics.caller_audio_dropped_ms.inc(ms)
        self._data.set()

    async def pump(self) -> None:
        """Forward the caller audio that queued up while the model link was not ready (or still sending earlier
        audio), all together once it is."""
        link = self._ctx.link
        while True:
            await self._data.wait()
            await link.ready.wait()
            model = link.socket
            if model is None or not self._queue:
                self._data.clear()
                continue
            audio = b"".join(self._queue)
            self._queue.clear()
            self._queued_ms = 0.0
            self._data.clear()
            self._sending = True
            try:
                await model.send_text(client_commands.append_audio_json(audio))
                self._ctx.turns.sent(audio)
            except MODEL_ERRORS:
                # The model reader notices the drop and reconnects; keep this audio for the new session.
                self._queue.appendleft(audio)
                self._queued_ms += len(audio) / self._bytes_per_ms
                link.ready.clear()
            finally:
                self._sending = False

    def on_dtmf(self, digit: str) -> None:
        """Collect key presses and hand them to the model together, after a pause or on '#'."""
        self._ctx.record.event("dtmf", digit=digit)
        self.active()
        self._dtmf.append(digit)
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
        delay = 0.0 if digit == "#" else self._ctx.settings.dtmf_flush_s
        self._dtmf_task = self._spawn(self._flush_dtmf(delay), "dtmf")

    async def _flush_dtmf(self, delay: float) -> None:
        await asyncio.sleep(delay)
        digits, self._dtmf = "".join(self._dtmf), []
        if not digits:
            return
        self._ctx.record.system_note(f"keypad: {digits}")
        await self._ctx.link.send(client_commands.message("user", f"[The caller pressed keypad keys: {digits}]"))
        await self._ctx.responses.request()
