"""Deadlines that never lose a cancellation: the race that left calls running forever on Python 3.11.

A call ends by its task group cancelling every task once. When a watcher's awaited event fired in the same loop
pass as that cancellation, Python 3.11's `asyncio.wait_for` returned normally and the watcher looped on.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from agent.waiting import cancel_and_wait, wait_event, within


async def _started(task: asyncio.Task[object]) -> None:
    """Let a new task run up to its first suspension (one loop pass), and check it is suspended there."""
    await asyncio.sleep(0)
    assert not task.done()


async def test_cancel_in_the_same_pass_as_the_event_fires_is_not_lost() -> None:
    event = asyncio.Event()
    rounds = 0

    async def watcher() -> None:  # the shape of the call's idle and rollover watchers
        nonlocal rounds
        while True:
            rounds += 1
            event.clear()
            await wait_event(event, 30.0)

    task = asyncio.create_task(watcher())
    await _started(task)
    event.set()  # wakes the wait in the next pass...
    task.cancel()  # ...the same pass the cancellation is delivered in
    with pytest.raises(asyncio.CancelledError):
        await within(2.0, task)
    assert rounds == 1


async def test_wait_event_reports_set_and_timeout() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    assert await wait_event(event, -1.0) is False  # a deadline already past still answers
    event.set()
    assert await wait_event(event, 0.0) is True


async def test_within_returns_the_result_or_times_out_and_cancels() -> None:
    assert await within(1.0, asyncio.sleep(0, result="done")) == "done"
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await within(0.01, never)
    assert never.cancelled()


async def test_cancel_and_wait_keeps_our_own_cancellation() -> None:
    release = asyncio.Event()

    async def child() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()  # finishes only when released: its cancellation takes a while

    async def parent(task: asyncio.Task[None]) -> str:
        await cancel_and_wait(task)
        return "carried on"

    kid = asyncio.create_task(child())
    await _started(kid)
    boss = asyncio.create_task(parent(kid))
    await _started(boss)
    release.set()  # the child ends in the next pass...
    boss.cancel()  # ...and so does the parent's own cancellation arrive
    with pytest.raises(asyncio.CancelledError):
        await within(2.0, boss)
    assert kid.cancelled()


async def test_cancel_and_wait_retrieves_a_failure() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await cancel_and_wait(task)  # already failing before the cancel arrives: no "never retrieved" warning
    assert task.done()


async def test_a_deadline_is_a_timeout_even_after_an_earlier_cancellation_was_handled() -> None:
    """A call's clean-up runs in a task its task group already cancelled once (and did not uncancel)."""

    async def clean_up() -> tuple[bool, str]:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # handled, as a task group's parent does: count stays 1
            await asyncio.sleep(1)
        assert task.cancelling() == 1
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            await within(0.01, never)
        except TimeoutError:
            outcome = "timed out"
        return await wait_event(asyncio.Event(), 0.01), outcome

    assert await within(2.0, asyncio.create_task(clean_up())) == (False, "timed out")
