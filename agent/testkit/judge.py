"""Evals that judge, not only replay: per-turn assertions on what the agent said and did, and a model-graded
rubric per conversation.

Assertions are checked against the agent's own record of the call (its transcript of each answer as the
caller heard it, its tool calls, its end reason), so they judge what the console shows. Each caller line's
answer is everything the assistant said, and every tool it called, from the moment that line started until
the next line started (or the call ended): robust to an utterance the model's VAD split in two.

A pattern is a case-insensitive substring, or a regular expression when written between slashes (`/nine|9/`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "RUBRIC_MODEL",
    "LineSpec",
    "RubricVerdict",
    "ToolExpectation",
    "TurnView",
    "grade_rubric",
    "judge_turns",
    "turns_of",
]

RUBRIC_MODEL = "gpt-4o-mini"
_RUBRIC_SYSTEM = (
    "You grade a phone conversation between a caller and a voice assistant against a rubric. "
    'Answer with one JSON object: {"pass": true or false, "reason": "one short sentence"}.'
)


def _check_pattern(value: str) -> str:
    if len(value) >= 2 and value.startswith("/") and value.endswith("/"):
        try:
            re.compile(value[1:-1])
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value}: {exc}") from None
    elif not value:
        raise ValueError("empty pattern")
    return value


def matches(pattern: str, text: str) -> bool:
    """Substring, or `/regex/`; both case-insensitive."""
    if len(pattern) >= 2 and pattern.startswith("/") and pattern.endswith("/"):
        return re.search(pattern[1:-1], text, re.IGNORECASE) is not None
    return pattern.casefold() in text.casefold()


class ToolExpectation(BaseModel):
    """The assistant must call tool `name`; `arguments` must be a subset of the arguments it passed."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class LineSpec(BaseModel):
    """One caller line and what the assistant's answer to it must (not) contain or do."""

    model_config = ConfigDict(extra="forbid")
    say: str = Field(min_length=1)
    must_say: list[str] = Field(default_factory=list)
    must_not_say: list[str] = Field(default_factory=list)
    must_call: list[ToolExpectation] = Field(default_factory=list)
    must_end_call: bool = False

    @field_validator("must_say", "must_not_say", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("must_call", mode="before")
    @classmethod
    def _tools(cls, value: Any) -> Any:
        """`must_call: end_call`, `{name: book, arguments: {...}}`, or a list of either."""
        if isinstance(value, str | dict):
            value = [value]
        return [{"name": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("must_say", "must_not_say")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        return [_check_pattern(v) for v in value]

    @property
    def has_assertions(self) -> bool:
        return bool(self.must_say or self.must_not_say or self.must_call or self.must_end_call)


@dataclass
class TurnView:
    """What the agent recorded in answer to one caller line."""

    said: str = ""
    tools: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def turns_of(record: Mapping[str, Any], line_starts: Sequence[float]) -> list[TurnView]:
    """Split the agent's record (`CallRecord.to_dict()` or the console's JSON) at the epoch times the caller's
    lines started: the assistant's words and tool calls after each start and before the next."""
    views = [TurnView() for _ in line_starts]

    def slot(t: float) -> int | None:
        index = None
        for i, start in enumerate(line_starts):
            if t >= start:
                index = i
        return index

    for turn in record.get("turns") or []:
        if turn.get("speaker") != "assistant" or not str(turn.get("text") or "").strip():
            continue
        i = slot(float(turn.get("started_at") or 0.0))
        if i is not None:
            views[i].said = f"{views[i].said} {turn['text'].strip()}".strip()
    for use in record.get("tools") or []:
        i = slot(float(use.get("started_at") or 0.0))
        if i is not None:
            args = use.get("arguments")
            views[i].tools.append((str(use.get("name")), dict(args) if isinstance(args, Mapping) else {}))
    return views


def _subset(expected: Any, actual: Any) -> bool:
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(k in actual and _subset(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, str) and isinstance(actual, str):
        return expected.casefold() == actual.casefold()
    return bool(expected == actual)


def judge_turns(lines: Sequence[LineSpec], views: Sequence[TurnView], end_reason: str | None) -> list[str]:
    """Every failed assertion, one line each (`line 2: must say "nine": said "…"`); empty when all hold."""
    failures: list[str] = []
    for n, (spec, view) in enumerate(zip(lines, views, strict=True), start=1):
        said = view.said or ""
        quoted = f'"{said[:120]}"' if said else "nothing"
        for pattern in spec.must_say:
            if not matches(pattern, said):
                failures.append(f"line {n}: must say {pattern!r}; said {quoted}")
        for pattern in spec.must_not_say:
            if matches(pattern, said):
                failures.append(f"line {n}: must not say {pattern!r}; said {quoted}")
        for tool in spec.must_call:
            if not any(name == tool.name and _subset(tool.arguments, args) for name, args in view.tools):
                called = ", ".join(f"{name}({json.dumps(args, sort_keys=True)})" for name, args in view.tools) or "none"
                wanted = f"{tool.name}({json.dumps(tool.arguments, sort_keys=True)})"
                failures.append(f"line {n}: must call {wanted}; called {called}")
        if spec.must_end_call and n == len(lines) and end_reason != "agent_end_call":
            failures.append(f"line {n}: must end the call; the call ended: {end_reason or 'unknown'}")
        elif spec.must_end_call and n < len(lines) and not any(name == "end_call" for name, _ in view.tools):
            failures.append(f"line {n}: must end the call; end_call was not called here")
    return failures


@dataclass(frozen=True)
class RubricVerdict:
    passed: bool | None  # None: not graded
    note: str


def transcript_text(record: Mapping[str, Any]) -> str:
    lines = []
    for turn in record.get("turns") or []:
        text = str(turn.get("text") or "").strip()
        if text and turn.get("speaker") in ("caller", "assistant"):
            lines.append(f"{turn['speaker']}: {text}")
    return "\n".join(lines)


async def grade_rubric(
    rubric: str,
    record: Mapping[str, Any],
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    model: str | None = None,
    http: httpx.AsyncClient | None = None,
) -> RubricVerdict:
    """A short chat-completions call that returns a JSON verdict; without OPENAI_API_KEY it is skipped, said
    so, and the conversation is judged by its assertions alone."""
    key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
    if not key:
        return RubricVerdict(None, "set OPENAI_API_KEY to have a model grade it")
    base = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
    body = {
        "model": model or os.environ.get("AGENT_EVAL_MODEL") or RUBRIC_MODEL,
        "response_format": {"type": "json_object"},
        "temperature": 0,
        "messages": [
            {"role": "system", "content": _RUBRIC_SYSTEM},
            {"role": "user", "content": f"Rubric:\n{rubric}\n\nConversation:\n{transcript_text(record)}"},
        ],
    }
    client = http or httpx.AsyncClient(timeout=30.0)
    try:
        response = await client.post(f"{base}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        response.raise_for_status()
        content = response.json()["choices"][0]["message"]["content"]
        verdict = json.loads(content)
        return RubricVerdict(bool(verdict["pass"]), str(verdict.get("reason", ""))[:300])
    except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
        return RubricVerdict(None, f"the grading call failed ({type(exc).__name__})")
    finally:
        if http is None:
            await client.aclose()
