"""OpenAI Realtime (GA) sockets, opened and driven with `websockets` directly.

The URL and headers are the ones the openai SDK builds (`<base>/realtime?model=…`, the base from OPENAI_BASE_URL
with its scheme turned to ws/wss, or a ws:// base as it is; `Authorization: Bearer`; GA only, no beta header;
no cross-origin redirect), so the SDK is not needed to connect, and a plain `serve` never imports it (~18 MB of
types). Per event the SDK would also build pydantic objects without validation (~170 µs each) and route sends
through a queue; a call handles ~60 events a second, so reading and writing go straight to the websocket, and
the events the call acts on are parsed with narrow, tolerant models (`server_events`) behind a real
discriminator (a few µs each).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, SecurityError, WebSocketException
from websockets.uri import parse_uri

from agent.config import Settings
from agent.protocol.realtime import server_events
from agent.waiting import within
from agent.ws_send import can_send_now, write_now

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

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.strict = False  # also check each handled event against the SDK's types (`server_events.conforms`)
        self.on_off_contract: Callable[[str], None] = lambda outcome: None

    async def send(self, event: dict[str, Any]) -> None:
        """A client event built as a GA-shaped dict (the test fakes validate every one with the SDK's types)."""
        await self._ws.send(json.dumps(event))

    async def send_text(self, text: str) -> None:
        await self._ws.send(text)

    def send_now(self, text: str) -> bool:
        """Write a message at once, without a coroutine, when `send` would not wait either: the socket is open,
        its buffer is not full (flow control), no fragmented message is in progress. False: nothing was sent,
        await `send_text`. Caller audio goes this way 50 times a second per call, and `send`'s async context
        manager cost as much as the write itself."""
        if not can_send_now(self._ws):
            return False
        write_now(self._ws, text)
        return True

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
            if self.strict and not server_events.conforms(event, raw):
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
            await within(grace_s, self._ws.close())
        self.abort()


DEFAULT_BASE_URL = "https://api.openai.com/v1"  # the SDK's default
# Failures of the model socket, opening or open: the socket closed, the handshake was refused (401, 429, …),
# the network failed.
MODEL_ERRORS: tuple[type[BaseException], ...] = (WebSocketException, OSError)


def realtime_url(base_url: str, model: str) -> str:
    """`<base>/realtime?model=…` with the base's scheme as a WebSocket scheme, as the openai SDK builds it."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), ("model", model)])
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/realtime", query, ""))


class _SameOriginConnect(ws_connect):
    """Follow a redirect only within the origin: the API key must not travel elsewhere (as the SDK does)."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        target = super().process_redirect(exc)
        if isinstance(target, str):
            here, there = parse_uri(self.uri), parse_uri(target)
            if (here.secure, here.host, here.port) != (there.secure, there.host, there.port):
                return SecurityError("Cross-origin WebSocket redirects are not allowed")
        return target


class ModelConnector:
    """Opens each call's GA realtime socket."""

    def __init__(self, settings: Settings, *, api_key: str | None = None, base_url: str | None = None) -> None:
        key = api_key or (settings.openai_api_key.get_secret_value() if settings.openai_api_key else None)
        self._headers = {"Authorization": f"Bearer {key or 'offline'}", "User-Agent": "vobiz-voice-agent"}
        # The SDK reads these from the environment too; they scope usage to an organization or project.
        for header, env in (("OpenAI-Organization", "OPENAI_ORG_ID"), ("OpenAI-Project", "OPENAI_PROJECT_ID")):
            if value := os.environ.get(env):
                self._headers[header] = value
        self.base_url = base_url or settings.openai_base_url or DEFAULT_BASE_URL
        self.model = settings.openai_realtime_model
        self.timeout = settings.model_connect_timeout_s
        self.strict = settings.model_strict_events
        self.on_off_contract: Callable[[str], None] = lambda outcome: None  # a metric, set by the app

    def retarget(self, base_url: str) -> None:
        """Point at another server (the embedded offline engine once its port is known)."""
        self.base_url = base_url

    def url(self, model: str | None = None) -> str:
        return realtime_url(self.base_url, model or self.model)

    async def connect(self, model: str | None = None) -> ModelSocket:
        # No size limit and no compression, as the SDK opens it: audio deltas are large and incompressible.
        opening = _SameOriginConnect(
            self.url(model), additional_headers=self._headers, user_agent_header=None, max_size=None, compression=None
        )
        socket = ModelSocket(await within(self.timeout, opening))
        socket.on_off_contract = self.on_off_contract
        socket.strict = self.strict
        return socket

    async def aclose(self) -> None:
        """Nothing process-wide to close: each socket is its call's."""


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
        except MODEL_ERRORS as exc:
            self._log.warning("model send failed (%s): %r", command.get("type"), exc)
