"""Waiting with a deadline, safe on Python 3.11.

Python 3.11's `asyncio.wait_for` returns normally when the task is cancelled in the same loop pass as the awaited
thing completes (fixed in 3.12): the cancellation is lost. A call's task group cancels each task once, so a watcher
looping on `wait_for(event.wait(), …)` kept running and the call never ended (seen about once per 180 calls under
load). Everything here is built on `asyncio.timeout`, which counts cancellations; `asyncio.wait_for` is banned by
the linter (pyproject: TID251).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """True when the event is set within `seconds`; a cancellation of the caller always propagates."""
    try:
        async with _Deadline(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """Await with a deadline (TimeoutError after `seconds`, the awaited thing cancelled), like `wait_for`."""
    async with _Deadline(seconds):
        return await awaitable


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel a task and let it finish; unlike suppressing its CancelledError, ours is never swallowed."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: its failure was already handled or does not matter once cancelled


class _Deadline:
    """`asyncio.timeout`, also right on Python 3.11.0-3.11.2, which counted cancellations from zero instead of
    from entry: inside a task that had already handled a cancellation (a call's task group cleaning up), a
    deadline met surfaced there as CancelledError and skipped the rest of the clean-up."""

    def __init__(self, seconds: float) -> None:
        self._timeout = asyncio.timeout(max(seconds, 0.0))
        self._task: asyncio.Task[Any] | None = None
        self._before = 0

    async def __aenter__(self) -> None:
        self._task = asyncio.current_task()
        self._before = self._task.cancelling() if self._task is not None else 0
        await self._timeout.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._timeout.__aexit__(exc_type, exc, tb)  # raises TimeoutError itself when it can tell
        task = self._task
        ours = self._timeout.expired() and task is not None and task.cancelling() <= self._before
        if exc_type is asyncio.CancelledError and ours:
            raise TimeoutError from exc
