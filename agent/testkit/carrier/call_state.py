"""A simulated call's state, what tests read of it, and the caller's actions (say, hang up, transfer...).

The call is assembled from mixins, one per concern: this state, the bot audio's playout (:mod:`playout`) and the
stream itself (:mod:`call`)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from agent.audio.codecs import (
    Int16Array,
)
from agent.testkit.carrier.audio import Cue, ScriptItem, Segment, StreamFormat, as_cue_or_segment, resample
from agent.testkit.carrier.fastsend import can_send_now, write_text
from agent.testkit.carrier.records import (
    _EMPTY,
    DTMF_DIGITS,
    ClearRecord,
    EndReason,
    SimulationError,
    TimelineEntry,
    XmlAction,
)
from agent.testkit.carrier.ticker import Ticker, TickHandle, ticker
from agent.testkit.carrier.webhooks import CallContext, max_retries, wall_time

# ----------------------------------------------------------------------------------------------------------
# The call
# ----------------------------------------------------------------------------------------------------------


@dataclass
class QueuedAudio:
    samples: Int16Array
    received: float
    pos: int = 0

    @property
    def remaining(self) -> int:
        return len(self.samples) - self.pos

    def take(self, n: int) -> Int16Array:
        chunk = self.samples[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk


@dataclass(frozen=True)
class Mark:
    name: str


def _describe_predicate(predicate: Callable[[], bool]) -> str:
    with contextlib.suppress(OSError, TypeError):
        return inspect.getsource(predicate).strip()
    return getattr(predicate, "__qualname__", repr(predicate))


class CallState:
    """A simulated call's state and its public reading and waiting API; :class:`SimCall` is the whole."""

    def __init__(
        self,
        *,
        ctx: CallContext,
        xml: str,
        stream_element: ET.Element,
        remaining: list[ET.Element],
        base_url: str,
        depth: int,
        before_stream: list[XmlAction],
        ws: ClientConnection,
        media_format: StreamFormat,
        script: Iterable[ScriptItem],
    ) -> None:
        self._ctx = ctx
        self.options = ctx.options
        self.call_uuid = ctx.call_uuid
        self.stream_id = str(uuid.uuid4())
        self.xml = xml
        self.stream_url = (stream_element.text or "").strip()
        self.stream_attrs: dict[str, str] = dict(stream_element.attrib)
        self.media_format = media_format
        self.before_stream = before_stream
        self.after_stream: list[XmlAction] = []
        self.protocol_errors: list[str] = []
        self.warnings = ctx.warnings
        self.webhooks = ctx.webhooks
        self.timeline: list[TimelineEntry] = []
        self.clears: list[ClearRecord] = []
        self.received_checkpoints: list[str] = []
        self.acked_checkpoints: list[str] = []
        self.dropped_checkpoints: list[str] = []
        self.internal_errors: list[str] = []
        self.start_message: dict[str, Any] = {}
        self.frames_sent = 0
        self.sent_frames: list[str] = []  # with SimCallOptions.keep_sent_frames
        self.played_rate: int | None = self.options.playback_rate
        self.ended = asyncio.Event()
        self.end_reason: EndReason | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None

        self.play_audio_listeners: list[Callable[[dict[str, Any]], None]] = []
        """Called with every playAudio message as it arrives, before it is checked (e.g. to keep payload bytes,
        which the timeline does not)."""
        self.frame_listeners: list[Callable[[], None]] = []
        """Called after every caller frame is sent, on the caller clock, before the next frame is taken from the
        script: a driver that decides what the caller says next (``say``) without a task of its own. No awaits;
        an exception stops the call as a simulator error."""

        self._ws = ws
        self._socket_wrap: Callable[[ClientConnection], ClientConnection] | None = None
        self._remaining = remaining
        self._base_url = base_url
        self._depth = depth
        self._extra_headers = self._extra_headers_value()
        self._period = self.options.frame_ms / 1000
        self._caller_k = 0  # the next caller frame's index on the call clock (it survives a reconnect)
        self._play_k = 0  # the next playout tick's index
        self._chunk_base = 0  # caller frames before this stream began (media.chunk counts per stream)
        self._retries_used = 0
        self._max_retries = max_retries(stream_element)
        self._in_frame = media_format.samples_per_frame(self.options.frame_ms)
        self._silent_frame: Int16Array = np.zeros(self._in_frame, dtype=np.int16)
        self._out_frame = self.played_rate * self.options.frame_ms // 1000 if self.played_rate else 0
        self._t0 = 0.0
        self._epoch_ms0 = 0
        self._seq = 0
        self._send_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._clocks_on = False  # the stream's caller and playout clocks run (see SimCall._start_tasks)
        self._stream_gen = 0
        self._caller_handle: TickHandle | None = None
        self._play_handle: TickHandle | None = None
        self._ticker: Ticker = ticker()  # drives the stream's clocks (placed from a running loop)
        self._slow_sends = 0  # sends waiting for (or holding) the send lock: nothing may jump ahead of them
        self._media_fmt = ""
        self._silence_wire = (0, "")
        self._waiters = 0  # wait_for calls waiting on _changed
        self._callback_tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._stream_live = False
        self._stop_received = False
        self._local_reason: EndReason | None = None
        self._hangup_cause = "NORMAL_CLEARING"
        self._caller_gone = False
        self._transfer: tuple[str, str] | None = None
        # caller side
        self._script: deque[Segment | Cue] = deque(as_cue_or_segment(i) for i in script)
        self._armed: Callable[[], bool] | None = None
        self._cbuf: Int16Array = _EMPTY
        self._wbuf = b""  # _cbuf as sent on the wire (encoded when pushed)
        self._frame_wire: tuple[Int16Array, bytes] = (_EMPTY, b"")  # the last frame taken from _cbuf, encoded
        self._caller_frames: list[Int16Array] = []
        self._pending_frame: Int16Array = self._silent_frame
        self._script_done_recorded = False
        # playout side
        self._queue: deque[QueuedAudio | Mark] = deque()
        self._queued_samples = 0
        self._ack_due: deque[tuple[float, str]] = deque()
        self._cur: Int16Array | None = None
        self._cur_start = 0.0
        self._cur_tick = 0
        self._ticks = 0
        self._bot_active = False
        self._last_bot_audio_end = 0.0
        self._played_chunks: list[Int16Array] = []
        self._played_samples = 0
        self._bot_segments: list[tuple[int, Int16Array]] = []

    def __repr__(self) -> str:
        state = f"ended:{self.end_reason}" if self.ended.is_set() else "live"
        return f"<SimCall {self.call_uuid} {self.media_format.content_type} {state} played={self.played_ms:.0f}ms>"

    # ---- derived state ------------------------------------------------------------------------------------

    @property
    def call_ms(self) -> float:
        """Milliseconds on the call clock (since ``start`` was sent)."""
        return (time.monotonic() - self._t0) * 1000 if self._t0 else 0.0

    @property
    def played(self) -> Int16Array:
        """Bot audio the caller actually heard, at ``played_rate``; silence ticks are not included."""
        if not self._played_chunks:
            return _EMPTY.copy()
        return np.concatenate(self._played_chunks).astype(np.int16, copy=False)

    def _live_heard(self, now: float) -> int:
        if self._cur is None or not self.played_rate or self.ended.is_set():
            return 0
        return min(len(self._cur), max(0, int((now - self._cur_start) * self.played_rate)))

    @property
    def played_ms(self) -> float:
        """Bot audio heard so far, including the part of the current 20 ms frame already elapsed."""
        if not self.played_rate:
            return 0.0
        return (self._played_samples + self._live_heard(time.monotonic())) * 1000 / self.played_rate

    @property
    def queued_ms(self) -> float:
        """Bot audio accepted but not yet heard."""
        if not self.played_rate:
            return 0.0
        current = len(self._cur) - self._live_heard(time.monotonic()) if self._cur is not None else 0
        return (self._queued_samples + current) * 1000 / self.played_rate

    @property
    def bot_playing(self) -> bool:
        return self._bot_active

    @property
    def script_done(self) -> bool:
        return not self._script and len(self._cbuf) == 0

    @property
    def stream_live(self) -> bool:
        return self._stream_live

    def events(self, kind: str) -> list[TimelineEntry]:
        return [e for e in self.timeline if e.kind == kind]

    def bot_track(self, rate: int | None = None) -> Int16Array:
        """Bot audio on the call clock (silence where nothing played), for recordings and alignment checks."""
        src = self.played_rate or self.media_format.rate
        frame = src * self.options.frame_ms // 1000
        length = self._ticks * frame
        for offset, samples in self._bot_segments:
            length = max(length, offset + len(samples))
        track = np.zeros(length, dtype=np.int16)
        for offset, samples in self._bot_segments:
            track[offset : offset + len(samples)] = samples
        return resample(track, src, rate) if rate else track

    @property
    def bot_pieces(self) -> list[tuple[int, Int16Array]]:
        """Every stretch of bot audio that has finished playing, in order: (its first sample on the call clock at
        ``played_rate``, the samples). What :meth:`bot_track` draws, without building the whole track: an echo
        path reads the last few, an analysis finds which samples played when. Read-only."""
        return self._bot_segments

    def caller_track(self, rate: int | None = None) -> Int16Array:
        """What the caller sent, on the same clock as :meth:`bot_track`."""
        track = np.concatenate(self._caller_frames).astype(np.int16) if self._caller_frames else _EMPTY.copy()
        return resample(track, self.media_format.rate, rate) if rate else track

    # ---- waiting ------------------------------------------------------------------------------------------

    def _notify(self) -> None:
        # Called on every frame and tick of every call: a fresh Event only when someone waits on this one.
        if self._waiters:
            self._changed.set()
            self._changed = asyncio.Event()

    def _state_summary(self) -> str:
        recent = [e.kind for e in self.timeline[-400:] if e.kind not in ("frame_sent", "caller_segment_started")]
        last = ", ".join(recent[-8:])
        return (
            f"call {self.call_uuid}: live={self._stream_live} ended={self.ended.is_set()} "
            f"end_reason={self.end_reason} played_ms={self.played_ms:.0f} queued_ms={self.queued_ms:.0f} "
            f"acked={self.acked_checkpoints} clears={len(self.clears)} "
            f"protocol_errors={self.protocol_errors[-5:]} recent=[{last}]"
        )

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 - a per-wait deadline reads better in tests
        what: str | None = None,
    ) -> None:
        """Wait until ``predicate()`` holds; re-checked on every message, tick and state change."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.internal_errors:
                raise SimulationError(f"carrier simulator failed: {self.internal_errors}; {self._state_summary()}")
            if predicate():
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                desc = what or _describe_predicate(predicate)
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {desc}; {self._state_summary()}")
            changed = self._changed
            self._waiters += 1
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await changed.wait()
            finally:
                self._waiters -= 1

    async def wait_bot_audio(self, ms: float, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - per-wait deadline
        await self.wait_for(lambda: self.played_ms >= ms, timeout, f"{ms:g} ms of bot audio played")

    async def wait_checkpoint(self, name: str, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - per-wait deadline
        await self.wait_for(lambda: name in self.acked_checkpoints, timeout, f"playedStream {name!r}")

    async def wait_clear(self, count: int = 1, timeout: float = 5.0) -> ClearRecord:  # noqa: ASYNC109 - per-wait deadline
        await self.wait_for(lambda: len(self.clears) >= count, timeout, f"{count} clearAudio")
        return self.clears[count - 1]

    async def wait_bot_silence(self, ms: float, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - per-wait deadline
        """Wait until no bot audio has played (or been queued) for ``ms`` ms, e.g. after a barge-in. An ended
        call is silent: audio still queued when the agent hung up will never play (waiting for it used to hold
        every eval conversation the agent ended for the full timeout)."""

        def quiet() -> bool:
            if self.ended.is_set():
                return True
            if self._bot_active or self._queued_samples:
                return False
            return (time.monotonic() - max(self._last_bot_audio_end, self._t0)) * 1000 >= ms

        await self.wait_for(quiet, timeout, f"{ms:g} ms of bot silence")

    async def wait_script_done(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - per-wait deadline
        await self.wait_for(lambda: self.script_done, timeout, "caller script finished")

    async def wait_ended(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - per-wait deadline
        await self.wait_for(self.ended.is_set, timeout, "call ended")

    # ---- caller actions -----------------------------------------------------------------------------------

    def say(self, *items: ScriptItem) -> None:
        """Append to the caller's script while the call runs."""
        self._script.extend(map(as_cue_or_segment, items))

    def wrap_socket(self, wrap: Callable[[ClientConnection], ClientConnection]) -> None:
        """Put something between the carrier and the agent (network jitter, loss...): ``wrap`` gets the stream
        socket and returns what the call sends through and reads from, now and after any retried stream. Call it
        before the first caller frame (``place_and_measure(on_connected=...)``) to impair the whole call."""
        self._socket_wrap = wrap
        self._ws = wrap(self._ws)

    async def send_raw(self, text: str) -> None:
        """Inject an arbitrary text frame (e.g. malformed JSON) without touching sequence numbers."""
        await self._ws.send(text)
        self._record("raw_sent", text=text[:200])

    async def send_event(self, event: Mapping[str, Any], *, with_sequence: bool = True) -> None:
        """Send a Vobiz->app event of your own (e.g. an R0 inbound ``stop``), numbered like the rest."""
        await self._send(dict(event), sequence=with_sequence)
        self._record("event_sent", event=event.get("event"))

    async def send_dtmf(self, digit: str) -> None:
        """A keypad press, in the Plivo shape Vobiz is believed to use (§2.4)."""
        if digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        ts = str(int(time.time() * 1000))
        msg = {
            "event": "dtmf",
            "streamId": self.stream_id,
            "dtmf": {"digit": digit, "track": "inbound", "timestamp": ts},
        }
        await self._send(msg, sequence=True)
        self._record("dtmf_sent", digit=digit)

    async def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        """The caller hangs up: socket closed with 1000, then Event=Hangup; no further XML runs."""
        if not self.ended.is_set():
            if self._stream_live and self._local_reason is None:
                self._local_reason = "caller_hangup"
                self._hangup_cause = cause
                await self._close_ws(1000)
            else:
                self._caller_gone = True  # stops an after-stream document at the next verb
        await self.ended.wait()

    async def drop(self) -> None:
        """Network drop between Vobiz and the agent: no close frame. With `<Stream maxRetries>` (and
        `reconnect_on_drop`) Vobiz comes back on a new socket with a new streamId, and this returns once it has;
        otherwise the XML continues as after a stream end, and this returns once the call has ended."""
        streams = self._retries_used
        if self._stream_live and self._local_reason is None:
            self._local_reason = "network_drop"
            self._record("ws_aborted")
            self._ws.transport.abort()
        await self.wait_for(lambda: self.ended.is_set() or self._retries_used > streams, timeout=30)

    def _may_retry(self) -> bool:
        return self.options.reconnect_on_drop and self._retries_used < self._max_retries

    async def transfer_to(self, url: str, method: Literal["POST", "GET"] = "POST") -> None:
        """What the REST transfer API does: Vobiz closes the socket (no stop, no StopStream), fetches ``url``
        with Event=Transfer and executes its XML."""
        if not self._stream_live or self._local_reason is not None:
            raise RuntimeError("transfer_to needs a live stream")
        self._local_reason = "transfer"
        self._transfer = (url, method)
        await self._close_ws(1000)
        await self.ended.wait()

    # ---- plumbing -----------------------------------------------------------------------------------------

    def _record(self, kind: str, /, **detail: Any) -> None:
        self.timeline.append(TimelineEntry(time.monotonic(), kind, detail))

    def _protocol_error(self, message: str, raw: Any = None) -> None:
        if raw is not None:
            snippet = raw if isinstance(raw, str) else json.dumps(raw, default=str)
            message = f"{message}: {snippet[:160]}"
        self.protocol_errors.append(message)
        self._record("protocol_error", message=message)

    def _internal_error(self, where: str, exc: BaseException) -> None:
        self.internal_errors.append(f"{where}: {type(exc).__name__}: {exc}")
        self._notify()

    def _clock_failed(self, where: str, exc: BaseException) -> None:
        """A simulator bug in a clock or task: surfaced through wait_for, and the stream closed as an error."""
        self._internal_error(where, exc)
        if self._local_reason is None:
            self._local_reason = "error"
            closer = asyncio.create_task(self._close_ws(1011))
            self._callback_tasks.add(closer)
            closer.add_done_callback(self._callback_tasks.discard)

    def _extra_headers_value(self) -> str:
        raw = self.stream_attrs.get("extraHeaders")
        if not raw:
            return "{}"
        if len(raw.encode()) > 512:
            self._ctx.warn("extraHeaders is longer than Vobiz's 512-byte limit")
        pairs = dict(p.split("=", 1) for p in raw.split(",") if "=" in p)
        if any(not (k + v).isalnum() for k, v in pairs.items()):
            self._ctx.warn("extraHeaders has characters outside [A-Za-z0-9]; Vobiz documents only those")
        # The on-socket encoding of your pairs is undocumented (§9.11); a JSON object string is a guess.
        return json.dumps(pairs, separators=(",", ":"))

    def _message_text(self, msg: Mapping[str, Any], sequence: bool) -> str:
        """The message as sent, numbered now (call it when the message is next on the wire)."""
        if sequence:
            msg = {"sequenceNumber": self._seq, **msg}
            self._seq += 1
        text = json.dumps(msg, separators=(",", ":"))
        if self.options.keep_sent_frames:
            self.sent_frames.append(text)
        return text

    async def _send(self, msg: dict[str, Any], *, sequence: bool) -> None:
        # One lock so sequenceNumber order always equals wire order across everything that sends; a send that
        # would not wait (nobody else sending, socket writable) skips it.
        if self._writes_now():
            write_text(self._ws, self._message_text(msg, sequence))
            return
        self._slow_sends += 1
        try:
            await self._send_in_turn(msg, sequence)
        finally:
            self._slow_sends -= 1

    async def _send_in_turn(self, msg: Mapping[str, Any], sequence: bool) -> None:
        async with self._send_lock:
            await self._ws.send(self._message_text(msg, sequence))

    def _writes_now(self) -> bool:
        """A message may go straight to the socket: no queued send waits ahead of it and `send` would not wait."""
        return self._slow_sends == 0 and can_send_now(self._ws)

    def _send_soon(self, msg: Mapping[str, Any], sequence: bool, then: Callable[[], None]) -> None:
        """Send from a callback: now when nothing is in the way, else from a task that waits its turn; ``then``
        runs once it is on the wire (never if the socket closed first)."""
        if self._writes_now():
            write_text(self._ws, self._message_text(msg, sequence))
            then()
            return

        async def send() -> None:
            with contextlib.suppress(ConnectionClosed):
                await self._send_in_turn(msg, sequence)
                then()

        self._track_slow_send(asyncio.create_task(send()), self._callback_tasks)

    def _track_slow_send(self, task: asyncio.Task[None], tasks: set[asyncio.Task[None]]) -> None:
        """Count a queued send from the moment it is queued (nothing sent later may overtake it) until its task
        is done, cancelled or not."""
        self._slow_sends += 1
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(self._slow_send_done)

    def _slow_send_done(self, task: asyncio.Task[None]) -> None:
        self._slow_sends -= 1

    async def _close_ws(self, code: int) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close(code)

    def _status_callback(self, event: str, extra: Mapping[str, str]) -> None:
        url = self.stream_attrs.get("statusCallbackUrl")
        if not url or not self.options.status_callbacks:
            return
        method = self.stream_attrs.get("statusCallbackMethod", "POST").upper()
        fields = {
            "From": self.options.from_,
            "To": self.options.to,
            "CallUUID": self.call_uuid,
            "Event": event,
            "StreamID": self.stream_id,
            "ParentAuthID": self.options.parent_auth_id,
            "Error": "",
            "Timestamp": wall_time(datetime.now(UTC)),
            "status_callback_url": url,
            "status_callback_method": method,
            **extra,
        }
        task = asyncio.create_task(self._ctx.status_callback(url, method, fields, event))
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_tasks.discard)
