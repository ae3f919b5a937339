"""The idle watcher while bot audio waits unscheduled (held on a hunch, or no socket while Vobiz reconnects)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any, cast

import agent.calls.call  # noqa: F401 - watch_idle imports it lazily: a cold import would eat the span
from agent.calls.timers import watch_idle
from agent.prompts.schema import IdlePolicy


class HeldPlayout:
    """Audio queued but nothing scheduled: audible, yet due to run dry in the past."""

    def __init__(self) -> None:
        self.questions = 0

    def is_audible(self, now: float | None = None) -> bool:
        self.questions += 1
        return True

    def idle_at(self) -> float:
        return time.monotonic() - 1.0


async def test_the_idle_watcher_polls_instead_of_spinning_while_audio_is_held() -> None:
    playout = HeldPlayout()
    call = SimpleNamespace(
        prompt=SimpleNamespace(meta=SimpleNamespace(idle=IdlePolicy(reminder_after_s=5, hangup_after_s=10))),
        activity=asyncio.Event(),
        caller_speaking=False,
        responses=SimpleNamespace(busy=False),
        playout=playout,
    )
    task = asyncio.create_task(watch_idle(cast(Any, call)))
    await asyncio.sleep(0.3)  # the span under test: a spinning watcher asks thousands of times in it
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert 3 <= playout.questions <= 10  # every 50 ms
