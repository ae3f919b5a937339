"""OpenAI Realtime (GA) sockets: opened by the openai SDK, then driven directly on the hot path.

The SDK does the connecting (URL from OPENAI_BASE_URL, auth headers, GA only: no beta header). Per event,
though, it builds pydantic objects without validation (~170 µs each) and routes sends through a queue; a call
handles ~60 events a second, so reading and writing go straight to the websocket and events are validated
with the SDK's own types behind a real discriminator (~5 µs each).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from pydantic import ValidationError

from agent.config import Settings
from agent.model.events import SERVER_EVENTS
from agent.waiting import within

log = logging.getLogger("agent.model")


class ModelSocket:
    """One call's realtime socket."""

    def __init__(self, sdk: AsyncRealtimeConnection) -> None:
        self.sdk = sdk
        self._ws = sdk._connection  # the websockets connection the SDK opened
        self.unknown_events = 0

    async def send(self, event: dict[str, Any]) -> None:
        """A client event built as a GA-shaped dict (the test fakes validate every one with the SDK's types)."""
        await self._ws.send(json.dumps(event))

    async def send_text(self, text: str) -> None:
        await self._ws.send(text)

    async def events(self) -> AsyncIterator[Any]:
        """Typed server events until the socket closes; unknown or malformed ones are logged and skipped."""
        async for raw in self._ws:
            try:
                yield SERVER_EVENTS.validate_json(raw)
            except ValidationError as exc:
                self.unknown_events += 1
                if self.unknown_events & (self.unknown_events - 1) == 0:
                    log.warning("skipped a server event the SDK's types do not describe: %s", str(exc)[:300])

    async def close(self, grace_s: float = 0.5) -> None:
        """Close politely, but never wait long: a socket whose unread events fill its buffer cannot finish the
        closing handshake, so after `grace_s` the transport is aborted."""
        with contextlib.suppress(Exception):  # whatever went wrong, the socket must end
            await within(grace_s, self.sdk.close())
        transport = getattr(self._ws, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.abort()


class ModelConnector:
    """One SDK client per process; each call opens its own GA realtime socket through it."""

    def __init__(self, settings: Settings, *, api_key: str | None = None, base_url: str | None = None) -> None:
        key = api_key or (settings.openai_api_key.get_secret_value() if settings.openai_api_key else None)
        url = base_url or settings.openai_base_url
        kwargs: dict[str, Any] = {"api_key": key or "offline", "max_retries": 0}
        if url and url.startswith(("ws://", "wss://")):
            kwargs["websocket_base_url"] = url
        elif url:
            kwargs["base_url"] = url
        self._client = AsyncOpenAI(**kwargs)
        self.model = settings.openai_realtime_model
        self.timeout = settings.model_connect_timeout_s
        self.base_url = str(self._client.websocket_base_url or self._client.base_url)

    def retarget(self, base_url: str) -> None:
        """Point at another server (the embedded offline engine once its port is known)."""
        self._client = self._client.with_options(base_url=base_url)
        self.base_url = base_url

    async def connect(self, model: str | None = None) -> ModelSocket:
        manager = self._client.realtime.connect(model=model or self.model)
        return ModelSocket(await within(self.timeout, manager.enter()))

    async def aclose(self) -> None:
        await self._client.close()


_closing: set[asyncio.Task[None]] = set()


def discard(pending: asyncio.Future[ModelSocket]) -> None:
    """Give up on a connection that may still be opening: cancel it, or close it once it is open."""

    def close(done: asyncio.Future[ModelSocket]) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        task = asyncio.get_running_loop().create_task(done.result().close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    if not pending.done():
        pending.cancel()
    pending.add_done_callback(close)
