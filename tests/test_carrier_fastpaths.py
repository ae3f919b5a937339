"""The carrier simulator's cheap paths for load tests: the shared ticker that drives every call's 20 ms clocks, and
the kept-alive status-callback sender. Each must be indistinguishable, on the wire and in timing, from the plain
path it replaces."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest

from agent.testkit.carrier.callbacks import CallbackError, CallbackSender
from agent.testkit.carrier.ticker import Ticker
from agent.waiting import within

pytestmark = pytest.mark.timeout(20)


async def test_ticker_runs_callbacks_in_time_order_never_early_and_skips_cancelled() -> None:
    loop = asyncio.get_running_loop()
    tick = Ticker(loop)
    ran: list[tuple[str, float, float]] = []
    done = asyncio.Event()
    base = loop.time() + 0.02

    def at(name: str, when: float) -> None:
        def run() -> None:
            ran.append((name, when, loop.time()))
            if name == "last":
                done.set()

        handles[name] = tick.call_at(when, run)

    handles: dict[str, object] = {}
    for name, offset in [("c", 0.0123), ("a", 0.0), ("b", 0.0004), ("gone", 0.005), ("last", 0.03)]:
        at(name, base + offset)
    handles["gone"].cancel()  # type: ignore[attr-defined]
    await within(2, done.wait())
    assert [name for name, _, _ in ran] == ["a", "b", "c", "last"]
    assert all(t >= when - 1e-9 for _, when, t in ran)
    assert all(t - when < 0.015 for _, when, t in ran)


async def test_ticker_keeps_scheduling_order_within_a_millisecond_and_runs_what_a_callback_adds_to_it() -> None:
    loop = asyncio.get_running_loop()
    tick = Ticker(loop)
    ran: list[str] = []
    done = asyncio.Event()
    # 0.1 ms into a millisecond, so that `when` and `when + 0.2 ms` are due in the same one whatever the clock's
    # resolution (uvloop's is a millisecond: `loop.time() + 0.02` fell on an edge, and 0.2 ms later could be the next).
    when = math.floor((loop.time() + 0.02) * 1000) / 1000 + 0.0001

    def later() -> None:
        ran.append("added")
        done.set()

    def first() -> None:
        ran.append("first")
        tick.call_at(when, later)  # its millisecond is being run: it runs now, after the rest of that millisecond

    tick.call_at(when, first)
    for name in ("second", "third"):
        tick.call_at(when + 0.0002, lambda name=name: ran.append(name))  # type: ignore[misc]
    gone = tick.call_at(when, lambda: ran.append("gone"))
    gone.cancel()
    await within(2, done.wait())
    assert ran == ["first", "second", "third", "added"]


class _Server:
    """A scripted HTTP/1.1 server: answers each request with the next canned response, records what came."""

    def __init__(self, responses: list[bytes]) -> None:
        self.responses = responses
        self.requests: list[bytes] = []
        self.connections = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.responses:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append(head + await reader.readexactly(length))
                response = self.responses.pop(0)
                writer.write(response)
                await writer.drain()
                if b"Connection: close" in response:
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[_Server]:
    server = _Server([])
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


async def test_callback_sender_posts_forms_and_reads_every_response_shape(scripted: _Server) -> None:
    scripted.responses += [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ]
    sender = CallbackSender()
    url = f"http://127.0.0.1:{scripted.port}/vobiz/stream-status?k=1"
    headers = {"User-Agent": "Vobiz", "X-Vobiz-Signature-V3": "sig"}
    try:
        first = await sender.send(url, "POST", {"Event": "PlayedStream", "Name": "a b&c"}, headers, 2)
        second = await sender.send(url, "POST", {"Event": "ClearedAudio"}, headers, 2)
        third = await sender.send(url, "POST", {"Event": "StopStream"}, headers, 2)
        fourth = await sender.send(url, "GET", {"Event": "StartStream"}, headers, 2)
    finally:
        await sender.aclose()
    assert [(r.status, r.body) for r in (first, second, third, fourth)] == [
        (200, "ok"),
        (200, "abcde"),
        (500, ""),
        (204, ""),
    ]
    assert scripted.connections == 2  # kept alive until the server said close
    post = scripted.requests[0].decode()
    assert post.startswith("POST /vobiz/stream-status?k=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{scripted.port}\r\n" in post and "User-Agent: Vobiz\r\n" in post
    assert "X-Vobiz-Signature-V3: sig\r\n" in post
    assert "Content-Type: application/x-www-form-urlencoded\r\n" in post
    assert post.endswith("\r\n\r\nEvent=PlayedStream&Name=a+b%26c")
    assert scripted.requests[3].decode().startswith("GET /vobiz/stream-status?k=1&Event=StartStream HTTP/1.1\r\n")


async def test_callback_sender_retries_a_kept_alive_connection_the_server_closed(scripted: _Server) -> None:
    scripted.responses += [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]
    sender = CallbackSender()
    url = f"http://127.0.0.1:{scripted.port}/s"
    try:
        await sender.send(url, "POST", {"Event": "StartStream"}, {}, 2)
        # The server closes its side once out of responses: the idle connection is dead when next used.
        scripted.responses.append(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        again = await sender.send(url, "POST", {"Event": "PlayedStream"}, {}, 2)
    finally:
        await sender.aclose()
    assert again.status == 200 and scripted.connections == 2


async def test_callback_sender_reports_an_unreachable_agent() -> None:
    sender = CallbackSender()
    with pytest.raises(Exception, match="ConnectError"):
        await sender.send("http://127.0.0.1:9/s", "POST", {}, {}, 2)


async def test_callback_sender_keeps_only_connections_h11_says_can_be_reused(scripted: _Server) -> None:
    """An HTTP/1.0 reply, even framed, ends its connection; a body without length runs to the server's close."""
    scripted.responses += [
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end",
    ]
    sender = CallbackSender()
    url = f"http://127.0.0.1:{scripted.port}/s"
    try:
        first = await sender.send(url, "POST", {"Event": "StartStream"}, {}, 2)
        second = await sender.send(url, "POST", {"Event": "PlayedStream"}, {}, 2)
    finally:
        await sender.aclose()
    assert [(r.status, r.body) for r in (first, second)] == [(200, "ok"), (200, "to the end")]
    assert scripted.connections == 2


async def test_callback_sender_reports_a_malformed_reply(scripted: _Server) -> None:
    scripted.responses += [b"HTTP/1.1 two hundred OK\r\n\r\n"]
    sender = CallbackSender()
    try:
        with pytest.raises(CallbackError, match="malformed reply"):
            await sender.send(f"http://127.0.0.1:{scripted.port}/s", "POST", {}, {}, 2)
    finally:
        await sender.aclose()
