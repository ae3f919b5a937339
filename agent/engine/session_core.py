"""One simulated Realtime connection's state, its traffic record and the plumbing every part of it uses.

The session is assembled from mixins, one per concern (this core, :mod:`responses`, :mod:`input_audio`, the
conversation items in :mod:`session`), so that no module carries the whole protocol."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

import numpy as np
from pydantic import ValidationError
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from agent.audio.codecs import Int16Array
from agent.engine.formats import AudioFormat, SimulatorBug, new_id
from agent.engine.protocol import (
    NEWER_EVENT_TYPE,
    READ_ONLY_SESSION_KEYS,
    Event,
    EventLog,
    EventPredicate,
    ResponseState,
    ScriptedReply,
    copy_json,
    default_session,
    describe_validation_error,
    dumps_event,
    merge_session,
    newer_wire,
    normalise_session,
)
from agent.engine.replies import RealtimeSimConfig, ReplySource, ToneReplySource, ToolCall
from agent.engine.sdk_types import (
    BETA_SESSION_KEYS,
    ShapeCheckedServerEvents,
    validate_client_event,
    validate_server_event,
)
from agent.ws_send import can_send_now, write_now

_T = TypeVar("_T")


def _plain_append(event: dict[str, Any]) -> bool:
    """``input_audio_buffer.append`` with a string ``audio``, an optional string or null ``event_id`` and nothing
    else: exactly the appends the SDK's ``InputAudioBufferAppendEvent`` accepts from parsed JSON."""
    if event.get("type") != "input_audio_buffer.append" or type(event.get("audio")) is not str:
        return False
    if len(event) == 2:
        return True
    event_id = event.get("event_id", 0)
    return len(event) == 3 and (event_id is None or type(event_id) is str)


@functools.cache
def _shape_checked() -> ShapeCheckedServerEvents:
    """One per process: a shape that passed once passes for every session."""
    return ShapeCheckedServerEvents()


class SessionOwner(Protocol):
    """What a session needs from the server that accepted it: somewhere to report the fake's own bugs."""

    def record_internal_error(self, where: str, exc: BaseException) -> None: ...


class SessionCore:
    """State and plumbing shared by the session's mixins; :class:`~agent.engine.session.SimSession` is the whole."""

    def __init__(
        self,
        server: SessionOwner,
        ws: ServerConnection,
        *,
        model: str,
        call_id: str | None,
        headers: dict[str, str],
        sim_config: RealtimeSimConfig,
        beta: bool,
    ) -> None:
        self._server = server
        self._ws = ws
        self.id = new_id("sess_")
        self.model = model
        self.call_id = call_id
        self.headers = headers
        self.beta = beta
        self.sim_config = sim_config
        self.reply_source: ReplySource = sim_config.reply_source or ToneReplySource()
        self.conversation_id = new_id("conv_")
        self.session_config: dict[str, Any] = default_session(self.id, model)
        self.protocol_errors: list[str] = []
        self.items: list[Event] = []
        self.user_audio: dict[str, tuple[Int16Array, int]] = {}
        self.assistant_audio_ms: dict[str, int] = {}
        self.truncations: list[Event] = []
        self.responses: list[Event] = []
        self._stalled = asyncio.Event()
        self.responses_started = 0
        self.close_code: int | None = None
        self._client_log = EventLog("client")
        self._server_log = EventLog("server")
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._transcripts: dict[str, asyncio.Task[str]] = {}
        self._active: ResponseState | None = None
        self._queued_tool_calls: list[ToolCall] = []
        self._scripted_replies: deque[ScriptedReply] = deque()
        self._handlers = self._event_handlers()
        self._check_event: Callable[[Event], Any] = (
            _shape_checked() if sim_config.sdk_check == "per_shape" else validate_server_event
        )
        # Caller audio: everything appended (for input_pcm16) and the uncommitted buffer.
        self._input_chunks: list[tuple[int, Int16Array]] = []
        self._input_rate = 24000
        self._input_samples = 0  # on the current rate's clock
        self._clock_base_ms = 0.0  # ms appended at earlier rates (format changes)
        self._buffer: list[Int16Array] = []
        self._buffer_start_ms = 0.0
        # Energy VAD state, on the appended-audio clock.
        self._vad_carry: Int16Array = np.zeros(0, dtype=np.int16)
        self._vad_pos_ms = 0.0
        self._vad_run_ms = 0
        self._vad_onset_ms = 0.0
        self._vad_silence_ms = 0
        self._speaking = False
        self._speech_item_id = ""
        self._speech_start_ms = 0

    # ----- public accessors --------------------------------------------------------------------------------

    @property
    def client_events(self) -> list[Event]:
        return self._client_log.events

    @property
    def server_events(self) -> list[Event]:
        return self._server_log.events

    @property
    def error_events(self) -> list[Event]:
        """Every ``error`` sent, including timing-dependent ones that are not counted as protocol errors."""
        return [e for e in self.server_events if e.get("type") == "error"]

    @property
    def active_response_id(self) -> str | None:
        return self._active.id if self._active else None

    @property
    def input_format(self) -> AudioFormat:
        return AudioFormat.from_session(self.session_config["audio"]["input"].get("format"))

    @property
    def output_format(self) -> AudioFormat:
        return AudioFormat.from_session(self.session_config["audio"]["output"].get("format"))

    def server_event_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.server_events]

    def client_event_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.client_events]

    def input_pcm16(self) -> tuple[Int16Array, int]:
        """All appended caller audio decoded to int16, and its sample rate (8000 pcmu/pcma, 24000 pcm)."""
        rates = {rate for rate, _ in self._input_chunks}
        if len(rates) > 1:
            raise ValueError(f"the input format changed mid-session; audio was appended at rates {sorted(rates)}")
        rate = rates.pop() if rates else self.input_format.sample_rate
        if not self._input_chunks:
            return np.zeros(0, dtype=np.int16), rate
        return np.concatenate([chunk for _, chunk in self._input_chunks]), rate

    async def wait_for_client_event(
        self,
        type: str,
        predicate: EventPredicate | None = None,
        timeout: float = 5,  # noqa: ASYNC109 (a timeout argument is part of this test-helper API)
        start: int = 0,
    ) -> Event:
        """The first client event of ``type`` (from index ``start``) already received or arriving later."""
        return await self._client_log.wait(type, predicate, timeout, start)

    async def wait_for_server_event(
        self,
        type: str,
        predicate: EventPredicate | None = None,
        timeout: float = 5,  # noqa: ASYNC109
        start: int = 0,
    ) -> Event:
        """The first server event of ``type`` (from index ``start``) already sent or sent later."""
        return await self._server_log.wait(type, predicate, timeout, start)

    # ----- scripting -----------------------------------------------------------------------------------------

    def queue_tool_call(self, name: str, arguments: dict[str, Any] | str) -> None:
        """Make the next response carry a function_call item (after its audio, or alone if it has none).

        A call is consumed when it is emitted, so a response cancelled before that point passes it on.
        """
        self._queued_tool_calls.append(ToolCall(name, arguments))

    def queue_reply(self, *, transcript: str | None = None, reply_ms: int | None = None) -> None:
        """Script the next response's transcript and/or audio length (``reply_ms=0``: no message item)."""
        self._scripted_replies.append(ScriptedReply(transcript, reply_ms))

    async def send_event(self, event: Event) -> Event:
        """Send an arbitrary (validated) server event, e.g. to script a ``session_expired`` error."""
        return await self._send(event)

    async def send_error(
        self,
        message: str,
        *,
        code: str | None = None,
        type: str = "invalid_request_error",
        param: str | None = None,
        event_id: str | None = None,
    ) -> Event:
        """Send an ``error`` event; ``event_id`` is the client event it refers to."""
        error = {"type": type, "code": code, "message": message, "param": param, "event_id": event_id}
        return await self._send({"type": "error", "error": error})

    async def drop(self, code: int | None = None) -> None:
        """Simulate the network failing: abort the TCP transport (``code=None``) or close with ``code``."""
        if code is None:
            self._ws.transport.abort()
        else:
            await self._ws.close(code, "simulated drop")

    def stall(self) -> None:
        """Simulate a silent network failure (a NAT or link that drops packets): nothing more is sent, nothing is
        read (pings included, so none is answered), and the TCP connection stays open: no FIN, no RST."""
        self._stalled.set()
        self._ws.transport.pause_reading()

    # ----- connection lifecycle (driven by RealtimeServer) ----------------------------------------------------

    async def _serve(self) -> None:
        if self.beta:
            await self.send_error(
                "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API.",
                code="beta_api_shape_disabled",
            )
            await self._ws.close(4000, "beta_api_shape_disabled")
            return
        await self._send({"type": "session.created", "session": copy_json(self.session_config)})
        if self.sim_config.send_conversation_created:
            await self._send(
                {
                    "type": "conversation.created",
                    "conversation": {"id": self.conversation_id, "object": "realtime.conversation"},
                }
            )
        if self.sim_config.session_max_s is not None:
            self._spawn(self._expire(self.sim_config.session_max_s), "session-cap")
        async for message in self._ws:
            await self._on_message(message)

    async def _expire(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        minutes = round(after_s / 60) or 1
        await self.send_error(f"Your session hit the maximum duration of {minutes} minutes.", code="session_expired")
        await self._ws.close(1000, "session_expired")

    async def _shutdown(self) -> None:
        """Cancel everything this session started, so a closed socket leaves no task behind."""
        self._active = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.close_code = self._ws.close_code
        reason = f"session {self.id} closed (code {self.close_code})"
        self._client_log.close(reason)
        self._server_log.close(reason)

    def _spawn(self, coro: Coroutine[Any, Any, _T], name: str) -> asyncio.Task[_T]:
        task = asyncio.create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, ConnectionClosed):
            self._server.record_internal_error(self.id, exc)
            self._ws.transport.abort()

    # ----- sending -----------------------------------------------------------------------------------------

    async def _send(self, event: Event, verbatim: str | None = None, *, checked: bool = False) -> Event:
        """Send one event. ``verbatim``: a key whose string value needs no JSON escaping (see ``dumps_event``);
        ``checked``: the event repeats the shape of one already checked against the SDK (a stream's deltas)."""
        async with self._send_lock:
            return await self._send_unlocked(event, verbatim, checked=checked)

    async def _send_batch(self, events: list[Event]) -> None:
        """Send events back to back, so that nothing from another task lands between them."""
        async with self._send_lock:
            for event in events:
                await self._send_unlocked(event)

    async def _send_unlocked(self, event: Event, verbatim: str | None = None, *, checked: bool = False) -> Event:
        if self._stalled.is_set():
            await asyncio.Event().wait()  # the network is gone: this send never leaves; cancelled at shutdown
        wire = {"type": event["type"], "event_id": new_id("event_")}
        wire.update(event)  # "type" keeps its place, first; an event_id in ``event`` wins, as before
        if not checked:
            try:
                self._check_event(wire)
            except ValidationError as exc:
                raise SimulatorBug(f"the fake built an invalid {wire['type']!r} event: {exc}") from exc
        if self.sim_config.newer_server:
            wire = newer_wire(wire)
            data = json.dumps(wire)
        else:
            data = dumps_event(wire, verbatim)
        record: Event = copy_json(wire)
        record["_t"] = time.monotonic()
        self._server_log.add(record)
        await self._write(data)
        if self.sim_config.newer_server and wire["type"] == "response.created":
            unknown = {"type": NEWER_EVENT_TYPE, "event_id": new_id("event_"), "response_id": wire["response"]["id"]}
            self._server_log.add(dict(unknown, _t=time.monotonic()))
            await self._write(json.dumps(unknown))
        return record

    async def _write(self, data: str) -> None:
        """``ws.send``, or the same frame written at once when ``send`` would not wait (``agent.ws_send``): its
        async context manager cost more than the write, for the 20 deltas a second of every response."""
        ws = self._ws
        if type(ws) is ServerConnection and can_send_now(ws):
            try:
                write_now(ws, data)
                return
            except OSError:
                pass  # the transport is aborted: ``send`` raises ConnectionClosed, as it would have
        await ws.send(data)

    async def _error(
        self, client_event: Event, code: str | None, message: str, param: str | None = None, *, record: bool = True
    ) -> None:
        """Answer a failed client event; ``record`` marks it as the agent's protocol mistake."""
        event_id = client_event.get("event_id")
        if record:
            self.protocol_errors.append(f"{client_event.get('type')}: [{code}] {message}")
        await self.send_error(message, code=code, param=param, event_id=event_id if isinstance(event_id, str) else None)

    # ----- receiving ---------------------------------------------------------------------------------------

    async def _on_message(self, raw: str | bytes) -> None:
        received = time.monotonic()
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
            self._client_log.add({"type": None, "_raw": text[:500], "_t": received})
            await self._error(
                {"type": "<unparseable frame>"},
                "invalid_json",
                "The server could not parse the JSON body of your event.",
            )
            return
        if _plain_append(event):
            # The hottest client event (50 a second per call), and one that passes the SDK's model whenever it has
            # this shape: it skips the model. Any other shape, valid or not, takes the full check below.
            record = dict(event)
            record["_t"] = received
            self._client_log.add(record)
            await self._on_append(event)
            return
        record = copy_json(event)
        record["_t"] = received
        self._client_log.add(record)
        try:
            validate_client_event(event)
        except ValidationError as exc:
            code, message, param = describe_validation_error(event, exc)
            await self._error(event, code, message, param)
            return
        except ValueError:
            leftovers = sorted(BETA_SESSION_KEYS & set(event.get("session", {})))
            self.protocol_errors.append(f"session.update: beta-only session keys {leftovers}")
            await self._error(
                event,
                "unknown_parameter",
                f"Unknown parameter: 'session.{leftovers[0]}'.",
                f"session.{leftovers[0]}",
                record=False,
            )
            return
        handler = self._handlers.get(event["type"])
        if handler is not None:
            await handler(event)

    # ----- session.update ------------------------------------------------------------------------------------

    async def _on_session_update(self, event: Event) -> None:
        update: dict[str, Any] = {k: v for k, v in event["session"].items() if k not in READ_ONLY_SESSION_KEYS}
        if update.get("type") != self.session_config["type"]:
            await self._error(
                event,
                "invalid_value",
                f"Cannot update a session of type '{self.session_config['type']}' to '{update.get('type')}'.",
                "session.type",
            )
            return
        audio_update = update.get("audio") or {}
        new_voice = (audio_update.get("output") or {}).get("voice")
        old_voice = self.session_config["audio"]["output"].get("voice")
        if new_voice is not None and new_voice != old_voice and self.assistant_audio_ms:
            await self._error(
                event,
                "cannot_update_voice",
                "Cannot update a conversation's voice if assistant audio is present.",
                "session.audio.output.voice",
                record=False,
            )
            return
        merged = merge_session(self.session_config, update)
        normalise_session(merged)
        self.session_config = merged
        if self._turn_detection() is None:
            self._reset_vad()
        await self._send({"type": "session.updated", "session": copy_json(merged)})

    def _turn_detection(self) -> dict[str, Any] | None:
        td = self.session_config["audio"]["input"].get("turn_detection")
        return td if isinstance(td, dict) else None

    async def _transcribe_audio(self, audio: Int16Array, sample_rate: int) -> str:
        """Caller audio -> text: ``RealtimeSimConfig.transcribe`` if set, else the reply source's recogniser."""
        fn = self.sim_config.transcribe
        if fn is not None:
            return fn(audio, sample_rate)
        return await self.reply_source.transcribe(audio, sample_rate)

    # ----- provided by the mixins ----------------------------------------------------------------------------

    def _event_handlers(self) -> dict[str, Callable[[Event], Awaitable[None]]]:
        """Client event type -> handler; the assembled session maps every event it accepts."""
        raise NotImplementedError

    def _reset_vad(self) -> None:
        raise NotImplementedError

    async def _on_append(self, event: Event) -> None:
        raise NotImplementedError

    def _recognition(self, item_id: str, audio: Int16Array, rate: int) -> asyncio.Task[str]:
        raise NotImplementedError
