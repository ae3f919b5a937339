"""A local stand-in for the OpenAI Realtime GA WebSocket API (``wss://api.openai.com/v1/realtime``).

Why it exists: the agent's tests, the load-test tool and the offline engine need a server that speaks the GA
wire protocol (event names, wire order, ids, error codes, barge-in behaviour) with no network access and no cost.
Every event this server sends is checked with the SDK-derived ``validate_server_event`` before it goes out (a
failure is a bug in the fake and is raised loudly), and every client event is checked with
``validate_client_event``, so an agent that drifts from the protocol shows up in ``SimSession.protocol_errors``.

What the model "says" comes from a pluggable :class:`ReplySource`; the default, :class:`ToneReplySource`, speaks
sine tones and describes caller audio instead of recognising it. ``agent.simulation.engine`` plugs in speech
(eSpeak NG replies from the prompt's scripted dialogue, PocketSphinx recognition).

Usage::

    async with RealtimeServer(RealtimeSimConfig(speed=0)) as server:
        client = AsyncOpenAI(api_key="x", base_url=server.http_base_url)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            ...
        session = server.sessions[0]
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import dataclasses
import inspect
import json
import logging
import random
import string
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from agent.audio.codecs import Int16Array, float_to_pcm16, mulaw_to_pcm16, pcm16_to_mulaw
from agent.simulation.sdk_types import BETA_SESSION_KEYS, validate_client_event, validate_server_event

__all__ = [
    "AudioFormat",
    "RealtimeServer",
    "RealtimeSimConfig",
    "Reply",
    "ReplyRequest",
    "ReplySource",
    "SimSession",
    "SimulatorBug",
    "ToneReplySource",
    "ToolCall",
    "default_session",
    "describe_audio",
    "new_id",
    "sine_tone",
]

log = logging.getLogger(__name__)


class _ProbesAreNotErrors(logging.Filter):
    """The agent's readiness probe opens a TCP connection and closes it: websockets would log every one as a
    failed handshake with a traceback (each /readyz against the embedded engine). A real bad request still is."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None and not isinstance(exc, EOFError):
            exc = exc.__cause__ or exc.__context__
        return exc is None


_ws_log = logging.getLogger(f"{__name__}.ws")
_ws_log.addFilter(_ProbesAreNotErrors())

Event = dict[str, Any]
EventPredicate = Callable[[Event], bool]
_T = TypeVar("_T")

REALTIME_PATH = "/v1/realtime"
VAD_WINDOW_MS = 20
MIN_COMMIT_MS = 100
SESSION_TTL_S = 3600
DEFAULT_MODEL = "gpt-realtime"
DEFAULT_INSTRUCTIONS = (
    "You are a helpful, witty, and friendly AI. Act like a human, but remember that you aren't a human. "
    "Keep your answers short."
)
CLIENT_EVENT_TYPES = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
)
SERVER_VAD_DEFAULTS: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 200,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}
SEMANTIC_VAD_DEFAULTS: dict[str, Any] = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}
# The fake has no semantic model: semantic_vad waits a fixed silence that grows as eagerness drops.
SEMANTIC_SILENCE_MS = {"high": 200, "auto": 500, "medium": 500, "low": 1000}

_ID_ALPHABET = string.ascii_letters + string.digits
_ids = random.Random()


NEWER_EVENT_TYPE = "response.reasoning_summary.started"  # not in the GA SDK's server event union
NEWER_STATUS_REASON = "server_shutdown"  # not in RealtimeResponseStatus.reason


def _newer(wire: Event) -> Event:
    """What a newer server adds to an event the SDK already describes."""
    wire = {**wire, "sequence_number": 1}
    if wire["type"] == "response.done":
        response = dict(wire["response"])
        response["status_details"] = {**(response.get("status_details") or {}), "reason": NEWER_STATUS_REASON}
        response["status_details"].setdefault("type", response.get("status"))
        wire["response"] = response
    return wire


class SimulatorBug(RuntimeError):
    """The fake itself produced something the real API never would (e.g. an event the SDK cannot parse)."""


def new_id(prefix: str) -> str:
    """An id shaped like the API's (``event_…``, ``item_…``, ``resp_…``), unique for practical purposes."""
    return prefix + "".join(_ids.choices(_ID_ALPHABET, k=20))


# ---------------------------------------------------------------------------------------------------------------
# Audio formats
# ---------------------------------------------------------------------------------------------------------------


def _build_alaw_tables() -> tuple[Int16Array, npt.NDArray[np.uint8]]:
    """G.711 A-law tables; the shared codec module only has μ-law, and A-law is a legal GA session format."""
    codes = np.arange(256, dtype=np.int32)
    a = codes ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    decode = np.where(a & 0x80, t, -t).astype(np.int16)
    # Encode each int16 value to its nearest A-law level.
    order = np.argsort(decode, kind="stable")
    levels = decode[order].astype(np.int32)
    samples = np.arange(-32768, 32768, dtype=np.int32)
    idx = np.clip(np.searchsorted(levels, samples), 1, 255)
    nearer_low = (samples - levels[idx - 1]) <= (levels[idx] - samples)
    encode = order[np.where(nearer_low, idx - 1, idx)].astype(np.uint8)
    return decode, encode


_ALAW_DECODE, _ALAW_ENCODE = _build_alaw_tables()

FormatType = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]


@dataclass(frozen=True)
class AudioFormat:
    """One GA session audio format: ``audio/pcm`` (24 kHz int16 LE), ``audio/pcmu`` or ``audio/pcma`` (8 kHz)."""

    type: FormatType

    @classmethod
    def from_session(cls, fmt: Any) -> AudioFormat:
        """Read a GA ``{"type": ...}`` format object; the API default (pcm 24 kHz) when absent."""
        if isinstance(fmt, dict) and fmt.get("type") in ("audio/pcmu", "audio/pcma"):
            return cls(fmt["type"])
        return cls("audio/pcm")

    @property
    def sample_rate(self) -> int:
        return 24000 if self.type == "audio/pcm" else 8000

    @property
    def bytes_per_ms(self) -> int:
        """48 for pcm24k, 8 for the G.711 formats."""
        return 48 if self.type == "audio/pcm" else 8

    def as_session(self) -> dict[str, Any]:
        """The wire form used in session and response objects."""
        return {"type": "audio/pcm", "rate": 24000} if self.type == "audio/pcm" else {"type": self.type}

    def decode(self, data: bytes) -> Int16Array:
        if self.type == "audio/pcmu":
            return mulaw_to_pcm16(data)
        if self.type == "audio/pcma":
            return _ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)]
        if len(data) % 2:
            raise ValueError("audio/pcm payload has an odd number of bytes")
        return np.frombuffer(data, dtype="<i2").astype(np.int16)

    def encode(self, samples: Int16Array) -> bytes:
        if self.type == "audio/pcmu":
            return pcm16_to_mulaw(samples)
        if self.type == "audio/pcma":
            return bytes(_ALAW_ENCODE[samples.astype(np.int32) + 32768].tobytes())
        return samples.astype("<i2").tobytes()


# ---------------------------------------------------------------------------------------------------------------
# Configuration and reply sources
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class RealtimeSimConfig:
    """Knobs of the simulated model. Each session gets its own shallow copy (``SimSession.sim_config``)."""

    tone_hz: float = 600.0
    tone_amplitude: float = 0.3
    reply_ms: int = 2000
    """Audio length of each spoken reply (a greeting is just another response)."""
    chunk_ms: int = 100
    """Audio per ``response.output_audio.delta``."""
    speed: float = 4.0
    """How many times faster than real time deltas are streamed; 0 = as fast as possible."""
    first_audio_delay_ms: int = 50
    """``response.created`` -> first audio delta."""
    vad_threshold_rms: float = 500
    """Energy VAD threshold: int16 RMS of a 20 ms window at the session input rate."""
    vad_start_ms: int = 60
    """Continuous speech needed before ``speech_started``."""
    transcribe: Callable[[Int16Array, int], str] | None = None
    """Caller audio (int16, rate) -> transcript; overrides the reply source. Default: "caller audio 1520 ms"."""
    reply_text: Callable[[SimSession], str] | None = None
    """Transcript of the next reply; default "Reply number N."."""
    transcription_delay_ms: int = 20
    """Commit -> ``input_audio_transcription.completed``; > 0 so it lands after ``response.created`` as live."""
    reply_source: ReplySource | None = None
    """Replaces the tone replies (e.g. TTS speech, an LLM); None = :class:`ToneReplySource`."""
    api_key: str | None = None
    """When set, the upgrade must carry ``Authorization: Bearer <api_key>`` (else HTTP 401)."""
    send_conversation_created: bool = False
    """Send ``conversation.created`` after ``session.created``; off because GA wire logs do not show it."""
    session_max_s: float | None = None
    """Like the real service's 60-minute cap: after this long, ``session_expired`` and the socket closes."""
    newer_server: bool = False
    """Behave like a server newer than the SDK, as OpenAI's does between SDK releases: every event carries a
    field the SDK does not list, each ``response.created`` is followed by an event type it does not know, and
    ``response.done`` reports a ``status_details.reason`` outside its enum. Events are still checked against the
    SDK's types first, so the fake's own mistakes are caught before the additions are made."""


@dataclass(frozen=True)
class ToolCall:
    """A function call the simulated model makes."""

    name: str
    arguments: dict[str, Any] | str
    """A dict (JSON-encoded on the wire) or an already-encoded JSON string."""

    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass(frozen=True)
class ReplyRequest:
    """Everything a reply source may use to produce one response."""

    session: SimSession
    response_id: str
    number: int
    """1-based count of responses started in this session."""
    audio_format: AudioFormat | None
    """Format to produce audio in; None when the response is text-only."""
    reply_ms: int
    """Requested audio length (scripted per response with ``SimSession.queue_reply``)."""
    transcript: str | None
    """Scripted transcript for this response, if any."""
    instructions: str
    """The response's instructions: ``response.create``'s own, else the session's."""
    trigger: Literal["client", "vad"]
    session_instructions: str = ""
    """The session's instructions, to tell a response-level override (e.g. "greet the caller") from the default."""
    caller_text: str | None = None
    """What the caller last said: the recognised text of their latest audio turn (via ``ReplySource.transcribe``,
    shared with the transcription events) or the text of a user text item; None before the caller said anything."""
    caller_waiting: bool = False
    """The conversation's latest item is that caller turn, i.e. this response answers it."""
    tools: tuple[str, ...] = ()
    """Names of the function tools the model may call in this response (none under ``tool_choice: "none"``)."""


@dataclass
class Reply:
    """What the simulated model says in one response."""

    transcript: str
    audio: Int16Array | None = None
    """Mono int16 at ``request.audio_format.sample_rate``; empty/None = no message item (tool-call-only reply)."""
    tool_calls: list[ToolCall] = field(default_factory=list)


class ReplySource(Protocol):
    """Pluggable brain/voice of the fake: ASR for caller turns and the content of each response.

    ``transcribe`` runs once per caller audio item; its text feeds both the transcription events and
    ``ReplyRequest.caller_text``.
    """

    async def transcribe(self, audio: Int16Array, sample_rate: int) -> str: ...

    async def reply(self, request: ReplyRequest) -> Reply: ...


def describe_audio(audio: Int16Array, sample_rate: int) -> str:
    """Default 'transcript': the caller audio's duration, which tests can check without ASR."""
    return f"caller audio {round(len(audio) * 1000 / sample_rate)} ms"


def sine_tone(hz: float, amplitude: float, duration_ms: int, sample_rate: int) -> Int16Array:
    """A phase-continuous sine, generated whole so that chunking cannot introduce discontinuities."""
    n = round(duration_ms * sample_rate / 1000)
    t = np.arange(n, dtype=np.float64) / sample_rate
    return float_to_pcm16(amplitude * np.sin(2 * np.pi * hz * t))


class ToneReplySource:
    """Default replies: a sine at ``tone_hz`` for ``reply_ms``, transcript "Reply number N.".

    It reads the per-session ``sim_config`` at call time, so ``on_session`` hooks can change it.
    """

    async def transcribe(self, audio: Int16Array, sample_rate: int) -> str:
        return describe_audio(audio, sample_rate)

    async def reply(self, request: ReplyRequest) -> Reply:
        cfg = request.session.sim_config
        if request.transcript is not None:
            text = request.transcript
        elif cfg.reply_text is not None:
            text = cfg.reply_text(request.session)
        else:
            text = f"Reply number {request.number}."
        audio = None
        if request.audio_format is not None and request.reply_ms > 0:
            audio = sine_tone(cfg.tone_hz, cfg.tone_amplitude, request.reply_ms, request.audio_format.sample_rate)
        return Reply(transcript=text, audio=audio)


class _ConfiguredTranscriber:
    """Applies ``RealtimeSimConfig.transcribe`` on top of any reply source."""

    def __init__(self, session: SimSession) -> None:
        self._session = session

    async def __call__(self, audio: Int16Array, sample_rate: int) -> str:
        fn = self._session.sim_config.transcribe
        if fn is not None:
            return fn(audio, sample_rate)
        return await self._session.reply_source.transcribe(audio, sample_rate)


# ---------------------------------------------------------------------------------------------------------------
# Session helpers
# ---------------------------------------------------------------------------------------------------------------


def default_session(session_id: str, model: str) -> dict[str, Any]:
    """The full GA session object a new connection starts with (defaults seen in a real ``session.created``)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "truncation": "auto",
        "include": None,
        "expires_at": int(time.time()) + SESSION_TTL_S,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(SERVER_VAD_DEFAULTS),
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
        },
    }


# Objects that an update replaces wholesale rather than merges key by key.
_REPLACED_WHOLE = frozenset({"format", "transcription", "tools", "tool_choice", "prompt", "tracing", "include"})
_READ_ONLY_SESSION_KEYS = frozenset({"id", "object", "expires_at", "model"})


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge a partial session update: only fields present change, ``null`` clears."""
    out = dict(base)
    for key, value in update.items():
        current = out.get(key)
        same_vad = key != "turn_detection" or (
            isinstance(value, dict) and isinstance(current, dict) and value.get("type") == current.get("type")
        )
        if isinstance(value, dict) and isinstance(current, dict) and key not in _REPLACED_WHOLE and same_vad:
            out[key] = _merge(current, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _normalise_session(session: dict[str, Any]) -> None:
    """Fill the defaults the API reports for partially specified sub-objects."""
    audio = session.setdefault("audio", {})
    inp = audio.setdefault("input", {})
    out = audio.setdefault("output", {})
    for side in (inp, out):
        fmt = side.get("format")
        if not isinstance(fmt, dict):
            side["format"] = {"type": "audio/pcm", "rate": 24000}
        elif fmt.get("type") == "audio/pcm":
            fmt.setdefault("rate", 24000)
    td = inp.get("turn_detection")
    if isinstance(td, dict):
        defaults = SERVER_VAD_DEFAULTS if td.get("type") == "server_vad" else SEMANTIC_VAD_DEFAULTS
        inp["turn_detection"] = {**defaults, **td}
    if isinstance(inp.get("noise_reduction"), dict):
        inp["noise_reduction"].setdefault("strength", 1.0)


def _param_path(loc: tuple[int | str, ...]) -> str:
    """Turn a pydantic error location into the API's ``session.audio.input.format`` style."""
    parts: list[str] = []
    for piece in loc[1:]:  # loc[0] is the event-type tag of the discriminated union
        if isinstance(piece, int):
            parts.append(f"[{piece}]")
        elif piece[:1].isupper() or "[" in piece or piece in {"str", "int", "float", "bool", "none"}:
            continue  # union member names inside the location
        else:
            parts.append(("." if parts else "") + piece)
    return "".join(parts)


def _describe_validation_error(event: Event, exc: ValidationError) -> tuple[str, str, str | None]:
    """Map a pydantic failure to the API's (code, message, param) vocabulary."""
    err = exc.errors()[0]
    etype = err["type"]
    if etype == "union_tag_invalid":
        supported = ", ".join(f"'{t}'" for t in CLIENT_EVENT_TYPES)
        return "invalid_value", f"Invalid value: '{event.get('type')}'. Supported values are: {supported}.", "type"
    if etype == "union_tag_not_found":
        return "missing_required_parameter", "Missing required parameter: 'type'.", "type"
    param = _param_path(tuple(err["loc"]))
    if etype == "missing":
        return "missing_required_parameter", f"Missing required parameter: '{param}'.", param
    if etype.endswith("_type"):
        return "invalid_type", f"Invalid type for '{param}': {err['msg']}.", param
    return "invalid_value", f"Invalid value for '{param}': {err['msg']}.", param


class _EventLog:
    """Append-only event record that coroutines can wait on (futures resolved on append; never polled)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.events: list[Event] = []
        self._waiters: list[tuple[str, EventPredicate | None, asyncio.Future[Event]]] = []
        self._closed_reason: str | None = None

    def add(self, event: Event) -> None:
        self.events.append(event)
        for type_, predicate, fut in list(self._waiters):
            if fut.done() or event.get("type") != type_:
                continue
            try:
                matched = predicate is None or predicate(event)
            except Exception as exc:
                fut.set_exception(exc)
                continue
            if matched:
                fut.set_result(event)

    def close(self, reason: str) -> None:
        """Fail pending waiters at once: nothing more can arrive on a closed session."""
        self._closed_reason = reason
        for type_, _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(ConnectionError(f"{reason} before a {self.kind} event {type_!r} arrived"))

    async def wait(self, type_: str, predicate: EventPredicate | None, timeout: float, start: int) -> Event:  # noqa: ASYNC109
        for event in self.events[start:]:
            if event.get("type") == type_ and (predicate is None or predicate(event)):
                return event
        if self._closed_reason is not None:
            raise ConnectionError(f"{self._closed_reason}; no {self.kind} event {type_!r} was recorded")
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        waiter = (type_, predicate, fut)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            seen = [e.get("type") for e in self.events[-12:]]
            raise TimeoutError(
                f"no {self.kind} event {type_!r} within {timeout}s; last {len(seen)} seen: {seen}"
            ) from None
        finally:
            self._waiters.remove(waiter)


@dataclass
class _Response:
    """Server-side state of one response, from ``response.created`` to ``response.done``."""

    id: str
    number: int
    params: dict[str, Any]
    trigger: Literal["client", "vad"]
    in_conversation: bool
    modalities: list[str]
    audio_format: AudioFormat
    voice: Any
    instructions: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: str | None = None
    task: asyncio.Task[None] | None = None
    output: list[Event] = field(default_factory=list)
    audio_ms: int = 0
    text: str = ""


@dataclass(frozen=True)
class _ScriptedReply:
    transcript: str | None
    reply_ms: int | None


# ---------------------------------------------------------------------------------------------------------------
# Session
# ---------------------------------------------------------------------------------------------------------------


class SimSession:
    """One simulated Realtime connection: its protocol state, a full record of traffic, and scripting hooks.

    Public, read-mostly attributes (tests assert on them):

    * ``id``, ``model``, ``call_id``, ``headers`` (lower-cased handshake headers), ``beta`` (refused beta handshake)
    * ``session_config``: the full effective GA session (what the last ``session.updated`` carried)
    * ``client_events`` / ``server_events``: every event received / sent, in order, as copies with a ``_t``
      ``time.monotonic()`` key that is not on the wire
    * ``protocol_errors``: one string per client event the live API rejects whatever the timing (schema
      violations, beta keys, bad audio payloads, WebRTC-only events). Rejections that depend on timing or
      state (truncate past the audio sent, cancel with no active response, a second response.create,
      an empty commit, unknown item ids) are answered with ``error`` too but only show in ``error_events``.
    * ``items``: the default conversation as API-shaped item dicts, in order
    * ``user_audio``: committed caller audio per user item id, ``(int16 samples, sample rate)``
    * ``assistant_audio_ms``: audio actually sent per assistant item id (what ``truncate`` is validated against)
    * ``truncations``: successful truncates, ``{item_id, content_index, audio_end_ms, item_audio_ms, _t}``
    * ``responses``: final response objects, as carried by each ``response.done``
    * ``sim_config``: this session's copy of the server's :class:`RealtimeSimConfig`
    * ``reply_source``: the :class:`ReplySource` in use (replaceable from ``RealtimeServer.on_session``)
    """

    def __init__(
        self,
        server: RealtimeServer,
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
        self._client_log = _EventLog("client")
        self._server_log = _EventLog("server")
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._transcripts: dict[str, asyncio.Task[str]] = {}
        self._active: _Response | None = None
        self._queued_tool_calls: list[ToolCall] = []
        self._scripted_replies: deque[_ScriptedReply] = deque()
        self._transcriber = _ConfiguredTranscriber(self)
        self._handlers: dict[str, Callable[[Event], Awaitable[None]]] = {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.retrieve": self._on_item_retrieve,
            "conversation.item.truncate": self._on_truncate,
            "conversation.item.delete": self._on_item_delete,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
            "output_audio_buffer.clear": self._on_output_audio_buffer_clear,
        }
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
        self._scripted_replies.append(_ScriptedReply(transcript, reply_ms))

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
        await self._send({"type": "session.created", "session": copy.deepcopy(self.session_config)})
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
            self._server._record_internal_error(self, exc)
            self._ws.transport.abort()

    # ----- sending -----------------------------------------------------------------------------------------

    async def _send(self, event: Event) -> Event:
        async with self._send_lock:
            return await self._send_unlocked(event)

    async def _send_batch(self, events: list[Event]) -> None:
        """Send events back to back, so that nothing from another task lands between them."""
        async with self._send_lock:
            for event in events:
                await self._send_unlocked(event)

    async def _send_unlocked(self, event: Event) -> Event:
        if self._stalled.is_set():
            await asyncio.Event().wait()  # the network is gone: this send never leaves; cancelled at shutdown
        wire = {"type": event["type"], "event_id": new_id("event_"), **{k: v for k, v in event.items() if k != "type"}}
        try:
            validate_server_event(wire)
        except ValidationError as exc:
            raise SimulatorBug(f"the fake built an invalid {wire['type']!r} event: {exc}") from exc
        if self.sim_config.newer_server:
            wire = _newer(wire)
        data = json.dumps(wire)
        record = copy.deepcopy(wire)
        record["_t"] = time.monotonic()
        self._server_log.add(record)
        await self._ws.send(data)
        if self.sim_config.newer_server and wire["type"] == "response.created":
            unknown = {"type": NEWER_EVENT_TYPE, "event_id": new_id("event_"), "response_id": wire["response"]["id"]}
            self._server_log.add(dict(unknown, _t=time.monotonic()))
            await self._ws.send(json.dumps(unknown))
        return record

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
        record = copy.deepcopy(event)
        record["_t"] = received
        self._client_log.add(record)
        try:
            validate_client_event(event)
        except ValidationError as exc:
            code, message, param = _describe_validation_error(event, exc)
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
        update: dict[str, Any] = {k: v for k, v in event["session"].items() if k not in _READ_ONLY_SESSION_KEYS}
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
        merged = _merge(self.session_config, update)
        _normalise_session(merged)
        self.session_config = merged
        if self._turn_detection() is None:
            self._reset_vad()
        await self._send({"type": "session.updated", "session": copy.deepcopy(merged)})

    def _turn_detection(self) -> dict[str, Any] | None:
        td = self.session_config["audio"]["input"].get("turn_detection")
        return td if isinstance(td, dict) else None

    # ----- input audio + VAD ---------------------------------------------------------------------------------

    async def _on_append(self, event: Event) -> None:
        fmt = self.input_format
        try:
            samples = fmt.decode(base64.b64decode(event["audio"], validate=True))
        except (binascii.Error, ValueError) as exc:
            await self._error(
                event, "invalid_value", f"Invalid 'audio': expected base64 {fmt.type} audio ({exc}).", "audio"
            )
            return
        if fmt.sample_rate != self._input_rate:
            # Format change: keep the ms clock, restart the per-rate sample clock, drop the half-built buffer.
            self._clock_base_ms = self._now_ms()
            self._input_rate = fmt.sample_rate
            self._input_samples = 0
            self._buffer = []
            self._buffer_start_ms = self._clock_base_ms
            self._vad_carry = np.zeros(0, dtype=np.int16)
            self._vad_pos_ms = self._clock_base_ms
            self._reset_vad()
        if len(samples) == 0:
            return
        self._input_chunks.append((fmt.sample_rate, samples))
        self._buffer.append(samples)
        self._input_samples += len(samples)
        await self._run_vad(samples)

    def _now_ms(self) -> float:
        """The appended-audio clock: ms of caller audio appended so far (not wall time)."""
        return self._clock_base_ms + self._input_samples * 1000 / self._input_rate

    def _reset_vad(self) -> None:
        self._speaking = False
        self._vad_run_ms = 0
        self._vad_silence_ms = 0

    async def _run_vad(self, samples: Int16Array) -> None:
        pending = np.concatenate([self._vad_carry, samples])
        win = self._input_rate * VAD_WINDOW_MS // 1000
        n = len(pending) // win
        self._vad_carry = pending[n * win :]
        if n == 0:
            return
        frames = pending[: n * win].astype(np.float64).reshape(n, win)
        loud = np.sqrt(np.mean(frames * frames, axis=1)) >= self.sim_config.vad_threshold_rms
        for i in range(n):
            start_ms = self._vad_pos_ms
            self._vad_pos_ms += VAD_WINDOW_MS
            td = self._turn_detection()
            if td is None:
                continue
            await self._vad_window(td, start_ms, bool(loud[i]))

    async def _vad_window(self, td: dict[str, Any], start_ms: float, loud: bool) -> None:
        if not self._speaking:
            if not loud:
                self._vad_run_ms = 0
                return
            if self._vad_run_ms == 0:
                self._vad_onset_ms = start_ms
            self._vad_run_ms += VAD_WINDOW_MS
            if self._vad_run_ms >= self.sim_config.vad_start_ms:
                await self._speech_started(td)
            return
        if loud:
            self._vad_silence_ms = 0
            return
        self._vad_silence_ms += VAD_WINDOW_MS
        if td.get("type") == "semantic_vad":
            silence_ms = SEMANTIC_SILENCE_MS.get(str(td.get("eagerness")), 500)
        else:
            silence_ms = int(td.get("silence_duration_ms") or SERVER_VAD_DEFAULTS["silence_duration_ms"])
        if self._vad_silence_ms >= silence_ms:
            await self._speech_stopped(td, round(start_ms + VAD_WINDOW_MS))

    async def _speech_started(self, td: dict[str, Any]) -> None:
        self._speaking = True
        self._vad_silence_ms = 0
        self._speech_item_id = new_id("item_")
        padding = int(td.get("prefix_padding_ms") or 0) if td.get("type") == "server_vad" else 300
        self._speech_start_ms = round(max(0.0, self._buffer_start_ms, self._vad_onset_ms - padding))
        await self._send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": self._speech_start_ms,
                "item_id": self._speech_item_id,
            }
        )
        if self._active is not None and td.get("interrupt_response", True):
            await self._cancel_active("turn_detected")

    async def _speech_stopped(self, td: dict[str, Any], end_ms: int) -> None:
        self._reset_vad()
        item_id = self._speech_item_id
        await self._send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms, "item_id": item_id})
        audio = self._take_buffer(self._speech_start_ms, end_ms)
        await self._commit(item_id, audio)
        if td.get("create_response", True) and self._active is None:
            self._start_response({}, "vad")

    def _take_buffer(self, start_ms: float | None, end_ms: float | None) -> Int16Array:
        """Remove and return buffered audio in [start_ms, end_ms) (None = the whole buffer)."""
        buf = np.concatenate(self._buffer) if self._buffer else np.zeros(0, dtype=np.int16)
        rate = self._input_rate
        first = 0 if start_ms is None else max(0, round((start_ms - self._buffer_start_ms) * rate / 1000))
        cut = len(buf) if end_ms is None else min(len(buf), round((end_ms - self._buffer_start_ms) * rate / 1000))
        taken = buf[first:cut]
        self._buffer = [buf[cut:]] if cut < len(buf) else []
        self._buffer_start_ms += cut * 1000 / rate
        return taken

    async def _commit(self, item_id: str, audio: Int16Array) -> None:
        """The committed -> item.added -> item.done sequence shared by VAD and manual commits."""
        previous = self.items[-1]["id"] if self.items else None
        await self._send({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous})
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self.items.append(item)
        self.user_audio[item_id] = (audio, self._input_rate)
        await self._send({"type": "conversation.item.added", "item": copy.deepcopy(item), "previous_item_id": previous})
        await self._send({"type": "conversation.item.done", "item": copy.deepcopy(item), "previous_item_id": previous})
        transcription = self.session_config["audio"]["input"].get("transcription")
        if isinstance(transcription, dict):
            self._spawn(self._transcribe(item, audio, self._input_rate, transcription), "transcription")

    def _recognition(self, item_id: str, audio: Int16Array, rate: int) -> asyncio.Task[str]:
        """One recognition per caller item, shared by the transcription events and the reply (ASR may be costly)."""
        task = self._transcripts.get(item_id)
        if task is None:
            task = self._spawn(self._transcriber(audio, rate), f"recognise {item_id}")
            self._transcripts[item_id] = task
        return task

    async def _transcribe(self, item: Event, audio: Int16Array, rate: int, settings: dict[str, Any]) -> None:
        """Asynchronous like the real ASR pass: it may land after ``response.created``."""
        recognition = self._recognition(item["id"], audio, rate)
        await asyncio.sleep(self.sim_config.transcription_delay_ms / 1000)
        text = await asyncio.shield(recognition)
        item["content"][0]["transcript"] = text
        seconds = len(audio) / rate
        usage: dict[str, Any]
        if settings.get("model") == "whisper-1":
            usage = {"type": "duration", "seconds": round(seconds, 3)}
        else:
            audio_tokens = max(1, round(seconds * 10))
            text_tokens = max(1, len(text) // 4)
            usage = {
                "type": "tokens",
                "input_tokens": audio_tokens,
                "output_tokens": text_tokens,
                "total_tokens": audio_tokens + text_tokens,
                "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0},
            }
        await self._send(
            {
                "type": "conversation.item.input_audio_transcription.delta",
                "item_id": item["id"],
                "content_index": 0,
                "delta": text,
            }
        )
        await self._send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item["id"],
                "content_index": 0,
                "transcript": text,
                "usage": usage,
            }
        )

    async def _on_commit(self, event: Event) -> None:
        buffered_ms = sum(len(b) for b in self._buffer) * 1000 / self._input_rate
        if buffered_ms < MIN_COMMIT_MS:
            await self._error(
                event,
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {buffered_ms:.2f}ms of audio.",
                record=False,
            )
            return
        item_id = self._speech_item_id if self._speaking else new_id("item_")
        self._reset_vad()
        await self._commit(item_id, self._take_buffer(None, None))

    async def _on_clear(self, event: Event) -> None:
        self._take_buffer(None, None)
        self._reset_vad()
        await self._send({"type": "input_audio_buffer.cleared"})

    async def _on_output_audio_buffer_clear(self, event: Event) -> None:
        await self._error(
            event,
            "invalid_value",
            "output_audio_buffer.clear is only supported for WebRTC and SIP connections.",
            "type",
        )

    # ----- conversation items ------------------------------------------------------------------------------

    def _find_item(self, item_id: str) -> int | None:
        for index, item in enumerate(self.items):
            if item.get("id") == item_id:
                return index
        return None

    async def _on_item_create(self, event: Event) -> None:
        item: Event = copy.deepcopy(event["item"])
        item_id = item.get("id") or new_id("item_")
        if self._find_item(item_id) is not None:
            await self._error(
                event, "invalid_value", f"Item with id '{item_id}' already exists.", "item.id", record=False
            )
            return
        previous_id = event.get("previous_item_id")
        if previous_id is None:
            position = len(self.items)
        elif previous_id == "root":
            position = 0
        else:
            found = self._find_item(previous_id)
            if found is None:
                await self._error(
                    event,
                    "invalid_value",
                    f"Previous item with item_id not found: {previous_id}",
                    "previous_item_id",
                    record=False,
                )
                return
            position = found + 1
        item = {"id": item_id, "object": "realtime.item", **item, "status": "completed"}
        if item.get("type") == "message" and item.get("role") == "user":
            for part in item.get("content", []):
                if part.get("type") == "input_audio":
                    part.setdefault("transcript", None)
                    # The model hears a created audio item as it hears committed audio (in the input format).
                    with contextlib.suppress(binascii.Error, ValueError):
                        audio = self.input_format.decode(base64.b64decode(str(part.get("audio") or "")))
                        self.user_audio[item_id] = (audio, self.input_format.sample_rate)
        self.items.insert(position, item)
        previous = self.items[position - 1]["id"] if position > 0 else None
        await self._send({"type": "conversation.item.added", "item": copy.deepcopy(item), "previous_item_id": previous})
        await self._send({"type": "conversation.item.done", "item": copy.deepcopy(item), "previous_item_id": previous})

    async def _on_item_retrieve(self, event: Event) -> None:
        index = self._find_item(event["item_id"])
        if index is None:
            await self._error(
                event,
                "item_retrieve_invalid_item_id",
                f"Item with item_id not found: {event['item_id']}",
                "item_id",
                record=False,
            )
            return
        await self._send({"type": "conversation.item.retrieved", "item": copy.deepcopy(self.items[index])})

    async def _on_item_delete(self, event: Event) -> None:
        index = self._find_item(event["item_id"])
        if index is None:
            await self._error(
                event,
                "item_delete_invalid_item_id",
                f"Item with item_id not found: {event['item_id']}",
                "item_id",
                record=False,
            )
            return
        del self.items[index]
        await self._send({"type": "conversation.item.deleted", "item_id": event["item_id"]})

    async def _on_truncate(self, event: Event) -> None:
        """Validate like the live API; errors here are often races, so they are not protocol errors."""
        item_id: str = event["item_id"]
        audio_end_ms: int = event["audio_end_ms"]
        index = self._find_item(item_id)
        if index is None:
            await self._error(
                event,
                "item_truncate_invalid_item_id",
                f"Item with item_id not found: {item_id}",
                "item_id",
                record=False,
            )
            return
        item = self.items[index]
        sent_ms = self.assistant_audio_ms.get(item_id, 0)
        if item.get("role") != "assistant" or sent_ms == 0:
            await self._error(
                event,
                "unsupported_content_type",
                "Only model output audio messages can be truncated",
                record=False,
            )
            return
        if event["content_index"] != 0:
            await self._error(
                event, "invalid_value", f"Invalid content_index: {event['content_index']}", "content_index"
            )
            return
        if audio_end_ms < 0 or audio_end_ms > sent_ms:
            await self._error(
                event,
                "invalid_value",
                f"Audio content of {sent_ms}ms is already shorter than {audio_end_ms}ms",
                "audio_end_ms",
                record=False,
            )
            return
        for part in item.get("content", []):
            transcript = part.get("transcript")
            if isinstance(transcript, str):
                part["transcript"] = transcript[: round(len(transcript) * audio_end_ms / sent_ms)]
        self.assistant_audio_ms[item_id] = audio_end_ms
        self.truncations.append(
            {
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
                "item_audio_ms": sent_ms,
                "_t": time.monotonic(),
            }
        )
        await self._send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
            }
        )

    # ----- responses ---------------------------------------------------------------------------------------

    async def _on_response_create(self, event: Event) -> None:
        if self._active is not None:
            await self._error(
                event,
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._active.id}. "
                "Wait until the response is finished before creating a new one.",
                record=False,
            )
            return
        self._start_response(dict(event.get("response") or {}), "client")

    async def _on_response_cancel(self, event: Event) -> None:
        wanted = event.get("response_id")
        if self._active is None or (wanted and wanted != self._active.id):
            await self._error(
                event,
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
                record=False,
            )
            return
        await self._cancel_active("client_cancelled")

    def _start_response(self, params: dict[str, Any], trigger: Literal["client", "vad"]) -> None:
        cfg = self.session_config
        out_params = (params.get("audio") or {}).get("output") or {}
        self.responses_started += 1
        response = _Response(
            id=new_id("resp_"),
            number=self.responses_started,
            params=params,
            trigger=trigger,
            in_conversation=params.get("conversation", "auto") != "none",
            modalities=list(params.get("output_modalities") or cfg.get("output_modalities") or ["audio"]),
            audio_format=AudioFormat.from_session(out_params.get("format") or cfg["audio"]["output"].get("format")),
            voice=out_params.get("voice") or cfg["audio"]["output"].get("voice"),
            instructions=str(params.get("instructions", cfg.get("instructions") or "")),
        )
        self._active = response
        response.task = self._spawn(self._run_response(response), f"response {response.number}")

    async def _cancel_active(self, reason: str) -> None:
        """Stop the active response now and wait until its cancelled ``response.done`` is out."""
        response = self._active
        if response is None:
            return
        if response.stop_reason is None:
            response.stop_reason = reason
        response.stop.set()
        if response.task is not None:
            await asyncio.wait([response.task])

    async def _pause_until(self, response: _Response, deadline: float) -> None:
        """Emulated generation clock; returns early when the response is stopped."""
        delay = deadline - asyncio.get_running_loop().time()
        if response.stop.is_set():
            return
        if delay <= 0:
            await asyncio.sleep(0)  # let the reader run, so barge-in works even at speed=0
            return
        try:
            async with asyncio.timeout(delay):
                await response.stop.wait()
        except TimeoutError:
            pass

    def _response_object(self, response: _Response, status: str, details: Event | None, usage: Event | None) -> Event:
        max_tokens = response.params.get("max_output_tokens", self.session_config.get("max_output_tokens", "inf"))
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": details,
            "output": copy.deepcopy(response.output),
            "conversation_id": self.conversation_id if response.in_conversation else None,
            "output_modalities": response.modalities,
            "max_output_tokens": max_tokens,
            "audio": {"output": {"format": response.audio_format.as_session(), "voice": response.voice}},
            "usage": usage,
            "metadata": response.params.get("metadata"),
        }

    async def _run_response(self, response: _Response) -> None:
        loop = asyncio.get_running_loop()
        created_at = loop.time()
        await self._send(
            {"type": "response.created", "response": self._response_object(response, "in_progress", None, None)}
        )
        scripted = self._scripted_replies.popleft() if self._scripted_replies else None
        audio_out = "audio" in response.modalities
        caller_text, caller_waiting = await self._caller_turn()
        request = ReplyRequest(
            session=self,
            response_id=response.id,
            number=response.number,
            audio_format=response.audio_format if audio_out else None,
            reply_ms=self.sim_config.reply_ms if scripted is None or scripted.reply_ms is None else scripted.reply_ms,
            transcript=scripted.transcript if scripted else None,
            instructions=response.instructions,
            trigger=response.trigger,
            session_instructions=str(self.session_config.get("instructions") or ""),
            caller_text=caller_text,
            caller_waiting=caller_waiting,
            tools=self._tool_names(response.params),
        )
        reply = await self.reply_source.reply(request)
        first_delta_at = created_at + self.sim_config.first_audio_delay_ms / 1000
        has_message = (
            reply.audio is not None and len(reply.audio) > 0
            if audio_out
            else bool(reply.transcript and request.reply_ms)
        )
        if has_message and not response.stop.is_set():
            await self._stream_message(response, reply, audio_out, request.reply_ms, first_delta_at)
        if not response.stop.is_set():
            calls = list(reply.tool_calls) + self._queued_tool_calls
            self._queued_tool_calls = []
            for call in calls:
                await self._emit_tool_call(response, call)
        await self._finish_response(response)

    async def _caller_turn(self) -> tuple[str | None, bool]:
        """The caller's latest message as text, and whether it is the latest item (so it awaits an answer)."""
        for index in range(len(self.items) - 1, -1, -1):
            item = self.items[index]
            if item.get("type") != "message" or item.get("role") != "user":
                continue
            parts: list[str] = []
            for part in item.get("content", []):
                if part.get("type") == "input_text":
                    parts.append(str(part.get("text") or ""))
                elif part.get("type") == "input_audio":
                    recorded = self.user_audio.get(item["id"])
                    if recorded is not None:
                        parts.append(await asyncio.shield(self._recognition(item["id"], *recorded)))
                    else:
                        parts.append(str(part.get("transcript") or ""))
            return " ".join(p for p in parts if p), index == len(self.items) - 1
        return None, False

    def _tool_names(self, params: dict[str, Any]) -> tuple[str, ...]:
        """The function tools a response may call: its own or the session's, filtered by ``tool_choice``."""
        choice = params.get("tool_choice", self.session_config.get("tool_choice", "auto"))
        if choice == "none":
            return ()
        tools = params.get("tools", self.session_config.get("tools")) or []
        names = tuple(
            str(t["name"]) for t in tools if isinstance(t, dict) and t.get("type") == "function" and t.get("name")
        )
        if isinstance(choice, dict) and choice.get("name"):
            return tuple(n for n in names if n == choice["name"])
        return names

    async def _emit_item_added(self, response: _Response, item: Event, output_index: int) -> str | None:
        await self._send(
            {
                "type": "response.output_item.added",
                "response_id": response.id,
                "output_index": output_index,
                "item": copy.deepcopy(item),
            }
        )
        previous = None
        if response.in_conversation:
            previous = self.items[-1]["id"] if self.items else None
            self.items.append(item)
            await self._send(
                {"type": "conversation.item.added", "item": copy.deepcopy(item), "previous_item_id": previous}
            )
        return previous

    async def _emit_item_done(self, response: _Response, item: Event, output_index: int, previous: str | None) -> None:
        await self._send(
            {
                "type": "response.output_item.done",
                "response_id": response.id,
                "output_index": output_index,
                "item": copy.deepcopy(item),
            }
        )
        if response.in_conversation:
            await self._send(
                {"type": "conversation.item.done", "item": copy.deepcopy(item), "previous_item_id": previous}
            )

    async def _stream_message(
        self, response: _Response, reply: Reply, audio_out: bool, reply_ms: int, first_delta_at: float
    ) -> None:
        """§4 steps 7-14: the assistant message with paced, interleaved transcript and audio deltas."""
        cfg = self.sim_config
        fmt = response.audio_format
        output_index = len(response.output)
        item: Event = {
            "id": new_id("item_"),
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        response.output.append(item)
        ids = {"response_id": response.id, "item_id": item["id"], "output_index": output_index, "content_index": 0}
        previous = await self._emit_item_added(response, item, output_index)
        part: Event = {"type": "audio", "transcript": ""} if audio_out else {"type": "text", "text": ""}
        await self._send({"type": "response.content_part.added", **ids, "part": part})

        transcript = reply.transcript
        if audio_out:
            assert reply.audio is not None
            step = max(1, fmt.sample_rate * cfg.chunk_ms // 1000)
            chunks = [reply.audio[i : i + step] for i in range(0, len(reply.audio), step)]
            self.assistant_audio_ms[item["id"]] = 0
        else:
            chunks = [np.zeros(0, dtype=np.int16)] * max(1, -(-reply_ms // cfg.chunk_ms))
        interval = cfg.chunk_ms / cfg.speed / 1000 if cfg.speed > 0 else 0.0
        sent_chars = 0
        for k, chunk in enumerate(chunks):
            await self._pause_until(response, first_delta_at + k * interval)
            if response.stop.is_set():
                break
            cut = round(len(transcript) * (k + 1) / len(chunks))
            piece, sent_chars = transcript[sent_chars:cut], cut
            if audio_out:
                if piece:
                    await self._send(
                        {
                            "type": "response.output_audio_transcript.delta",
                            **ids,
                            "delta": piece,
                            "obfuscation": new_id("")[:8],
                        }
                    )
                await self._send(
                    {
                        "type": "response.output_audio.delta",
                        **ids,
                        "delta": base64.b64encode(fmt.encode(chunk)).decode("ascii"),
                    }
                )
                response.audio_ms += len(chunk) * 1000 // fmt.sample_rate
                self.assistant_audio_ms[item["id"]] = response.audio_ms
            elif piece:
                await self._send({"type": "response.output_text.delta", **ids, "delta": piece})
            response.text = transcript[:sent_chars]

        spoken = transcript[:sent_chars]
        if audio_out:
            await self._send({"type": "response.output_audio.done", **ids})
            await self._send({"type": "response.output_audio_transcript.done", **ids, "transcript": spoken})
            await self._send(
                {"type": "response.content_part.done", **ids, "part": {"type": "audio", "transcript": spoken}}
            )
            item["content"] = [{"type": "output_audio", "transcript": spoken}]
        else:
            await self._send({"type": "response.output_text.done", **ids, "text": spoken})
            await self._send({"type": "response.content_part.done", **ids, "part": {"type": "text", "text": spoken}})
            item["content"] = [{"type": "output_text", "text": spoken}]
        item["status"] = "incomplete" if response.stop.is_set() else "completed"
        await self._emit_item_done(response, item, output_index, previous)

    async def _emit_tool_call(self, response: _Response, call: ToolCall) -> None:
        """§6: function_call item; emitted without pauses, so it is all-or-nothing with respect to barge-in."""
        output_index = len(response.output)
        arguments = call.arguments_json()
        item: Event = {
            "id": new_id("item_"),
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": call.name,
            "call_id": new_id("call_"),
            "arguments": "",
        }
        response.output.append(item)
        ids = {
            "response_id": response.id,
            "item_id": item["id"],
            "output_index": output_index,
            "call_id": item["call_id"],
        }
        previous = await self._emit_item_added(response, item, output_index)
        middle = len(arguments) // 2
        for delta in (arguments[:middle], arguments[middle:]):
            if delta:
                await self._send({"type": "response.function_call_arguments.delta", **ids, "delta": delta})
        await self._send(
            {"type": "response.function_call_arguments.done", **ids, "name": call.name, "arguments": arguments}
        )
        item["arguments"] = arguments
        item["status"] = "completed"
        await self._emit_item_done(response, item, output_index, previous)

    def _usage(self, response: _Response) -> Event:
        """Plausible token counts: ~10 input audio tokens/s, ~20 output audio tokens/s, ~4 chars a text token."""
        text_chars = len(response.instructions) + sum(
            len(str(part.get("text") or part.get("transcript") or ""))
            for item in self.items
            for part in item.get("content", [])
            if isinstance(part, dict)
        )
        in_audio = sum(len(a) * 10 // rate for a, rate in self.user_audio.values()) + sum(
            ms // 50 for ms in self.assistant_audio_ms.values()
        )
        in_text = max(1, text_chars // 4)
        out_audio = response.audio_ms // 50
        out_text = max(1, len(response.text) // 4) + sum(
            len(item.get("arguments", "")) // 4 for item in response.output if item["type"] == "function_call"
        )
        return {
            "total_tokens": in_audio + in_text + out_audio + out_text,
            "input_tokens": in_audio + in_text,
            "output_tokens": out_audio + out_text,
            "input_token_details": {
                "text_tokens": in_text,
                "audio_tokens": in_audio,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
        }

    async def _finish_response(self, response: _Response) -> None:
        cancelled = response.stop.is_set()
        status = "cancelled" if cancelled else "completed"
        details = {"type": "cancelled", "reason": response.stop_reason} if cancelled else None
        usage = self._usage(response)
        final = self._response_object(response, status, details, usage)
        self.responses.append(final)
        if self._active is response:
            self._active = None  # a response.create answered right after response.done must be accepted
        total = int(usage["total_tokens"])
        rate_limits = [
            {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
            {"name": "tokens", "limit": 40000, "remaining": max(0, 40000 - total), "reset_seconds": 0.5},
        ]
        await self._send_batch(
            [{"type": "response.done", "response": final}, {"type": "rate_limits.updated", "rate_limits": rate_limits}]
        )


# ---------------------------------------------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------------------------------------------


class RealtimeServer:
    """Serves ``ws://127.0.0.1:PORT/v1/realtime`` for the unmodified openai SDK; one :class:`SimSession` a socket.

    ``on_session`` (sync or async) runs for each new session before ``session.created`` is sent, to script it.
    ``internal_errors`` collects bugs in the fake itself; tests should assert it stays empty.
    """

    def __init__(self, config: RealtimeSimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or RealtimeSimConfig()
        self.host = host
        self.port = port
        self.sessions: list[SimSession] = []
        self.on_session: Callable[[SimSession], Awaitable[None] | None] | None = None
        self.internal_errors: list[str] = []
        self._server: Server | None = None
        self._live: set[SimSession] = set()
        self._session_waiters: list[tuple[int, asyncio.Future[SimSession]]] = []
        self._idle_waiters: list[asyncio.Future[None]] = []

    @property
    def http_base_url(self) -> str:
        """For ``AsyncOpenAI(base_url=...)``; the SDK maps http->ws and appends ``/realtime``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def ws_base_url(self) -> str:
        """For ``AsyncOpenAI(websocket_base_url=...)``."""
        return f"ws://{self.host}:{self.port}/v1"

    @property
    def connections_open(self) -> int:
        """Sockets whose session handler is still running."""
        return len(self._live)

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            logger=_ws_log,
            compression="deflate",  # accept a permessage-deflate offer; the SDK normally sends none
            max_size=32 * 2**20,  # the API accepts 15 MiB of audio per append, base64-encoded
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        """Close every connection (code 1001) and wait until all session handlers have finished."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def wait_for_session(self, index: int = 0, timeout: float = 5) -> SimSession:  # noqa: ASYNC109
        """The ``index``-th session (connection order), waiting for it to connect if needed."""
        if index < len(self.sessions):
            return self.sessions[index]
        fut: asyncio.Future[SimSession] = asyncio.get_running_loop().create_future()
        waiter = (index, fut)
        self._session_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise TimeoutError(f"session #{index} did not connect within {timeout}s") from None
        finally:
            self._session_waiters.remove(waiter)

    async def wait_idle(self, timeout: float = 5) -> None:  # noqa: ASYNC109
        """Wait until no connection is open (handlers finished, tasks cancelled)."""
        if not self._live:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise TimeoutError(f"{self.connections_open} connection(s) still open after {timeout}s") from None
        finally:
            self._idle_waiters.remove(fut)

    def _record_internal_error(self, session: SimSession | None, exc: BaseException) -> None:
        where = session.id if session else "server"
        self.internal_errors.append(f"{where}: {type(exc).__name__}: {exc}")
        log.error("realtime simulator bug in %s", where, exc_info=exc)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """HTTP-level checks before the upgrade: path, query, optional API key."""
        url = urlsplit(request.path)
        if url.path.rstrip("/") != REALTIME_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        query = parse_qs(url.query)
        if not query.get("model") and not query.get("call_id"):
            return connection.respond(HTTPStatus.BAD_REQUEST, "Missing required query parameter: model\n")
        expected_auth = None if self.config.api_key is None else f"Bearer {self.config.api_key}"
        if expected_auth is not None and request.headers.get("Authorization") != expected_auth:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Incorrect API key provided.\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None  # set once the handshake succeeded
        query = parse_qs(urlsplit(request.path).query)
        call_id = query.get("call_id", [None])[0]
        session = SimSession(
            self,
            ws,
            model=query.get("model", [DEFAULT_MODEL])[0] or DEFAULT_MODEL,
            call_id=call_id,
            headers={k.lower(): v for k, v in request.headers.raw_items()},
            sim_config=dataclasses.replace(self.config),
            beta="realtime=v1" in request.headers.get("OpenAI-Beta", ""),
        )
        self.sessions.append(session)
        self._live.add(session)
        for index, fut in self._session_waiters:
            if index == len(self.sessions) - 1 and not fut.done():
                fut.set_result(session)
        try:
            if self.on_session is not None:
                result = self.on_session(session)
                if inspect.isawaitable(result):
                    await result
            await session._serve()
        except ConnectionClosed:
            pass
        except Exception as exc:
            self._record_internal_error(session, exc)
            await ws.close(1011, "realtime simulator error")
        finally:
            await session._shutdown()
            self._live.discard(session)
            if not self._live:
                for fut_idle in self._idle_waiters:
                    if not fut_idle.done():
                        fut_idle.set_result(None)
