"""`ModelSocket.send_now`: the caller audio's synchronous write to the model socket sends exactly what `send` would,
and declines (sending nothing) whenever `send` would have to wait or fail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from agent.model.connection import ModelSocket
from agent.waiting import within


@pytest.fixture
async def received() -> AsyncIterator[tuple[asyncio.Queue[str | bytes], str]]:
    """A loopback WebSocket server putting every message it gets on a queue; its URL."""
    queue: asyncio.Queue[str | bytes] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await queue.put(message)

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield queue, f"ws://127.0.0.1:{port}"


async def test_a_message_sent_now_arrives_as_text_in_order_with_awaited_sends(
    received: tuple[asyncio.Queue[str | bytes], str],
) -> None:
    queue, url = received
    async with connect(url, compression=None) as ws:
        socket = ModelSocket(ws)
        assert socket.send_now('{"n":1}')
        await socket.send_text('{"n":2}')
        assert socket.send_now('{"n":3,"é":"x"}')
        got = [await within(2, queue.get()) for _ in range(3)]
    assert got == ['{"n":1}', '{"n":2}', '{"n":3,"é":"x"}']


async def test_send_now_declines_while_the_socket_holds_back_writes(
    received: tuple[asyncio.Queue[str | bytes], str],
) -> None:
    _, url = received
    async with connect(url, compression=None, write_limit=1) as ws:
        socket = ModelSocket(ws)
        ws.pause_writing()  # what the transport does once its buffer passes the write limit
        assert not socket.send_now("held")
        assert not ws.protocol.data_to_send()  # nothing was queued behind the full buffer either
        ws.resume_writing()
        assert socket.send_now("goes")


async def test_send_now_declines_once_the_socket_closed(received: tuple[asyncio.Queue[str | bytes], str]) -> None:
    _, url = received
    async with connect(url, compression=None) as ws:
        socket = ModelSocket(ws)
        await ws.close()
        assert not socket.send_now("late")
        socket.abort()
        assert not socket.send_now("later")
