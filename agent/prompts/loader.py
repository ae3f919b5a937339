"""Load a prompt file: YAML front matter for settings, a Markdown body for the model's instructions.

Front matter is validated with pydantic and unknown keys are refused, so a typo is an error at load time
rather than a silently ignored setting on a live call.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Voice = Literal["alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"]


class TurnDetection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float = Field(default=0.5, ge=0, le=1)
    prefix_padding_ms: int = Field(default=300, ge=0)
    silence_duration_ms: int = Field(default=500, ge=0)
    interrupt_response: bool = True
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"


class ModelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    speed: float = Field(default=1.0, ge=0.25, le=1.5)
    transcription_model: str = "gpt-4o-mini-transcribe"
    language: str | None = "en"
    noise_reduction: Literal["near_field", "far_field"] | None = "near_field"
    turn_detection: TurnDetection = Field(default_factory=TurnDetection)
    max_output_tokens: int | Literal["inf"] = "inf"


class ScriptedAnswer(BaseModel):
    """One keyword-matched answer of the offline engine's scripted dialogue."""

    model_config = ConfigDict(extra="forbid")
    keywords: list[str] = Field(min_length=1)
    reply: str = Field(min_length=1)
    tool: Literal["end_call", "transfer_call"] | None = None


class OfflineDialogue(BaseModel):
    """How the embedded offline engine plays this prompt; ignored when a real model answers.

    The engine greets with `greeting`, answers the first entry whose keywords occur in what it recognised,
    and otherwise echoes it with `fallback` (`{heard}` is replaced by the recognised text).
    """

    model_config = ConfigDict(extra="forbid")
    answers: list[ScriptedAnswer] = Field(default_factory=list)
    fallback: str = "I heard: {heard}. How else can I help?"
    not_understood: str = "Sorry, I did not catch that. Could you say it again?"


class PromptMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voice: Voice = "marin"
    greeting: str | None = None
    transfer_number: str | None = None
    model: ModelSettings = Field(default_factory=ModelSettings)
    offline: OfflineDialogue = Field(default_factory=OfflineDialogue)


class Prompt(BaseModel):
    name: str
    meta: PromptMeta
    instructions: str
    content_hash: str


class PromptError(ValueError):
    """A prompt file that must not be served, with one line per problem."""


def parse_prompt(name: str, text: str, source: str = "<prompt>") -> Prompt:
    front: dict[str, object] = {}
    body = text
    if text.startswith("---"):
        head, sep, rest = text[3:].partition("\n---")
        if not sep:
            raise PromptError(f"{source}: front matter opened with --- but never closed")
        try:
            loaded = yaml.safe_load(head) or {}
        except yaml.YAMLError as exc:
            raise PromptError(f"{source}: invalid YAML front matter: {exc}") from None
        if not isinstance(loaded, dict):
            raise PromptError(f"{source}: front matter must be a mapping")
        front, body = loaded, rest.partition("\n")[2]
    try:
        meta = PromptMeta.model_validate(front)
    except ValidationError as exc:
        lines = [f"{source}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise PromptError("\n".join(lines)) from None
    instructions = body.strip()
    if not instructions:
        raise PromptError(f"{source}: the instructions (Markdown body) are empty")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Prompt(name=name, meta=meta, instructions=instructions, content_hash=digest)


def load_prompt(directory: Path, name: str) -> Prompt:
    if not name.replace("-", "").replace("_", "").isalnum():
        raise PromptError(f"invalid prompt name {name!r}")
    path = directory / f"{name}.md"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PromptError(f"{path}: cannot read prompt file ({exc.strerror})") from None
    return parse_prompt(name, text, str(path))
