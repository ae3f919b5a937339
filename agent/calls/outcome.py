"""How a call ends: what Vobiz does after the stream, why, and the one-way switch into the ending."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EndAction(enum.Enum):
    """What Vobiz should do once the stream ends: the after-stream route turns this into XML."""

    HANGUP = "hangup"
    APOLOGY = "apology"
    TRANSFER = "transfer"


@dataclass
class Outcome:
    action: EndAction
    reason: str
    transfer_number: str | None = None


class CallOver(Exception):
    """Raised inside the call's task group to end the call; carries no error."""


class Ending:
    """Whether the call is on its way out, and why. Closing only ever goes one way: once a goodbye, a transfer or
    a hang-up has begun, nothing may start a barge-in, a reconnect or a second goodbye."""

    def __init__(self) -> None:
        self._closing = False
        self.reason = "unknown"

    @property
    def closing(self) -> bool:
        return self._closing

    def begin(self, reason: str | None = None) -> None:
        """The call is ending (a goodbye may still be playing); `reason` is recorded when given."""
        self._closing = True
        if reason is not None:
            self.reason = reason

    def unless_closing(self, reason: str) -> None:
        """The far side ended the call: its reason counts only if we were not already ending it ourselves."""
        if not self._closing:
            self.reason = reason


async def raise_over() -> None:
    """A task that ends its call's task group: the way to hang up from outside the group."""
    raise CallOver
