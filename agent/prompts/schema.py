"""The front matter of a prompt file: everything an operator can tune per prompt, validated strictly.

Unknown keys are refused, so a typo is an error when the file is checked rather than a setting that silently
does nothing on a live call.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

Voice = Literal["alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"]
AudioFormat = Literal["audio/x-mulaw;rate=8000", "audio/x-l16;rate=8000", "audio/x-l16;rate=16000"]
BUILTIN_TOOLS = frozenset({"end_call", "transfer_call"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TurnDetection(_Strict):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float = Field(default=0.5, ge=0, le=1)
    prefix_padding_ms: int = Field(default=300, ge=0, le=5000)
    silence_duration_ms: int = Field(default=500, ge=0, le=10000)
    interrupt_response: bool = True
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"


class Interruptions(_Strict):
    """How the `adaptive` interruption policy hears this prompt's callers (AGENT_INTERRUPTIONS picks the policy).

    `backchannels` and `stop_words` replace the built-in list of a language (keys are language codes: `en`, `hi`…);
    the lists of `languages` apply, by default the prompt's `language` plus English."""

    languages: list[str] | None = Field(default=None, description="default: the prompt's language and en")
    backchannels: dict[str, list[str]] = Field(
        default_factory=dict, description='per language, murmurs that never interrupt: {"hi": ["haan", "achha"]}'
    )
    stop_words: dict[str, list[str]] = Field(
        default_factory=dict, description='per language, words that always interrupt: {"hi": ["ruko", "nahi"]}'
    )


class HttpTool(_Strict):
    """A tool the model may call that the agent runs as an HTTP request to the operator's service."""

    name: str = Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_-]{0,63}$")
    description: str = Field(min_length=1)
    url: HttpUrl
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    filler: str | None = Field(
        default="One moment please, let me check that.",
        description="spoken while a slow tool runs, so the caller never hears dead air",
    )
    filler_after_s: float = Field(default=1.0, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, value: str) -> str:
        if value in BUILTIN_TOOLS:
            raise ValueError(f"{value} is built in; choose another name")
        return value

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise ValueError('must be a JSON schema with "type": "object"')
        return value


class IdlePolicy(_Strict):
    """What happens when the caller says nothing: a reminder, then a polite hang-up.

    On by default, so a line left open (a pocket dial, a caller who walked away) does not burn model time
    until the duration cap; `null` turns either step off for a prompt that needs long silences."""

    reminder_after_s: float | None = Field(default=10.0, gt=0)
    reminder: str = "Are you still there?"
    hangup_after_s: float | None = Field(default=30.0, gt=0)
    goodbye: str = "I have not heard from you, so I will end the call now. Goodbye!"


class ScriptedAnswer(_Strict):
    """One keyword-matched answer of the offline engine's scripted dialogue."""

    keywords: list[str] = Field(min_length=1)
    reply: str = Field(min_length=1)
    tool: Literal["end_call", "transfer_call"] | None = None


class OfflineDialogue(_Strict):
    """How the embedded offline engine plays this prompt; ignored when a real model answers.

    The engine greets with `greeting`, answers the first entry whose keywords occur in what it recognised,
    and otherwise echoes it with `fallback` (`{heard}` is replaced by the recognised text).
    """

    answers: list[ScriptedAnswer] = Field(default_factory=list)
    fallback: str = "I heard: {heard}. How else can I help?"
    not_understood: str = "Sorry, I did not catch that. Could you say it again?"


class Experiment(_Strict):
    """Route a share of this prompt's calls to a candidate prompt, to compare the two on live calls.

    Which calls go to the candidate is decided from the call id (a hash), so a retried webhook or another
    replica puts the same call in the same arm; the call is tagged `experiment=<name>`, `arm=control|candidate`.
    """

    candidate: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}$", description="another prompt file's name")
    share: float = Field(gt=0, lt=1, description="fraction of calls that get the candidate, e.g. 0.2")
    name: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="the experiment's tag; default PROMPT-vs-CANDIDATE"
    )


class PromptMeta(_Strict):
    description: str = ""
    model: str | None = Field(default=None, description="Realtime model; unset uses OPENAI_REALTIME_MODEL")
    voice: Voice = "marin"
    language: str | None = "en"
    speed: float = Field(default=1.0, ge=0.25, le=1.5)
    greeting: str | None = None
    transcription_model: str = "gpt-4o-mini-transcribe"
    noise_reduction: Literal["near_field", "far_field"] | None = "near_field"
    turn_detection: TurnDetection = Field(default_factory=TurnDetection)
    interruptions: Interruptions = Field(default_factory=Interruptions)
    max_output_tokens: int | Literal["inf"] = "inf"
    tools: list[HttpTool] = Field(default_factory=list)
    transfer_number: str | None = Field(default=None, pattern=r"^\+?[0-9]{3,16}$")
    max_call_duration_s: float | None = Field(
        default=1800.0, gt=0, description="a spoken wrap-up, then goodbye; null for no limit (not recommended)"
    )
    wrap_up: str = "We are almost out of time for this call. Let me wrap up."
    idle: IdlePolicy = Field(default_factory=IdlePolicy)
    audio_format: AudioFormat | None = Field(default=None, description="unset uses AGENT_STREAM_CONTENT_TYPE")
    offline: OfflineDialogue = Field(default_factory=OfflineDialogue)
    experiment: Experiment | None = None

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, value: list[HttpTool]) -> list[HttpTool]:
        names = [t.name for t in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate tool names: {', '.join(duplicates)}")
        return value
