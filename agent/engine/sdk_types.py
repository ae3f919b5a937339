"""The GA Realtime event types as the openai SDK publishes them, for the offline engine to check both directions.

The engine is a stand-in for OpenAI: it must judge the agent by the published contract, never by the agent's own
protocol code, so it builds its validators here from the SDK alone. The SDK's unions carry an SDK-internal
discriminator that pydantic ignores; re-tagging them with a real discriminator validates in about a microsecond
and gives precise errors.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Union

from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import Field, TypeAdapter

# Keys of the retired beta session shape; the GA API rejects them inside session.update.
BETA_SESSION_KEYS = frozenset(
    {
        "modalities",
        "input_audio_format",
        "output_audio_format",
        "voice",
        "turn_detection",
        "input_audio_transcription",
        "input_audio_noise_reduction",
        "max_response_output_tokens",
        "temperature",
        "speed",
    }
)


def _tagged(alias: Any) -> TypeAdapter[Any]:
    members = typing.get_args(typing.get_args(alias)[0])
    return TypeAdapter(Annotated[Union[members], Field(discriminator="type")])  # type: ignore[arg-type]  # noqa: UP007


_SERVER: TypeAdapter[Any] = _tagged(RealtimeServerEvent)
_CLIENT: TypeAdapter[Any] = _tagged(RealtimeClientEvent)
SERVER_EVENT_TYPES: frozenset[str] = frozenset(
    typing.get_args(m.model_fields["type"].annotation)[0]
    for m in typing.get_args(typing.get_args(RealtimeServerEvent)[0])
)


def validate_server_event(event: dict[str, Any]) -> Any:
    """Raise pydantic.ValidationError unless `event` is a valid GA server event."""
    return _SERVER.validate_python(event)


# String values that are free text or fresh ids (every event has new ones), as opposed to the enum-like strings
# ("status": "completed", "type": ...) whose value the SDK's model checks and which must therefore be part of a shape.
_FREE_TEXT_KEYS = frozenset(
    {
        "event_id",
        "id",
        "item_id",
        "response_id",
        "previous_item_id",
        "call_id",
        "conversation_id",
        "delta",
        "transcript",
        "text",
        "obfuscation",
        "arguments",
        "audio",
        "message",
        "instructions",
    }
)
_TEXT = object()  # stands for any string under a free-text key
_SHAPES_MAX = 20_000


def event_shape(value: Any, key: str | None = None) -> Any:
    """What the SDK's model judges of an event: its keys in order, each value's type, and every string except
    ids and free text (an enum's value is checked, an id's is not). Events of one shape all pass or all fail."""
    kind = type(value)
    if kind is dict:
        return tuple((k, event_shape(v, k)) for k, v in value.items())
    if kind is list:
        return (list, *(event_shape(v, key) for v in value))
    if kind is str:
        return _TEXT if key in _FREE_TEXT_KEYS else value
    return kind


class ShapeCheckedServerEvents:
    """``validate_server_event`` once per event shape (:func:`event_shape`): for a load generator, whose
    thousands of events a second repeat a few dozen shapes. Walking an event costs a fraction of the model's
    check; an event of a new shape is checked in full, so a mistake in any shape the engine emits still shows."""

    def __init__(self) -> None:
        self._passed: set[Any] = set()

    def __call__(self, event: dict[str, Any]) -> None:
        shape = event_shape(event)
        if shape in self._passed:
            return
        validate_server_event(event)
        if len(self._passed) < _SHAPES_MAX:
            self._passed.add(shape)


def validate_client_event(event: dict[str, Any]) -> Any:
    """Raise pydantic.ValidationError (or ValueError for beta leftovers) unless `event` is a valid GA client event."""
    parsed = _CLIENT.validate_python(event)
    if event.get("type") == "session.update":
        leftovers = BETA_SESSION_KEYS & set(event.get("session", {}))
        if leftovers:
            raise ValueError(f"beta-only session keys in a GA session.update: {sorted(leftovers)}")
    return parsed
