"""The GA protocol as the engine speaks it: event types, session defaults and updates, validation errors,
and the per-connection event log that coroutines wait on."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from agent.engine.formats import AudioFormat

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

NEWER_EVENT_TYPE = "response.reasoning_summary.started"  # not in the GA SDK's server event union
NEWER_STATUS_REASON = "server_shutdown"  # not in RealtimeResponseStatus.reason


def copy_json(value: Any) -> Any:
    """A deep copy of JSON-shaped data (dicts, lists, scalars): what ``copy.deepcopy`` gives, at a fraction of
    its cost, for the record kept of every event."""
    kind = type(value)
    if kind is dict:
        return {k: v if type(v) in _SCALARS else copy_json(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _SCALARS else copy_json(v) for v in value]
    if kind in _SCALARS:
        return value
    return copy.deepcopy(value)


_SCALARS = frozenset({str, int, float, bool, type(None)})
_encode_str = json.encoder.encode_basestring_ascii


def dumps_event(event: Event, verbatim: str | None = None) -> str:
    """``json.dumps(event)``, character for character, without its per-call set-up for the usual flat event.

    ``verbatim`` names a key whose string value the caller guarantees needs no escaping (base64 audio): a
    kilobyte delta is then copied rather than scanned. Nested values are encoded by ``json.dumps`` itself."""
    parts = []
    for key, value in event.items():
        name = _KEY_TEXT.get(key)
        if name is None:
            if type(key) is not str or len(_KEY_TEXT) > 4096:
                return json.dumps(event)
            name = _KEY_TEXT[key] = _encode_str(key) + ": "
        kind = type(value)
        if kind is str:
            parts.append(f'{name}"{value}"' if key == verbatim else name + _encode_str(value))
        elif kind is int:
            parts.append(name + int.__repr__(value))
        elif value is None:
            parts.append(name + "null")
        else:
            parts.append(name + json.dumps(value))
    return "{" + ", ".join(parts) + "}"


_KEY_TEXT: dict[str, str] = {}  # a key's JSON text and separator: events use a few dozen keys, over and over


def newer_wire(wire: Event) -> Event:
    """What a newer server adds to an event the SDK already describes."""
    wire = {**wire, "sequence_number": 1}
    if wire["type"] == "response.done":
        response = dict(wire["response"])
        response["status_details"] = {**(response.get("status_details") or {}), "reason": NEWER_STATUS_REASON}
        response["status_details"].setdefault("type", response.get("status"))
        wire["response"] = response
    return wire


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
READ_ONLY_SESSION_KEYS = frozenset({"id", "object", "expires_at", "model"})


def merge_session(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge a partial session update: only fields present change, ``null`` clears."""
    out = dict(base)
    for key, value in update.items():
        current = out.get(key)
        same_vad = key != "turn_detection" or (
            isinstance(value, dict) and isinstance(current, dict) and value.get("type") == current.get("type")
        )
        if isinstance(value, dict) and isinstance(current, dict) and key not in _REPLACED_WHOLE and same_vad:
            out[key] = merge_session(current, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def normalise_session(session: dict[str, Any]) -> None:
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


def describe_validation_error(event: Event, exc: ValidationError) -> tuple[str, str, str | None]:
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


class EventLog:
    """Append-only event record that coroutines can wait on (futures resolved on append; never polled)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.events: list[Event] = []
        self._waiters: list[tuple[str, EventPredicate | None, asyncio.Future[Event]]] = []
        self._closed_reason: str | None = None

    def add(self, event: Event) -> None:
        self.events.append(event)
        if not self._waiters:
            return  # the usual case (a waiter is a test's), for the 100 events a second a call adds
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
class ResponseState:
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
    wake: asyncio.Future[None] | None = None
    """What the response's stream is pausing on, if it is: set when the response is stopped."""
    task: asyncio.Task[None] | None = None
    output: list[Event] = field(default_factory=list)
    audio_ms: int = 0
    text: str = ""


@dataclass(frozen=True)
class ScriptedReply:
    transcript: str | None
    reply_ms: int | None


# ---------------------------------------------------------------------------------------------------------------
# Session
# ---------------------------------------------------------------------------------------------------------------
