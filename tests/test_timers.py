"""The idle watcher while bot audio waits unscheduled (held on a hunch, or no socket while Vobiz reconnects)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any, cast

from agent.audio.formats import MediaFormat
from agent.calls.timers import watch_idle
from agent.carrier.playout import Playout
from agent.prompts.schema import IdlePolicy


class CountingPlayout(Playout):
    questions = 0

    def is_audible(self, now: float | None = None) -> bool:
        self.questions += 1
        return super().is_audible(now)


async def discard(text: str) -> None:
    return None


async def test_the_idle_watcher_polls_instead_of_spinning_while_audio_is_held() -> None:
    playout = CountingPlayout(discard, "stream-1", MediaFormat("audio/x-mulaw", 8000))
    playout.enqueue("item_a", b"\x11" * 8 * 1000)
    await playout.step()
    playout.hold()  # audible (audio kept), yet nothing scheduled: the carrier has already run dry
    assert playout.is_audible() and playout.idle_at() <= time.monotonic()
    playout.questions = 0
    call = SimpleNamespace(
        prompt=SimpleNamespace(meta=SimpleNamespace(idle=IdlePolicy(reminder_after_s=5, hangup_after_s=10))),
        activity=asyncio.Event(),
        caller_speaking=False,
        responding=lambda: False,
        playout=playout,
    )
    task = asyncio.create_task(watch_idle(cast(Any, call)))
    await asyncio.sleep(0.3)  # the span under test: a spinning watcher asks thousands of times in it
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert 3 <= playout.questions <= 10  # every 50 ms
