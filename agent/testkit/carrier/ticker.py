"""One timer for every simulated call's 20 ms work, instead of a sleeping task per call per loop.

A hundred calls each send a caller frame and play a bot frame every 20 ms: as tasks sleeping on their own timers
that was 10,000 wake-ups a second, each a future, a timer and a task step. Here every call schedules plain
callbacks on a shared heap; the event loop holds one timer, for the earliest of them, and each wake-up runs every
callback that is due. Due times are rounded up to the millisecond (the event loop's timers have that
resolution anyway), so calls whose ticks fall in the same millisecond share a wake-up and no callback ever runs
before its time. The heap holds each such millisecond once, with a list of its callbacks in the order they were
scheduled: a hundred calls put a dozen callbacks in each millisecond, and a heap push and pop per callback showed
up in profiles.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import weakref
from collections.abc import Callable


class TickHandle:
    """A scheduled callback; :meth:`cancel` before it runs and it never will."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = None


class Ticker:
    """Callbacks on the loop's clock (``loop.time()``, i.e. ``time.monotonic()`` for asyncio and uvloop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[float, list[TickHandle]] = {}  # due millisecond -> its callbacks, in scheduling order
        self._heap: list[float] = []  # the keys of _slots
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def call_at(self, when: float, callback: Callable[[], None]) -> TickHandle:
        """Run ``callback`` at ``when`` or at most a millisecond after (never before); exceptions it raises are
        the loop's to report, so callers catch their own."""
        slot = math.ceil(when * 1000) / 1000
        handle = TickHandle(slot, callback)
        bucket = self._slots.get(slot)
        if bucket is not None:
            bucket.append(handle)
            return handle
        self._slots[slot] = [handle]
        heapq.heappush(self._heap, slot)
        if slot < self._timer_at:
            self._arm(slot)
        return handle

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._run)

    def _run(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self._loop.time()
        heap, slots = self._heap, self._slots
        while heap and heap[0] <= now:
            # Taken out before it runs: a callback that schedules into this millisecond starts a new list, which
            # runs after this one (in this same wake-up, as it is due).
            for handle in slots.pop(heapq.heappop(heap)):
                callback = handle.callback
                if callback is None:
                    continue
                handle.callback = None
                try:
                    callback()
                except Exception as exc:  # one call's bug must not stop every other call's clock
                    self._loop.call_exception_handler(
                        {"message": "simulated-call tick failed", "exception": exc, "handle": handle}
                    )
        if heap:
            self._arm(heap[0])


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Ticker] = weakref.WeakKeyDictionary()


_last: tuple[weakref.ref[asyncio.AbstractEventLoop], Ticker] | None = None


def ticker() -> Ticker:
    """The running loop's ticker (one per loop: tests run many loops in one process)."""
    global _last
    loop = asyncio.get_running_loop()
    if _last is not None and _last[0]() is loop:
        return _last[1]  # the common case, without the weak dictionary's lookup
    found = _tickers.get(loop)
    if found is None:
        found = _tickers[loop] = Ticker(loop)
    _last = (weakref.ref(loop), found)
    return found


async def sleep(delay: float) -> None:
    """``asyncio.sleep`` on the shared ticker: for per-call loops that wake many times a second."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    handle = ticker().call_at(loop.time() + delay, wake)
    try:
        await future
    finally:
        handle.cancel()
