"""The GA `session.update` and tool declarations built from a call's prompt and audio format."""

from __future__ import annotations

from typing import Any

from agent.audio.formats import MediaFormat
from agent.prompts.loader import Prompt
from agent.protocol.realtime import client_commands

END_CALL_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "end_call",
    "description": ("End the phone call. Say a short goodbye first; the line is closed once the caller has heard it."),
    "parameters": {
        "type": "object",
        "properties": {"reason": {"type": "string", "description": "Why the call is ending, for the log."}},
        "required": [],
    },
}

TRANSFER_CALL_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "transfer_call",
    "description": (
        "Transfer the caller to a human colleague. Tell the caller you are connecting them before calling this."
    ),
    "parameters": {
        "type": "object",
        "properties": {"reason": {"type": "string", "description": "What the caller needs, for the colleague."}},
        "required": [],
    },
}


def turn_detection(prompt: Prompt, *, agent_turns: bool = False) -> dict[str, Any]:
    """The prompt's VAD. With `agent_turns` (the adaptive interruption policy) the server only detects and commits
    the caller's turns: the agent decides whether an interruption was real and creates every response itself."""
    td = prompt.meta.turn_detection
    create = not agent_turns
    interrupt = td.interrupt_response and not agent_turns
    if td.type == "semantic_vad":
        return {
            "type": "semantic_vad",
            "eagerness": td.eagerness,
            "create_response": create,
            "interrupt_response": interrupt,
        }
    return {
        "type": "server_vad",
        "threshold": td.threshold,
        "prefix_padding_ms": td.prefix_padding_ms,
        "silence_duration_ms": td.silence_duration_ms,
        "create_response": create,
        "interrupt_response": interrupt,
    }


def session_update(
    prompt: Prompt, fmt: MediaFormat, *, can_transfer: bool, agent_turns: bool = False
) -> dict[str, Any]:
    settings = prompt.meta
    audio_input: dict[str, Any] = {
        "format": fmt.model_format,
        "transcription": {"model": settings.transcription_model}
        | ({"language": settings.language} if settings.language else {}),
        "turn_detection": turn_detection(prompt, agent_turns=agent_turns),
        "noise_reduction": {"type": settings.noise_reduction} if settings.noise_reduction else None,
    }
    tools = [END_CALL_TOOL] + ([TRANSFER_CALL_TOOL] if can_transfer else [])
    tools += [
        {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
        for t in settings.tools
    ]
    return client_commands.session_update(
        {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": prompt.instructions,
            "audio": {
                "input": audio_input,
                "output": {"format": fmt.model_format, "voice": prompt.meta.voice, "speed": settings.speed},
            },
            "tools": tools,
            "tool_choice": "auto",
            "max_output_tokens": settings.max_output_tokens,
        }
    )


GUIDANCE_HEADING = "For your next reply only:"


def guided(prompt: Prompt, guidance: str, **response: Any) -> dict[str, Any]:
    """The `response` of a `response.create` that steers one reply (a greeting, reminder, goodbye, filler).

    Response-level `instructions` REPLACE the session's for that response (GA contract: they "override the
    Session's configuration for this Response only"), so the prompt's own instructions, with its persona,
    language and business context, go first and the one-off guidance follows them. A system item instead would
    stay in the conversation and steer every later reply too.
    """
    return {"instructions": f"{prompt.instructions}\n\n{GUIDANCE_HEADING}\n{guidance}", **response}


def greeting_response(prompt: Prompt) -> dict[str, Any]:
    """Ask for the greeting; a scripted greeting is spoken as written, otherwise the model opens the call."""
    if prompt.meta.greeting:
        guidance = f"Greet the caller by saying exactly this, and nothing else: {prompt.meta.greeting}"
    else:
        guidance = "Greet the caller briefly and ask how you can help."
    return client_commands.response_create(guided(prompt, guidance))


def vad_silence_ms(prompt: Prompt) -> float:
    """How much silence the server VAD waits before `speech_stopped` (its `audio_end_ms` includes it)."""
    td = prompt.meta.turn_detection
    return float(td.silence_duration_ms) if td.type == "server_vad" else 0.0


def turn_detection_update(prompt: Prompt, *, silence_ms: float | None) -> dict[str, Any] | None:
    """A partial `session.update` (only the fields present change) setting the server VAD's silence to
    `silence_ms` (None: back to the prompt's), for the agent-turns session; None when it would change nothing
    (semantic VAD, or the prompt's silence is already that short)."""
    td = prompt.meta.turn_detection
    if td.type != "server_vad" or (silence_ms is not None and silence_ms >= td.silence_duration_ms):
        return None
    detection = turn_detection(prompt, agent_turns=True)
    if silence_ms is not None:
        detection["silence_duration_ms"] = int(silence_ms)
    return client_commands.session_update({"type": "realtime", "audio": {"input": {"turn_detection": detection}}})


def server_cancels_on_barge_in(prompt: Prompt, *, agent_turns: bool = False) -> bool:
    """With `interrupt_response` the server cancels the active response itself; a client cancel would race."""
    return prompt.meta.turn_detection.interrupt_response and not agent_turns


def prefix_padding_ms(prompt: Prompt) -> float:
    """Caller audio the server VAD puts before the speech it detected (`speech_started.audio_start_ms` has it)."""
    td = prompt.meta.turn_detection
    return float(td.prefix_padding_ms) if td.type == "server_vad" else 0.0
