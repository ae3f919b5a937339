"""Parse a prompt file: YAML front matter for settings, a Markdown body (a template) for the instructions.

Every problem is reported on its own line with the file and the line it is on, so an operator can fix a
file from the error alone; a file with any problem is never served.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ValidationError

from agent.prompts.schema import PromptMeta

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}$")
_TEMPLATES = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
STANDARD_VARIABLES = ("caller", "called", "now")


class PromptError(ValueError):
    """A prompt file that must not be served, with one line per problem."""


class Prompt(BaseModel):
    name: str
    meta: PromptMeta
    instructions: str
    content_hash: str
    source: str = ""

    def render(self, variables: Mapping[str, str] | None = None, *, now: dt.datetime | None = None) -> Prompt:
        """Fill `{{caller}}`, `{{called}}`, `{{now}}` and outbound-call variables into the instructions."""
        values: dict[str, Any] = {
            "caller": "",
            "called": "",
            "now": (now or dt.datetime.now().astimezone()).strftime("%A %d %B %Y, %H:%M %Z"),
        }
        values |= dict(variables or {})
        try:
            text = _TEMPLATES.from_string(self.instructions).render(values)
        except UndefinedError as exc:
            raise PromptError(f"{self.source}: instructions use an undefined variable: {exc.message}") from None
        update: dict[str, Any] = {"instructions": text.strip()}
        machine = self.meta.answering_machine
        if machine is not None and machine.message:  # the voicemail text takes the same variables
            try:
                message = _TEMPLATES.from_string(machine.message).render(values).strip()
            except (UndefinedError, TemplateSyntaxError) as exc:
                raise PromptError(f"{self.source}: answering_machine.message: {exc.message}") from None
            update["meta"] = self.meta.model_copy(
                update={"answering_machine": machine.model_copy(update={"message": message})}
            )
        return self.model_copy(update=update)


def _line_of(node: yaml.Node | None, path: tuple[int | str, ...]) -> int | None:
    """0-based line (within the front matter) of the YAML node at pydantic's error location, or its parent's."""
    if node is None:
        return None
    line = node.start_mark.line
    for key in path:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = node.value[key]
        if child is None:
            break
        node, line = child, child.start_mark.line
    return line


def _yaml_problem(head: str, exc: yaml.YAMLError, source: str) -> str:
    """One line for a YAML error, on the line the operator has to fix.

    PyYAML reports where parsing finally failed; after a quote that was never closed that is many lines later
    (the quoted value swallowed them). A quoted value spanning lines right before the failure is the likelier
    culprit, so its opening line is reported instead. Lines of the front matter are the file's lines + 1.
    """
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"{source}: invalid YAML front matter: {problem}"
    opened: yaml.Token | None = None
    try:
        for token in yaml.scan(head):
            if token.start_mark.index >= mark.index:
                break
            if opened is not None and token.start_mark.line > opened.end_mark.line:
                opened = None  # the quoted value ended and the file went on normally: not the culprit
            if isinstance(token, yaml.ScalarToken) and token.style in ('"', "'"):
                opened = token if token.end_mark.line > token.start_mark.line else None
            elif not isinstance(token, yaml.ScalarToken | yaml.ValueToken | yaml.KeyToken):
                opened = None
    except yaml.YAMLError:
        pass
    if opened is not None and opened.start_mark.line < mark.line:
        quote = opened.style  # type: ignore[attr-defined]
        return (
            f"{source}:{opened.start_mark.line + 1}: invalid YAML front matter: a {quote}-quoted value opened here "
            f"runs on to line {opened.end_mark.line + 1} (is its closing {quote} missing?); then: {problem}"
        )
    return f"{source}:{mark.line + 1}: invalid YAML front matter: {problem}"


def parse_prompt(name: str, text: str, source: str = "<prompt>") -> Prompt:
    # The front matter starts right after the opening "---", so its line N is the file's line N + 1.
    front: dict[str, Any] = {}
    body, body_line, front_node = text, 1, None
    if text.startswith("---"):
        head, sep, rest = text[3:].partition("\n---")
        if not sep:
            raise PromptError(f"{source}:1: front matter opened with --- but never closed")
        try:
            front_node = yaml.compose(head)
            loaded = yaml.safe_load(head) or {}
        except yaml.YAMLError as exc:
            raise PromptError(_yaml_problem(head, exc, source)) from None
        if not isinstance(loaded, dict):
            raise PromptError(f"{source}:1: front matter must be a mapping of settings")
        front, body = loaded, rest.partition("\n")[2]
        body_line = head.count("\n") + 3
    problems: list[str] = []
    meta = PromptMeta()
    try:
        meta = PromptMeta.model_validate(front)
    except ValidationError as exc:
        for err in exc.errors():
            at = _line_of(front_node, tuple(err["loc"]))
            problems.append(
                f"{source}:{at + 1 if at is not None else 1}: {'.'.join(map(str, err['loc']))}: {err['msg']}"
            )
    instructions = body.strip()
    if not instructions:
        problems.append(f"{source}:{body_line}: the instructions (Markdown body) are empty")
    else:
        try:
            _TEMPLATES.parse(instructions)
        except TemplateSyntaxError as exc:
            problems.append(f"{source}:{body_line + (exc.lineno or 1) - 1}: template error: {exc.message}")
    if problems:
        raise PromptError("\n".join(problems))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Prompt(name=name, meta=meta, instructions=instructions, content_hash=digest, source=source)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise PromptError(f"invalid prompt name {name!r}: use letters, digits, - and _")
    return name


def load_prompt(directory: Path, name: str) -> Prompt:
    path = directory / f"{check_name(name)}.md"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PromptError(f"{path}: cannot read prompt file ({exc.strerror})") from None
    return parse_prompt(name, text, str(path))
