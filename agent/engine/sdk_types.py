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


def validate_client_event(event: dict[str, Any]) -> Any:
    """Raise pydantic.ValidationError (or ValueError for beta leftovers) unless `event` is a valid GA client event."""
    parsed = _CLIENT.validate_python(event)
    if event.get("type") == "session.update":
        leftovers = BETA_SESSION_KEYS & set(event.get("session", {}))
        if leftovers:
            raise ValueError(f"beta-only session keys in a GA session.update: {sorted(leftovers)}")
    return parsed
