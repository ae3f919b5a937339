"""The server events a call acts on, parsed tolerantly: typed, but never stricter than what the call needs.

OpenAI adds event types and enum values (a new `status_details.reason`, a new `status`) before the SDK lists
them. Validating every event against the SDK's types and dropping what fails loses, for example, a
`response.done` carrying the `end_call` function call, and the call hangs. So the call reads each event it
handles through these narrow models: only the fields it uses are required, enums are plain strings, extra keys
are ignored, and event types it does not handle are skipped. Whether an event also matches the SDK's own types
can be checked on the side (`conforms`) and only counted, never used to drop it; that check loads the openai SDK
(~18 MB of types), so it runs only when asked for (AGENT_MODEL_STRICT_EVENTS, and the tests).
"""

from __future__ import annotations

import functools
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class TokenDetails(_Lenient):
    text_tokens: int | None = None
    audio_tokens: int | None = None
    cached_tokens: int | None = None


class Usage(_Lenient):
    input_token_details: TokenDetails | None = None
    output_token_details: TokenDetails | None = None


class ResponseRef(_Lenient):
    id: str
    status: str | None = None
    metadata: dict[str, str] | None = None


class OutputItem(_Lenient):
    type: str
    id: str | None = None
    status: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None


class ResponseSummary(ResponseRef):
    status_details: dict[str, Any] | None = None
    usage: Usage | None = None
    output: list[OutputItem] = []


class ErrorDetail(_Lenient):
    type: str | None = None
    code: str | None = None
    message: str = ""
    event_id: str | None = None


class AudioDelta(_Lenient):
    type: Literal["response.output_audio.delta"]
    response_id: str
    item_id: str
    delta: str


class AudioDone(_Lenient):
    type: Literal["response.output_audio.done"]
    response_id: str = ""
    item_id: str


class TranscriptDelta(_Lenient):
    type: Literal["response.output_audio_transcript.delta"]
    item_id: str
    delta: str = ""


class TranscriptDone(_Lenient):
    type: Literal["response.output_audio_transcript.done"]
    item_id: str
    transcript: str = ""


class SpeechStarted(_Lenient):
    type: Literal["input_audio_buffer.speech_started"]
    item_id: str
    audio_start_ms: int = 0


class SpeechStopped(_Lenient):
    type: Literal["input_audio_buffer.speech_stopped"]
    item_id: str
    audio_end_ms: int = 0


class InputCommitted(_Lenient):
    type: Literal["input_audio_buffer.committed"]
    item_id: str


class CallerTranscript(_Lenient):
    type: Literal["conversation.item.input_audio_transcription.completed"]
    item_id: str
    transcript: str = ""


class ResponseCreated(_Lenient):
    type: Literal["response.created"]
    response: ResponseRef


class OutputItemDone(_Lenient):
    type: Literal["response.output_item.done"]
    response_id: str
    item: OutputItem


class ResponseDone(_Lenient):
    type: Literal["response.done"]
    response: ResponseSummary


class ItemTruncated(_Lenient):
    type: Literal["conversation.item.truncated"]
    item_id: str
    audio_end_ms: int = 0


class Error(_Lenient):
    type: Literal["error"]
    error: ErrorDetail


class SessionChanged(_Lenient):
    type: Literal["session.created", "session.updated"]


ServerEvent = Annotated[
    AudioDelta
    | AudioDone
    | TranscriptDelta
    | TranscriptDone
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | CallerTranscript
    | ResponseCreated
    | OutputItemDone
    | ResponseDone
    | ItemTruncated
    | Error
    | SessionChanged,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[ServerEvent] = TypeAdapter(ServerEvent)

# The audio stream is most of the traffic and its shape is fixed: checking it against the SDK's types too would
# double the per-delta cost for nothing.
_NOT_CHECKED = frozenset({"response.output_audio.delta", "response.output_audio_transcript.delta"})


class Unhandled(Exception):
    """An event the call does not act on (an unknown type), or one of its types missing a needed field."""

    def __init__(self, kind: str, detail: str, known: bool) -> None:
        super().__init__(detail)
        self.kind = kind
        self.known = known


def parse(raw: str | bytes) -> ServerEvent:
    """The event as the call needs it; raises `Unhandled` for anything else."""
    try:
        return _ADAPTER.validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "union_tag_invalid":
            kind = str(first.get("ctx", {}).get("tag", "?"))
            return _raise(kind, "unhandled type", known=False)
        if first["type"] == "union_tag_not_found":
            return _raise("?", "no type", known=False)
        kind = str(first["loc"][0]) if first["loc"] else "?"
        return _raise(kind, str(exc).splitlines()[0] + ": " + first["msg"], known=True)


@functools.cache
def sdk_server_events() -> TypeAdapter[Any]:
    """The SDK's own union, re-tagged with a real pydantic discriminator (its own tag is SDK-internal metadata that
    pydantic ignores): strict, and about a microsecond an event. Built on first use: it imports the SDK."""
    from openai.types.realtime import RealtimeServerEvent

    members = typing.get_args(typing.get_args(RealtimeServerEvent)[0])
    return TypeAdapter(Annotated[Union[members], Field(discriminator="type")])  # type: ignore[arg-type]  # noqa: UP007


def _raise(kind: str, detail: str, *, known: bool) -> ServerEvent:
    raise Unhandled(kind, detail, known)


def conforms(event: ServerEvent, raw: str | bytes) -> bool:
    """Whether the event also passes the SDK's strict types (a newer server may send what it does not list)."""
    if event.type in _NOT_CHECKED:
        return True
    try:
        sdk_server_events().validate_json(raw)
    except ValidationError:
        return False
    return True
