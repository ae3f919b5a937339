"""A local stand-in for the OpenAI Realtime GA WebSocket API (``wss://api.openai.com/v1/realtime``).

Why it exists: the agent's tests, the load-test tool and the offline engine need a server that speaks the GA
wire protocol (event names, wire order, ids, error codes, barge-in behaviour) with no network access and no cost.
Every event this server sends is checked with the SDK-derived ``validate_server_event`` before it goes out (a
failure is a bug in the fake and is raised loudly; of a response's stream of deltas, which differ only in their
payload string, the first of each kind), and every client event is checked with ``validate_client_event`` (a
plain ``input_audio_buffer.append``, by the few lines that are that check for its one shape), so an agent that
drifts from the protocol shows up in ``SimSession.protocol_errors``.

What the model "says" comes from a pluggable :class:`ReplySource`; the default, :class:`ToneReplySource`, speaks
sine tones and describes caller audio instead of recognising it. :mod:`agent.engine.engine` plugs in speech
(eSpeak NG replies from the prompt's scripted dialogue, PocketSphinx recognition).

Usage::

    async with RealtimeServer(RealtimeSimConfig(speed=0)) as server:
        client = AsyncOpenAI(api_key="x", base_url=server.http_base_url)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            ...
        session = server.sessions[0]
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from agent.engine.protocol import DEFAULT_MODEL, REALTIME_PATH
from agent.engine.replies import RealtimeSimConfig
from agent.engine.session import SimSession

log = logging.getLogger(__name__)


class _ProbesAreNotErrors(logging.Filter):
    """The agent's readiness probe opens a TCP connection and closes it: websockets would log every one as a
    failed handshake with a traceback (each /readyz against the embedded engine). A real bad request still is."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None and not isinstance(exc, EOFError):
            exc = exc.__cause__ or exc.__context__
        return exc is None


_ws_log = logging.getLogger(f"{__name__}.ws")
_ws_log.addFilter(_ProbesAreNotErrors())


class RealtimeServer:
    """Serves ``ws://127.0.0.1:PORT/v1/realtime`` for the unmodified openai SDK; one :class:`SimSession` a socket.

    Hooks (plain attributes, set before or after ``start``):

    * ``on_session`` (sync or async) runs for each new session before ``session.created`` is sent, to script it;
    * ``on_session_closed`` runs once a session's handler has finished (its socket closed, its tasks cancelled),
      e.g. to summarise its traffic and drop it;
    * ``http_handler`` sees every plain HTTP request first and may answer it (say, a status endpoint on the same
      port); returning None passes the request on to the Realtime endpoint.

    ``internal_errors`` collects bugs in the fake itself; tests should assert it stays empty.
    """

    def __init__(self, config: RealtimeSimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or RealtimeSimConfig()
        self.host = host
        self.port = port
        self.sessions: list[SimSession] = []
        self.on_session: Callable[[SimSession], Awaitable[None] | None] | None = None
        self.on_session_closed: Callable[[SimSession], None] | None = None
        self.http_handler: Callable[[ServerConnection, Request], Response | None] | None = None
        self.internal_errors: list[str] = []
        self._server: Server | None = None
        self._live: set[SimSession] = set()
        self._session_waiters: list[tuple[int, asyncio.Future[SimSession]]] = []
        self._idle_waiters: list[asyncio.Future[None]] = []

    @property
    def http_base_url(self) -> str:
        """For ``AsyncOpenAI(base_url=...)``; the SDK maps http->ws and appends ``/realtime``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def ws_base_url(self) -> str:
        """For ``AsyncOpenAI(websocket_base_url=...)``."""
        return f"ws://{self.host}:{self.port}/v1"

    @property
    def connections_open(self) -> int:
        """Sockets whose session handler is still running."""
        return len(self._live)

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            logger=_ws_log,
            compression="deflate",  # accept a permessage-deflate offer; the SDK normally sends none
            max_size=32 * 2**20,  # the API accepts 15 MiB of audio per append, base64-encoded
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        """Close every connection (code 1001) and wait until all session handlers have finished."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def wait_for_session(self, index: int = 0, timeout: float = 5) -> SimSession:  # noqa: ASYNC109
        """The ``index``-th session (connection order), waiting for it to connect if needed."""
        if index < len(self.sessions):
            return self.sessions[index]
        fut: asyncio.Future[SimSession] = asyncio.get_running_loop().create_future()
        waiter = (index, fut)
        self._session_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise TimeoutError(f"session #{index} did not connect within {timeout}s") from None
        finally:
            self._session_waiters.remove(waiter)

    async def wait_idle(self, timeout: float = 5) -> None:  # noqa: ASYNC109
        """Wait until no connection is open (handlers finished, tasks cancelled)."""
        if not self._live:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise TimeoutError(f"{self.connections_open} connection(s) still open after {timeout}s") from None
        finally:
            self._idle_waiters.remove(fut)

    def record_internal_error(self, where: str, exc: BaseException) -> None:
        """A bug in the fake itself (``where``: the session id): kept for tests to assert on, and logged."""
        self.internal_errors.append(f"{where}: {type(exc).__name__}: {exc}")
        log.error("realtime simulator bug in %s", where, exc_info=exc)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """HTTP-level checks before the upgrade: path, query, optional API key."""
        if self.http_handler is not None:
            answer = self.http_handler(connection, request)
            if answer is not None:
                return answer
        url = urlsplit(request.path)
        if url.path.rstrip("/") != REALTIME_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        query = parse_qs(url.query)
        if not query.get("model") and not query.get("call_id"):
            return connection.respond(HTTPStatus.BAD_REQUEST, "Missing required query parameter: model\n")
        expected_auth = None if self.config.api_key is None else f"Bearer {self.config.api_key}"
        if expected_auth is not None and request.headers.get("Authorization") != expected_auth:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Incorrect API key provided.\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None  # set once the handshake succeeded
        query = parse_qs(urlsplit(request.path).query)
        call_id = query.get("call_id", [None])[0]
        session = SimSession(
            self,
            ws,
            model=query.get("model", [DEFAULT_MODEL])[0] or DEFAULT_MODEL,
            call_id=call_id,
            headers={k.lower(): v for k, v in request.headers.raw_items()},
            sim_config=dataclasses.replace(self.config),
            beta="realtime=v1" in request.headers.get("OpenAI-Beta", ""),
        )
        self.sessions.append(session)
        self._live.add(session)
        for index, fut in self._session_waiters:
            if index == len(self.sessions) - 1 and not fut.done():
                fut.set_result(session)
        try:
            if self.on_session is not None:
                result = self.on_session(session)
                if inspect.isawaitable(result):
                    await result
            await session._serve()
        except ConnectionClosed:
            pass
        except Exception as exc:
            self.record_internal_error(session.id, exc)
            await ws.close(1011, "realtime simulator error")
        finally:
            await session._shutdown()
            self._live.discard(session)
            if self.on_session_closed is not None:
                try:
                    self.on_session_closed(session)
                except Exception as exc:  # a hook's bug is reported like the fake's own, never raised into websockets
                    self.record_internal_error(session.id, exc)
            if not self._live:
                for fut_idle in self._idle_waiters:
                    if not fut_idle.done():
                        fut_idle.set_result(None)
