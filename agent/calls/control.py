"""What the timers and the tools may do with a call: read a few facts, speak, and end it. Nothing here is a
writable flag, so the rules about when a call is closing or why it ended stay with the call."""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn, Protocol

from agent.calls.context import CallDeps, Log
from agent.calls.outcome import EndAction, Outcome
from agent.carrier.playout import Playout
from agent.config import Settings
from agent.prompts.loader import Prompt
from agent.records.record import CallRecord


class CallControl(Protocol):
    @property
    def call_id(self) -> str: ...

    @property
    def prompt(self) -> Prompt: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def deps(self) -> CallDeps: ...

    @property
    def record(self) -> CallRecord: ...

    @property
    def log(self) -> Log: ...

    @property
    def playout(self) -> Playout: ...

    @property
    def activity(self) -> asyncio.Event:
        """Set whenever who is talking, or what is being said, may have changed."""
        ...

    @property
    def started_monotonic(self) -> float: ...

    @property
    def transfer_number(self) -> str | None: ...

    @property
    def caller_speaking(self) -> bool: ...

    @property
    def caller_activity(self) -> float:
        """When the caller last made a sound (monotonic)."""
        ...

    def responding(self) -> bool:
        """A response is being generated, or one we asked for is on its way."""
        ...

    def session_knows(self, call_id: str) -> bool:
        """Whether the current model session asked for this function call (a replaced one's it never saw)."""
        ...

    def response_items(self, response_id: str | None) -> list[str]: ...

    def begin_closing(self, reason: str | None = None) -> None:
        """From here on the call only ends: no barge-in, no reconnect, no second goodbye."""
        ...

    async def send_model(self, command: dict[str, Any]) -> None: ...

    async def request_response(self, response: dict[str, Any] | None = None) -> asyncio.Future[str | None]: ...

    async def ask(self, guidance: str, **response: Any) -> asyncio.Future[str | None]: ...

    async def say(self, guidance: str) -> bool: ...

    async def wait_heard(self, items: list[str]) -> bool: ...

    async def set_outcome(self, outcome: Outcome) -> None: ...

    async def finish(self, action: EndAction, reason: str) -> NoReturn: ...
