"""One `response.create` at a time, each with a future that resolves when its response is done.

The Realtime API refuses a second response while one is active (a VAD turn, the greeting, a tool's
follow-up). Requests wait here instead, go out in order once the model is free, and are retried when the
server refused them because another response slipped in first.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class _Request:
    event_id: str
    response: dict[str, Any] | None
    done: asyncio.Future[str | None]


class ResponseQueue:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._waiting: deque[_Request] = deque()
        self._in_flight: _Request | None = None
        self._by_response: dict[str, _Request] = {}
        self._seq = 0
        self.active_id: str | None = None
        self.active = False

    @property
    def busy(self) -> bool:
        return self.active or self._in_flight is not None

    async def request(self, response: dict[str, Any] | None = None) -> asyncio.Future[str | None]:
        """Ask for a response; the future gives its id when done (None if it never happened)."""
        self._seq += 1
        request = _Request(f"create_{self._seq}", response, asyncio.get_running_loop().create_future())
        self._waiting.append(request)
        await self._next()
        return request.done

    async def _next(self) -> None:
        if self.busy or not self._waiting:
            return
        request = self._in_flight = self._waiting.popleft()
        event: dict[str, Any] = {"type": "response.create", "event_id": request.event_id}
        if request.response:
            event["response"] = request.response
        await self._send(event)

    def created(self, response_id: str) -> None:
        """`response.created`: ours if one is in flight (the API does not echo event ids here), else VAD's."""
        self.active, self.active_id = True, response_id
        if self._in_flight is not None:
            self._by_response[response_id] = self._in_flight
            self._in_flight = None

    async def finished(self, response_id: str) -> None:
        """`response.done`: resolve its request and send the next one."""
        if self.active_id == response_id:
            self.active, self.active_id = False, None
        request = self._by_response.pop(response_id, None)
        if request is not None and not request.done.done():
            request.done.set_result(response_id)
        await self._next()

    async def refused(self, event_id: str | None, code: str) -> bool:
        """An `error` for one of our creates; True when it was ours (and has been handled)."""
        request = self._in_flight
        if request is None or event_id != request.event_id:
            return False
        self._in_flight = None
        if code == "conversation_already_has_active_response":
            self._waiting.appendleft(request)  # retried when the other response is done
            self.active = True
        elif not request.done.done():
            request.done.set_result(None)
            await self._next()
        return True

    def reset(self) -> bool:
        """A new model session: nothing is active there. Returns whether a response was under way."""
        was_busy = self.busy
        for request in [*self._by_response.values(), *([self._in_flight] if self._in_flight else [])]:
            if not request.done.done():
                request.done.set_result(None)
        self._by_response.clear()
        self._in_flight = None
        self.active, self.active_id = False, None
        return was_busy

    async def resume(self) -> None:
        """Send what was waiting, on the new session."""
        await self._next()
