"""Stream status callbacks (StartStream, PlayedStream, ClearedAudio...) over plain keep-alive HTTP/1.1.

Vobiz posts one of these to `<Stream statusCallbackUrl>` for every checkpoint played and every clear; a load test
with a hundred calls sends hundreds a second, and through httpx each cost the carrier more than a call's audio.
This sender writes the same form-encoded request (or GET with a query) on a small pool of kept-alive connections
per host and reads the reply by its Content-Length or chunks. Used when the carrier is given one (the load-test
runner does); otherwise callbacks go through the carrier's httpx client like every other webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

_MAX_IDLE_PER_HOST = 32
_MAX_BODY = 1 << 20


class CallbackError(Exception):
    """The callback got no usable HTTP response (connection refused, timeout, malformed reply)."""


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


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


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
        if method == "GET":
            sep = "&" if "?" in target.path else "?"
            head = f"GET {target.path}{sep}{form} HTTP/1.1\r\n"
            body = b""
        else:
            head = f"POST {target.path} HTTP/1.1\r\n"
            body = form.encode()
        lines = [head, f"Host: {target.host_header}\r\nAccept: */*\r\nConnection: keep-alive\r\n"]
        lines += [f"{k}: {v}\r\n" for k, v in headers.items()]
        if method != "GET":
            lines.append(f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n")
        request = "".join(lines).encode("latin-1") + b"\r\n" + body
        async with asyncio.timeout(limit_s):
            for attempt in range(2):
                conn, reused = await self._connection(target)
                try:
                    return await self._exchange(target, conn, request)
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    self._discard(conn)
                    # A kept-alive connection the server had closed before answering anything: try a new one.
                    stale = reused and not attempt and not getattr(exc, "partial", b"")
                    if not stale:
                        raise CallbackError(f"{type(exc).__name__}: {exc}") from exc
                except BaseException:
                    self._discard(conn)
                    raise
        raise CallbackError("unreachable")  # pragma: no cover

    async def _connection(self, target: _Target) -> tuple[_Conn, bool]:
        idle = self._idle.get((target.host, target.port))
        while idle:
            conn = idle.pop()
            if not conn[1].is_closing() and not conn[0].at_eof():
                return conn, True
            self._discard(conn)
        try:
            return await asyncio.open_connection(target.host, target.port), False
        except OSError as exc:
            raise CallbackError(f"ConnectError: {exc}") from exc

    async def _exchange(self, target: _Target, conn: _Conn, request: bytes) -> CallbackResponse:
        reader, writer = conn
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise CallbackError(f"malformed status line {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        keep = headers.get("connection", "").lower() != "close" and parts[0] == "HTTP/1.1"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked(reader)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length > _MAX_BODY:
                raise CallbackError(f"response body of {length} bytes")
            body = await reader.readexactly(length)
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            body, keep = await reader.read(_MAX_BODY), False
        if keep and not self._closed:
            self._idle.setdefault((target.host, target.port), []).append(conn)
            if len(self._idle[(target.host, target.port)]) > _MAX_IDLE_PER_HOST:
                self._discard(self._idle[(target.host, target.port)].pop(0))
        else:
            self._discard(conn)
        return CallbackResponse(status, body.decode("utf-8", "replace"))

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)
            if len(out) > _MAX_BODY:
                raise CallbackError("response body too large")

    @staticmethod
    def _discard(conn: _Conn) -> None:
        with contextlib.suppress(Exception):
            conn[1].close()

    async def aclose(self) -> None:
        self._closed = True
        conns = [c for idle in self._idle.values() for c in idle]
        self._idle.clear()
        for conn in conns:
            self._discard(conn)
        for _, writer in conns:
            with contextlib.suppress(Exception):
                await writer.wait_closed()
