"""The HTTP server that drains: on SIGTERM it stops taking calls and lets the ones in progress finish."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn

from agent.heap import freeze_startup_heap
from agent.web.state import AppState


class DrainingServer(uvicorn.Server):
    """SIGTERM drains instead of cutting calls: readiness goes false and new calls are refused at once, calls
    in progress get AGENT_DRAIN_TIMEOUT_S to finish, the rest are wrapped up politely, then the server exits.
    A second signal exits immediately."""

    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self.state = state
        self._drain: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        freeze_startup_heap()  # after the app's own start-up: the embedded engine and prompts are loaded

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.state.draining or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self.state.draining = True
        logging.getLogger("agent.drain").warning("signal %s: draining before shutdown", sig)
        # Signal handlers run between bytecodes; hand the work to the loop the thread-safe way.
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._start_drain, loop)

    def _start_drain(self, loop: asyncio.AbstractEventLoop) -> None:
        self._drain = loop.create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self.state.registry.drain(self.state.settings.drain_timeout_s)
        finally:
            self.should_exit = True
