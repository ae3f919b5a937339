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


class PromptMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voice: Voice = "marin"
    greeting: str | None = None
    transfer_number: str | None = None
    model: ModelSettings = Field(default_factory=ModelSettings)


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
