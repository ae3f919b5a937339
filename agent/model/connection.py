"""Opening OpenAI Realtime (GA) connections with the openai SDK."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection

from agent.config import Settings

ModelConnection = AsyncRealtimeConnection


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

    async def connect(self, model: str | None = None) -> ModelConnection:
        """GA only: the SDK's `realtime.connect` sends no beta header, so the retired beta API is never hit."""
        manager = self._client.realtime.connect(model=model or self.model)
        return await asyncio.wait_for(manager.enter(), self.timeout)

    async def aclose(self) -> None:
        await self._client.close()


_closing: set[asyncio.Task[None]] = set()


async def close_connection(model: ModelConnection, grace_s: float = 0.5) -> None:
    """Close politely, but never wait long: a socket whose unread events fill its buffer cannot finish
    the closing handshake, so after `grace_s` the transport is aborted."""
    with contextlib.suppress(Exception):  # whatever went wrong, the socket must end
        await asyncio.wait_for(model.close(), grace_s)
    ws = getattr(model, "_connection", None)
    transport = getattr(ws, "transport", None)
    if transport is not None and not transport.is_closing():
        transport.abort()


def discard(pending: asyncio.Future[ModelConnection]) -> None:
    """Give up on a connection that may still be opening: cancel it, or close it once it is open."""

    def close(done: asyncio.Future[ModelConnection]) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        task = asyncio.get_running_loop().create_task(close_connection(done.result()))
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    if not pending.done():
        pending.cancel()
    pending.add_done_callback(close)


async def send_event(model: ModelConnection, event: dict[str, Any]) -> None:
    """Send a client event as JSON; callers build GA-shaped dicts (the fakes validate them against the SDK)."""
    await model.send_raw(json.dumps(event))
