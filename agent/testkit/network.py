"""Network impairment between the simulated carrier and the agent: jitter and frame loss, in wire order."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from typing import Any, cast

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from agent.testkit.carrier import SimCall

__all__ = ["impair_network"]


class _ImpairedSocket:
    """Caller->agent side of the stream socket with jitter and frame loss, in wire order like TCP.

    Media frames are delayed by a random 0..jitter ms (never overtaking earlier messages, so late frames
    arrive in bursts) or dropped with probability ``loss``; every other message waits its turn behind them.
    """

    def __init__(self, ws: ClientConnection, jitter_ms: float, loss: float, rng: random.Random) -> None:
        self._ws = ws
        self._jitter_s = jitter_ms / 1000
        self._loss = loss
        self._rng = rng
        self._pending: deque[tuple[float, str | bytes]] = deque()
        self._last_release = 0.0
        self._pump: asyncio.Task[None] | None = None
        self.dropped = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    def __aiter__(self) -> Any:
        return self._ws.__aiter__()

    async def send(self, message: str | bytes) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.0
        if isinstance(message, str) and message.startswith('{"sequenceNumber"') and '"event":"media"' in message:
            if self._rng.random() < self._loss:
                self.dropped += 1
                return
            delay = self._rng.uniform(0, self._jitter_s)
        release = max(self._last_release, loop.time() + delay)
        self._last_release = release
        if not self._pending and release <= loop.time():
            await self._ws.send(message)
            return
        self._pending.append((release, message))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionClosed):
            while self._pending:
                release, message = self._pending[0]
                await asyncio.sleep(max(0.0, release - loop.time()))
                self._pending.popleft()
                await self._ws.send(message)
        self._pending.clear()


def impair_network(call: SimCall, jitter_ms: float, loss: float, rng: random.Random) -> None:
    """Put jitter and loss between the simulated carrier and the agent, from now on (run it before the first
    caller frame: ``place_and_measure(on_connected=...)`` does)."""
    call.wrap_socket(lambda ws: cast(ClientConnection, _ImpairedSocket(ws, jitter_ms, loss, rng)))
