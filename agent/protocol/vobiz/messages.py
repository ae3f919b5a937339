"""The Vobiz stream socket protocol: validated inbound events and the commands the agent sends.

Inbound events are validated with pydantic before anything acts on them; Vobiz's doc revisions disagree on
several shapes (flat vs nested `start`, `streamId` on acks, where a DTMF digit lives), and each accepted
variant is normalised here so the rest of the agent sees one shape.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from agent.audio.formats import MediaFormat


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")
    sequenceNumber: int | None = None


class MediaFormatInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    encoding: str
    sampleRate: int


class StartInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    callId: str = Field(min_length=1)
    streamId: str = Field(min_length=1)
    accountId: str | int | None = None
    tracks: list[str] = Field(default_factory=lambda: ["inbound"])
    mediaFormat: MediaFormatInfo

    @model_validator(mode="after")
    def _supported_format(self) -> StartInfo:
        self.media_format  # noqa: B018 - raises ValueError for formats the agent cannot decode
        return self

    @property
    def media_format(self) -> MediaFormat:
        return MediaFormat.from_parts(self.mediaFormat.encoding, self.mediaFormat.sampleRate)


class StartEvent(_Event):
    event: Literal["start"]
    start: StartInfo
    extra_headers: str | dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_flat_form(cls, data: Any) -> Any:
        """R0 docs sent callId/streamId/contentType at the top level; fold them into the nested form."""
        if isinstance(data, dict) and "start" not in data and "callId" in data:
            content_type = str(data.get("contentType") or "audio/x-mulaw;rate=8000")
            fmt = MediaFormat.parse(content_type)
            data = {
                **data,
                "start": {
                    "callId": data.get("callId"),
                    "streamId": data.get("streamId"),
                    "accountId": data.get("accountId"),
                    "tracks": [data.get("audioTrack") or "inbound"],
                    "mediaFormat": {
                        "encoding": fmt.encoding,
                        "sampleRate": data.get("sampleRate") or fmt.rate,
                    },
                },
            }
        return data


class MediaInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    track: str = "inbound"
    timestamp: str | int | None = None
    chunk: int | None = None
    payload: str


class MediaEvent(_Event):
    event: Literal["media"]
    streamId: str | None = None
    media: MediaInfo


class PlayedStreamEvent(_Event):
    event: Literal["playedStream"]
    name: str
    streamId: str | None = None


class ClearedAudioEvent(_Event):
    event: Literal["clearedAudio"]
    streamId: str | None = None


class DtmfEvent(_Event):
    event: Literal["dtmf"]
    streamId: str | None = None
    digit: str = Field(pattern=r"^[0-9*#A-Da-d]$")

    @model_validator(mode="before")
    @classmethod
    def _accept_nested_digit(cls, data: Any) -> Any:
        """Plivo's shape nests the digit under `dtmf`; community Vobiz code also sees it at the top level."""
        if isinstance(data, dict) and "digit" not in data and isinstance(data.get("dtmf"), dict):
            data = {**data, "digit": data["dtmf"].get("digit")}
        return data


class StopEvent(_Event):
    """Legacy (R0) inbound stop; current Vobiz just closes the socket."""

    event: Literal["stop"]
    streamId: str | None = None


InboundEvent = StartEvent | MediaEvent | PlayedStreamEvent | ClearedAudioEvent | DtmfEvent | StopEvent
_INBOUND: TypeAdapter[InboundEvent] = TypeAdapter(Annotated[InboundEvent, Field(discriminator="event")])


class InboundError(ValueError):
    """A message that was dropped; `reason` is a short counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_inbound(text: str | bytes) -> InboundEvent:
    try:
        return _INBOUND.validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        kind = first["type"]
        if kind == "json_invalid":
            raise InboundError("malformed_json", first["msg"]) from None
        if kind == "union_tag_invalid":
            raise InboundError("unknown_event", str(first.get("ctx", {}).get("tag", "?"))) from None
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise InboundError("invalid_event", detail) from None
    except ValueError as exc:  # raised inside a before-validator, e.g. an unsupported flat contentType
        raise InboundError("invalid_event", str(exc)) from None


# Commands to Vobiz. Built by hand: they run 50 times a second per call.


def play_audio(stream_id: str, fmt: MediaFormat, payload_b64: str) -> str:
    return (
        '{"event":"playAudio","streamId":'
        + json.dumps(stream_id)
        + ',"media":{"contentType":"'
        + fmt.encoding
        + '","sampleRate":'
        + str(fmt.rate)
        + ',"payload":"'
        + payload_b64
        + '"}}'
    )


def checkpoint(stream_id: str, name: str) -> str:
    return json.dumps({"event": "checkpoint", "streamId": stream_id, "name": name})


def clear_audio(stream_id: str) -> str:
    return json.dumps({"event": "clearAudio", "streamId": stream_id})


def stop(stream_id: str) -> str:
    return json.dumps({"event": "stop", "streamId": stream_id})
