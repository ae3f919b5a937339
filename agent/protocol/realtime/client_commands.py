"""Every client event the agent sends to a Realtime session, built in one place (GA shapes, no I/O).

The call, the registry's pre-warm, the timers, the tools and the session handover all speak to the model; when
the protocol changes, this is the one file that changes with it. The test fakes validate every event these
functions build against the SDK's own client-event types.
"""

from __future__ import annotations

import base64
from typing import Any

Command = dict[str, Any]


def session_update(session: dict[str, Any]) -> Command:
    return {"type": "session.update", "session": session}


def response_create(response: dict[str, Any], event_id: str | None = None) -> Command:
    command: Command = {"type": "response.create"}
    if event_id is not None:
        command["event_id"] = event_id
    command["response"] = response
    return command


def response_cancel(response_id: str) -> Command:
    return {"type": "response.cancel", "response_id": response_id}


def truncate(item_id: str, audio_end_ms: int) -> Command:
    """Forget an assistant item's audio (and words) past what the caller heard."""
    return {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": audio_end_ms}


def delete_item(item_id: str) -> Command:
    return {"type": "conversation.item.delete", "item_id": item_id}


def create_item(item: dict[str, Any]) -> Command:
    return {"type": "conversation.item.create", "item": item}


def message(role: str, text: str) -> Command:
    """A text message in the conversation; assistant words are `output_text`, anyone else's `input_text`."""
    kind = "output_text" if role == "assistant" else "input_text"
    return create_item({"type": "message", "role": role, "content": [{"type": kind, "text": text}]})


def user_audio(audio: bytes) -> Command:
    """The caller's turn as a user message carrying its audio (GA `input_audio` content, the session's format)."""
    content = [{"type": "input_audio", "audio": base64.b64encode(audio).decode()}]
    return create_item({"type": "message", "role": "user", "content": content})


def function_output(call_id: str, output: str) -> Command:
    return create_item({"type": "function_call_output", "call_id": call_id, "output": output})


def append_audio(audio: bytes) -> Command:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()}


def append_audio_json(audio: bytes) -> str:
    """`append_audio`, serialised by hand: the hot path (50 a second per call) skips `json.dumps`."""
    return append_audio_b64_json(base64.b64encode(audio).decode())


def append_audio_b64_json(audio_b64: str) -> str:
    """`append_audio` for audio already in base64 (the carrier's μ-law payload, validated): nothing to encode."""
    return '{"type":"input_audio_buffer.append","audio":"' + audio_b64 + '"}'
