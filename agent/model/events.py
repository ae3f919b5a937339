"""Strict validators for GA Realtime events, built from the openai SDK's own types.

The SDK's unions carry an SDK-internal discriminator that pydantic ignores; re-tagging them with a real
pydantic discriminator validates in about a microsecond and gives precise errors. Fakes use these to prove
that every event they send or receive is one the real API and SDK understand.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Union

from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import Field, TypeAdapter


def _tagged(alias: Any) -> TypeAdapter[Any]:
    members = typing.get_args(typing.get_args(alias)[0])
    return TypeAdapter(Annotated[Union[members], Field(discriminator="type")])  # type: ignore[arg-type]  # noqa: UP007


SERVER_EVENTS: TypeAdapter[Any] = _tagged(RealtimeServerEvent)
CLIENT_EVENTS: TypeAdapter[Any] = _tagged(RealtimeClientEvent)

# Keys that only exist in the retired beta session shape; the GA API rejects them.
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


def validate_server_event(event: dict[str, Any]) -> Any:
    """Raise pydantic.ValidationError unless `event` is a valid GA server event."""
    return SERVER_EVENTS.validate_python(event)


def validate_client_event(event: dict[str, Any]) -> Any:
    """Raise pydantic.ValidationError (or ValueError for beta leftovers) unless `event` is a valid GA client event."""
    parsed = CLIENT_EVENTS.validate_python(event)
    if event.get("type") == "session.update":
        leftovers = BETA_SESSION_KEYS & set(event.get("session", {}))
        if leftovers:
            raise ValueError(f"beta-only session keys in a GA session.update: {sorted(leftovers)}")
    return parsed
