"""OpenAI Realtime (GA) sockets: opened by the openai SDK, then driven directly on the hot path.

The SDK does the connecting (URL from OPENAI_BASE_URL, auth headers, GA only: no beta header). Per event,
though, it builds pydantic objects without validation (~170 µs each) and routes sends through a queue; a call
handles ~60 events a second, so reading and writing go straight to the websocket, and the events the call acts
on are parsed with narrow, tolerant models (`server_events`) behind a real discriminator (a few µs each).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from openai import AsyncOpenAI, OpenAIError
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from websockets.exceptions import ConnectionClosed

from agent.config import Settings
from agent.protocol.realtime import server_events
from agent.waiting import within

log = logging.getLogger("agent.model")

# Server events the agent knowingly does not act on: documented GA types, so skipping them is not news.
_IGNORED_QUIETLY = frozenset(
    {
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.created",
        "conversation.item.deleted",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.segment",
        "conversation.item.input_audio_transcription.failed",
        "input_audio_buffer.cleared",
        "input_audio_buffer.timeout_triggered",
        "rate_limits.updated",
        "response.output_item.added",
        "response.content_part.added",
        "response.content_part.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_text.delta",
        "response.output_text.done",
    }
)
_logged: set[tuple[str, str]] = set()  # (outcome, type) pairs already logged by this process


class ModelSocket:
    """One call's realtime socket."""

    def __init__(self, sdk: AsyncRealtimeConnection) -> None:
        self.sdk = sdk
        self._ws = sdk._connection  # the websockets connection the SDK opened
        self.on_off_contract: Callable[[str], None] = lambda outcome: None

    async def send(self, event: dict[str, Any]) -> None:
        """A client event built as a GA-shaped dict (the test fakes validate every one with the SDK's types)."""
        await self._ws.send(json.dumps(event))

    async def send_text(self, text: str) -> None:
        await self._ws.send(text)

    async def events(self) -> AsyncIterator[server_events.ServerEvent]:
        """The events a call acts on, until the socket closes. Tolerant by design (see `server_events`): an
        unknown type is skipped, a handled type is kept even when the SDK's strict types reject it; both are
        counted through `on_off_contract` and logged once per type."""
        async for raw in self._ws:
            try:
                event = server_events.parse(raw)
            except server_events.Unhandled as exc:
                if exc.known:
                    self._off_contract("unusable", exc.kind, str(exc))
                elif exc.kind not in _IGNORED_QUIETLY:
                    self._off_contract("ignored", exc.kind, "not an event the agent acts on")
                continue
            if not server_events.conforms(event, raw):
                self._off_contract("lenient", event.type, "outside the SDK's types, handled from its fields")
            yield event

    def _off_contract(self, outcome: str, kind: str, detail: str) -> None:
        self.on_off_contract(outcome)
        key = (outcome, kind)
        if key not in _logged and len(_logged) < 256:
            _logged.add(key)
            log.warning("model event %s (%s): %s", kind, outcome, detail[:300])

    async def responsive(self, timeout_s: float) -> bool:
        """Whether the peer answers a ping in time: a network that died silently (no FIN, no RST) does not."""
        try:
            pong = await self._ws.ping()
            await within(timeout_s, pong)
        except (TimeoutError, ConnectionClosed):
            return False
        return True

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake nobody would answer."""
        transport = getattr(self._ws, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.abort()

    async def close(self, grace_s: float = 0.5) -> None:
        """Close politely, but never wait long: a socket whose unread events fill its buffer cannot finish the
        closing handshake, so after `grace_s` the transport is aborted."""
        with contextlib.suppress(Exception):  # whatever went wrong, the socket must end
            await within(grace_s, self.sdk.close())
        self.abort()


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
        self.on_off_contract: Callable[[str], None] = lambda outcome: None  # a metric, set by the app

    def retarget(self, base_url: str) -> None:
        """Point at another server (the embedded offline engine once its port is known)."""
        self._client = self._client.with_options(base_url=base_url)
        self.base_url = base_url

    async def connect(self, model: str | None = None) -> ModelSocket:
        manager = self._client.realtime.connect(model=model or self.model)
        socket = ModelSocket(await within(self.timeout, manager.enter()))
        socket.on_off_contract = self.on_off_contract
        return socket

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


class ModelLink:
    """The socket a call talks to now: replaced on reconnect and rollover, empty in between. `ready` is set while
    the socket may take caller audio; a send that fails is logged and dropped (the reader notices the drop)."""

    def __init__(self, log: logging.LoggerAdapter[logging.Logger]) -> None:
        self.socket: ModelSocket | None = None
        self.ready = asyncio.Event()
        self._log = log

    async def send(self, command: dict[str, Any]) -> None:
        socket = self.socket
        if socket is None:
            return
        try:
            await socket.send(command)
        except (ConnectionClosed, OpenAIError, OSError) as exc:
            self._log.warning("model send failed (%s): %r", command.get("type"), exc)
