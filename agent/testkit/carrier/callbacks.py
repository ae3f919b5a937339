"""Stream status callbacks (StartStream, PlayedStream, ClearedAudio...) over plain keep-alive HTTP/1.1.

Vobiz posts one of these to `<Stream statusCallbackUrl>` for every checkpoint played and every clear; a load test
with a hundred calls sends hundreds a second, and through httpx each cost the carrier more than a call's audio.
This sender writes the same form-encoded request (or GET with a query) on a small pool of kept-alive connections
per host; h11 frames the request and parses the reply (Content-Length, chunked or read-to-close) and says whether
the connection may carry another. Used when the carrier is given one (the load-test runner does); otherwise
callbacks go through the carrier's httpx client like every other webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import h11

_MAX_IDLE_PER_HOST = 32
_MAX_BODY = 1 << 20
_READ_SIZE = 65536
_FORM = ("Content-Type", "application/x-www-form-urlencoded")


class CallbackError(Exception):
    """The callback got no usable HTTP response (connection refused, timeout, malformed reply)."""


class _ClosedBeforeReply(ConnectionError):
    """The server closed the connection before sending a byte of the reply (a stale kept-alive one, maybe)."""


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    host_header: str
    path: str  # path and query as sent on the request line


@dataclass(frozen=True)
class CallbackResponse:
    status: int
    body: str


class _Conn:
    """One socket and the h11 state machine that frames what goes over it."""

    __slots__ = ("h11", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class CallbackSender:
    """Sends status callbacks on kept-alive connections, shared by every call of a run."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._targets: dict[str, _Target] = {}
        self._closed = False

    def _target(self, url: str) -> _Target:
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise CallbackError(f"only http:// callback URLs are sent this way, not {url!r}")
            port = parts.port or 80
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            found = self._targets[url] = _Target(parts.hostname, port, parts.netloc, path)
        return found

    @staticmethod
    def supports(url: str) -> bool:
        return url.startswith("http://")

    async def send(
        self, url: str, method: str, fields: Mapping[str, str], headers: Mapping[str, str], limit_s: float
    ) -> CallbackResponse:
        """One request; raises CallbackError (or TimeoutError) when no response came."""
        target = self._target(url)
        form = urlencode(fields)
        head = [("Host", target.host_header), ("Accept", "*/*"), ("Connection", "keep-alive"), *headers.items()]
        if method == "GET":
            sep = "&" if "?" in target.path else "?"
            request = h11.Request(method=method, target=f"{target.path}{sep}{form}", headers=head)
            body = b""
        else:
            body = form.encode()
            head += [_FORM, ("Content-Length", str(len(body)))]
            request = h11.Request(method=method, target=target.path, headers=head)
        async with asyncio.timeout(limit_s):
            for attempt in range(2):
                conn, reused = await self._connection(target)
                try:
                    response = await self._exchange(conn, request, body)
                except _ClosedBeforeReply as exc:
                    conn.close()
                    if not reused or attempt:  # only a kept-alive connection may have gone stale: try a new one
                        raise CallbackError(f"{type(exc).__name__}: {exc}") from exc
                    continue
                except BaseException:
                    conn.close()
                    raise
                self._release(target, conn)
                return response
        raise CallbackError("unreachable")  # pragma: no cover

    async def _connection(self, target: _Target) -> tuple[_Conn, bool]:
        idle = self._idle.get((target.host, target.port))
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn, True
            conn.close()
        try:
            reader, writer = await asyncio.open_connection(target.host, target.port)
        except OSError as exc:
            raise CallbackError(f"ConnectError: {exc}") from exc
        return _Conn(reader, writer), False

    @staticmethod
    async def _exchange(conn: _Conn, request: h11.Request, body: bytes) -> CallbackResponse:
        """Writes the request and reads events until the reply's end; h11 does the framing both ways."""
        http = conn.h11
        out = http.send(request) or b""
        if body:
            out += http.send(h11.Data(data=body)) or b""
        conn.writer.write(out + (http.send(h11.EndOfMessage()) or b""))
        status, received, size, chunks = 0, 0, 0, []
        try:
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    data = await conn.reader.read(_READ_SIZE)
                    if not data and not received:
                        raise _ClosedBeforeReply("server closed the connection before replying")
                    received += len(data)
                    http.receive_data(data)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    chunks.append(event.data)
                    size += len(event.data)
                    if size > _MAX_BODY:
                        raise CallbackError("response body too large")
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise CallbackError("connection closed before the reply ended")
                # InformationalResponse (1xx): the real reply follows
        except h11.RemoteProtocolError as exc:
            raise CallbackError(f"malformed reply: {exc}") from exc
        except _ClosedBeforeReply:
            raise
        except ConnectionError as exc:
            if not received:  # reset before any reply, as a stale kept-alive connection may be
                raise _ClosedBeforeReply(f"{type(exc).__name__}: {exc}") from exc
            raise CallbackError(f"{type(exc).__name__}: {exc}") from exc  # part-way through: not sent again
        return CallbackResponse(status, b"".join(chunks).decode("utf-8", "replace"))

    def _release(self, target: _Target, conn: _Conn) -> None:
        """Back to the pool when h11 says the connection can carry another request, else closed."""
        http = conn.h11
        if self._closed or http.our_state is not h11.DONE or http.their_state is not h11.DONE:
            conn.close()  # MUST_CLOSE: Connection: close, HTTP/1.0 or a body read to the end of the stream
            return
        http.start_next_cycle()
        idle = self._idle.setdefault((target.host, target.port), [])
        idle.append(conn)
        if len(idle) > _MAX_IDLE_PER_HOST:
            idle.pop(0).close()

    async def aclose(self) -> None:
        self._closed = True
        conns = [c for idle in self._idle.values() for c in idle]
        self._idle.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()
