"""What the simulated model says: the engine's knobs, the reply-source interface and the default tone replies."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agent.audio.codecs import Int16Array
from agent.engine.formats import AudioFormat, describe_audio, sine_tone


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
    reply_text: Callable[[ReplySession], str] | None = None
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
    sdk_check: Literal["every", "per_shape"] = "every"
    """How sent events are checked against the SDK's types: ``every`` event (the default: tests, the embedded
    engine), or the first of each shape (``sdk_types.event_shape``), which a load generator uses to spend its
    CPU on the load rather than on re-checking identical structures."""


class ReplySession(Protocol):
    """What a reply source may read of the session it speaks in (a :class:`~agent.engine.session.SimSession`).

    A protocol rather than the class, so that this module stays below the session that imports it."""

    id: str
    model: str
    sim_config: RealtimeSimConfig
    session_config: dict[str, Any]
    items: list[dict[str, Any]]


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

    session: ReplySession
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
