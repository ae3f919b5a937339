"""The states of the phone line and of each bot item (see `machine`)."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Coroutine
from typing import Any

# Start a task in the call's task group; None (the coroutine closed) when the call is already ending.
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None] | None"]


class Line(enum.Enum):
    PLAYING = "playing"
    HELD = "held"
    LOST = "lost"


class Fate(enum.Enum):
    PLAYING = "playing"
    DROPPED = "dropped"
    TRUNCATED = "truncated"
    RETRIED = "retried"
    DELETED = "deleted"

    @property
    def told(self) -> bool:
        """The model already knows how much of this item was heard: it is never cut again."""
        return self in (Fate.TRUNCATED, Fate.RETRIED, Fate.DELETED)


class Audio(enum.Enum):
    """What to do with an audio delta."""

    DROP = "drop"  # an interrupted item or response: the caller must never hear it
    FIRST = "first"  # the item's first audio
    MORE = "more"
