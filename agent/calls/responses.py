"""One `response.create` at a time, each with a future that resolves when its response is done.

The Realtime API refuses a second response while one is active (a VAD turn, the greeting, a tool's
follow-up). Requests wait here instead, go out in order once the model is free, and are retried when the
server refused them because another response slipped in first. A request the server never starts, or a
response that stops making progress, is given up after a deadline (`watch`), so the queue never waits forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.protocol.realtime import client_commands
from agent.waiting import wait_event

Send = Callable[[dict[str, Any]], Awaitable[None]]
REQUEST_KEY = "agent_request"  # response metadata that ties a response.created to our response.create
log = logging.getLogger("agent.responses")


@dataclass
class _Request:
    event_id: str
    response: dict[str, Any] | None
    done: asyncio.Future[str | None]
    sent_at: float = field(default=0.0)


class ResponseQueue:
    def __init__(
        self,
        send: Send,
        *,
        start_timeout_s: float = 10.0,
        stall_timeout_s: float = 30.0,
        on_abandon: Callable[[str], None] = lambda stage: None,
    ) -> None:
        self._send = send
        self._waiting: deque[_Request] = deque()
        self._in_flight: _Request | None = None
        self._by_response: dict[str, _Request] = {}
        self._seq = 0
        self._start_timeout_s = start_timeout_s
        self._stall_timeout_s = stall_timeout_s
        self._on_abandon = on_abandon
        self._changed = asyncio.Event()
        self._last_progress = 0.0
        self._echoes_metadata = False  # seen a response.created carrying our request's metadata back
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
        request.sent_at = self._last_progress = time.monotonic()
        self._changed.set()
        response = dict(request.response or {})
        response["metadata"] = {**response.get("metadata", {}), REQUEST_KEY: request.event_id}
        await self._send(client_commands.response_create(response, event_id=request.event_id))

    def progress(self) -> None:
        """The model said something: an active response is not stuck."""
        self._last_progress = time.monotonic()

    @property
    def last_progress(self) -> float:
        """When the model last said anything, or we last asked it for a response (monotonic)."""
        return self._last_progress

    async def wait_changed(self) -> None:
        """Until a response is requested, starts or ends."""
        self._changed.clear()
        await self._changed.wait()

    def created(self, response_id: str, metadata: dict[str, str] | None = None) -> None:
        """`response.created`: ours when it carries our request's metadata back, else a VAD turn's.

        The API echoes a response's `metadata` but not the create's `event_id`. Until the server has been seen to
        echo it, a response that starts while one of ours is in flight is taken as ours; after that, a VAD
        response that slips in before our create is never mistaken for it (our create then gets refused as busy
        and is retried).
        """
        self.active, self.active_id = True, response_id
        self._last_progress = time.monotonic()
        request = self._in_flight
        marker = (metadata or {}).get(REQUEST_KEY)
        self._echoes_metadata = self._echoes_metadata or marker is not None
        ours = request is not None and (marker == request.event_id or (marker is None and not self._echoes_metadata))
        if ours and request is not None:
            self._by_response[response_id] = request
            self._in_flight = None
        self._changed.set()

    async def finished(self, response_id: str) -> None:
        """`response.done`: resolve its request and send the next one."""
        if self.active_id == response_id:
            self.active, self.active_id = False, None
            self._changed.set()
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
        self._changed.set()
        if code == "conversation_already_has_active_response":
            self._waiting.appendleft(request)  # retried when the other response is done
            self.active = True
            self._last_progress = time.monotonic()
        elif not request.done.done():
            request.done.set_result(None)
            await self._next()
        return True

    def reset(self, *, requeue_unheard: bool = False) -> None:
        """A new model session: nothing is active there.

        A request the old session never started is asked again of the new one. With `requeue_unheard`, so is
        ours that it started but that never produced audio (the greeting, a reminder cut off by the switch)."""
        again: list[_Request] = []
        if self._in_flight is not None:
            again.append(self._in_flight)
        active = self._by_response.pop(self.active_id, None) if self.active_id else None
        if active is not None and requeue_unheard:
            again.append(active)
        elif active is not None and not active.done.done():
            active.done.set_result(None)
        for request in self._by_response.values():
            if not request.done.done():
                request.done.set_result(None)
        self._waiting.extendleft(reversed(again))
        self._by_response.clear()
        self._in_flight = None
        self.active, self.active_id = False, None
        self._changed.set()

    async def resume(self) -> None:
        """Send what was waiting, on the new session."""
        await self._next()

    async def watch(self) -> None:
        """Give up on a create the server never answered, or a response that went silent: the call goes on."""
        while True:
            self._changed.clear()
            now = time.monotonic()
            if self._in_flight is not None:
                due = self._in_flight.sent_at + self._start_timeout_s
            elif self.active:
                due = self._last_progress + self._stall_timeout_s
            else:
                await self._changed.wait()
                continue
            if due > now:
                await wait_event(self._changed, due - now)
                continue
            if self._in_flight is not None:
                await self._abandon_request(self._in_flight)
            else:
                await self._abandon_active()

    async def _abandon_request(self, request: _Request) -> None:
        log.warning("the model never started a requested response within %.0fs; giving up on it", self._start_timeout_s)
        self._on_abandon("start")
        self._in_flight = None
        if not request.done.done():
            request.done.set_result(None)
        await self._next()

    async def _abandon_active(self) -> None:
        response_id = self.active_id
        log.warning("response %s made no progress for %.0fs; cancelling it", response_id, self._stall_timeout_s)
        self._on_abandon("stalled")
        if response_id is None:
            self.active = False  # refused as busy, but the other response's end never came
            await self._next()
            return
        await self._send(client_commands.response_cancel(response_id))
        await self.finished(response_id)
