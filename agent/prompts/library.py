"""The prompt library: prompt files in a folder, chosen per call, reloaded when they change.

Each lookup checks the file's modification time, so an edit applies to the next call without a restart,
while a call in progress keeps the parsed version it started with.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from agent.prompts.loader import Prompt, PromptError, check_name, parse_prompt
from agent.prompts.schema import Experiment

NUMBERS_FILE = "numbers.yaml"
log = logging.getLogger("agent.prompts")


@dataclass(frozen=True)
class _Cached:
    stamp: tuple[int, int]
    prompt: Prompt | None
    error: PromptError | None


class PromptLibrary:
    def __init__(self, directory: Path, default: str = "default", *, log_errors: bool = True) -> None:
        """`log_errors=False` for callers that report errors themselves (the CLI), so each shows once."""
        self.directory = directory
        self.default = default
        self.log_errors = log_errors
        self._cache: dict[str, _Cached] = {}
        self._numbers: tuple[tuple[int, int], dict[str, str]] | None = None
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.md") if not p.name.startswith((".", "_")))

    def get(self, name: str) -> Prompt:
        """The current version of a prompt; raises PromptError (never serves a broken file)."""
        path = self.directory / f"{check_name(name)}.md"
        try:
            stat = path.stat()
        except OSError:
            raise PromptError(f"{path}: no such prompt file") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._cache.get(name)
        if cached is None or cached.stamp != stamp:
            previous = cached.prompt if cached is not None else None
            try:
                text = path.read_text(encoding="utf-8")
                cached = _Cached(stamp, parse_prompt(name, text, str(path)), None)
            except PromptError as exc:
                cached = _Cached(stamp, previous, exc)
            except OSError as exc:
                cached = _Cached(stamp, previous, PromptError(f"{path}: cannot read prompt file ({exc.strerror})"))
            if cached.error is not None and self.log_errors:
                # A broken edit is never served; calls keep getting the last good version, if there is one.
                log.error(
                    "prompt %s is invalid%s:\n%s",
                    name,
                    ", serving the last good version" if previous else "",
                    cached.error,
                )
            with self._lock:
                self._cache[name] = cached
        if cached.prompt is None:
            assert cached.error is not None
            raise cached.error
        return cached.prompt

    def problem(self, name: str) -> PromptError | None:
        """The current file's error, even while an older good version is being served."""
        try:
            self.get(name)
        except PromptError as exc:
            return exc
        cached = self._cache.get(name)
        return cached.error if cached is not None else None

    def check_all(self) -> dict[str, Prompt | PromptError]:
        results: dict[str, Prompt | PromptError] = {}
        for name in self.names():
            try:
                results[name] = self.get(name)
            except PromptError as exc:
                results[name] = exc
        return results

    def numbers(self) -> dict[str, str]:
        """`numbers.yaml` maps called numbers to prompt names (`"+918000000002": sales`)."""
        path = self.directory / NUMBERS_FILE
        try:
            stat = path.stat()
        except OSError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._numbers is None or self._numbers[0] != stamp:
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise PromptError(f"{path}: cannot read the number mapping: {exc}") from None
            if not isinstance(loaded, dict):
                raise PromptError(f"{path}: must map numbers to prompt names")
            self._numbers = (stamp, {_digits(str(k)): str(v) for k, v in loaded.items()})
        return self._numbers[1]

    def select(self, called: str = "", requested: str | None = None, call_id: str | None = None) -> Prompt:
        """Per call: an explicit `prompt` parameter, else the called number's mapping, else the default; with a
        call id, the prompt's experiment (if any) may send the call to its candidate instead."""
        if call_id is not None:
            return self.select_for_call(called, requested, call_id)[0]
        if requested:
            return self.get(requested)
        mapped = self.numbers().get(_digits(called)) if called else None
        return self.get(mapped or self.default)

    def select_for_call(
        self, called: str = "", requested: str | None = None, call_id: str = ""
    ) -> tuple[Prompt, dict[str, str]]:
        """The prompt for this call and the tags to store on it (`experiment`, `arm`; none outside experiments).

        Deterministic by call id, so webhook retries and other replicas choose the same arm. A candidate that
        cannot be served (missing or invalid file) sends the call to the control prompt, untagged, so a broken
        candidate never reaches callers nor skews the control arm. The candidate's own experiment is not
        followed. Raises PromptError like `select` when the control prompt cannot be served.
        """
        control = self.select(called, requested)
        experiment = control.meta.experiment
        if experiment is None or not call_id:
            return control, {}
        name = experiment_name(control.name, experiment)
        if arm_of(name, call_id, experiment.share) == "control":
            return control, {"experiment": name, "arm": "control"}
        try:
            candidate = self.get(experiment.candidate)
        except PromptError as exc:
            log.error(
                "experiment %s: candidate %s cannot be served, call %s gets %s: %s",
                name,
                experiment.candidate,
                call_id,
                control.name,
                str(exc).splitlines()[0],
            )
            return control, {}
        return candidate, {"experiment": name, "arm": "candidate"}


def experiment_name(prompt: str, experiment: Experiment) -> str:
    return experiment.name or f"{prompt}-vs-{experiment.candidate}"


def arm_of(experiment: str, call_id: str, share: float) -> str:
    """`candidate` for a `share` of call ids, `control` for the rest: a hash of the experiment and the call id,
    so the choice is the same on every replica and retry, and independent between experiments."""
    digest = hashlib.sha256(f"{experiment}\x00{call_id}".encode()).digest()
    return "candidate" if int.from_bytes(digest[:8], "big") / 2**64 < share else "control"


def _digits(number: str) -> str:
    """Numbers arrive with or without '+' and spaces; compare digits only."""
    return "".join(ch for ch in number if ch.isdigit())
