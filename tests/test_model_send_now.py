"""`ModelSocket.send_now`: the caller audio's synchronous write to the model socket sends exactly what `send` would,
and declines (sending nothing) whenever `send` would have to wait or fail."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
from websockets import frames
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from agent.model import connection
from agent.model.connection import ModelSocket, _MaskSource, masked_text_frame
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
        big = '{"audio":"' + "A" * 70000 + '"}'  # a 64-bit length, as a rollover's backlog may need
        assert socket.send_now(big)
        got = [await within(2, queue.get()) for _ in range(4)]
    assert got == ['{"n":1}', '{"n":2}', '{"n":3,"é":"x"}', big]


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


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_the_frame_send_now_builds_is_the_one_websockets_builds_with_the_same_mask(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Byte for byte, for each length encoding (7-bit, 16-bit, 64-bit): only the source of the key differs."""
    data = ("é" * size).encode()[:size]
    mask = b"\x9a\x01\xff\x37"
    monkeypatch.setattr(frames.secrets, "token_bytes", lambda n: mask)
    assert masked_text_frame(data, mask) == frames.Frame(frames.OP_TEXT, data).serialize(mask=True)


def test_masking_keys_come_fresh_from_the_kernel_in_blocks_never_twice() -> None:
    source = _MaskSource()
    keys = [source.take() for _ in range(3 * _MaskSource.BLOCK // 4)]  # three blocks' worth
    assert all(len(key) == 4 for key in keys)
    assert len(set(keys)) > len(keys) * 0.99  # 32-bit random keys: a handful of chance repeats at most
    block = _MaskSource.BLOCK // 4
    assert b"".join(keys[:block]) != b"".join(keys[block : 2 * block])


def test_a_forked_child_does_not_reuse_its_parents_masking_keys() -> None:
    """The next keys of the parent and of a child forked now must differ (the child reads a block of its own)."""
    connection._masks.take()  # a block is in use
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next keys, to the parent
        os.close(read)
        os.write(write, b"".join(connection._masks.take() for _ in range(4)))
        os._exit(0)
    os.close(write)
    child = b""
    while len(child) < 16:
        chunk = os.read(read, 16)
        if not chunk:
            break
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = b"".join(connection._masks.take() for _ in range(4))
    assert len(child) == 16 and child != parent


async def test_send_now_takes_the_librarys_path_when_a_frame_must_be_logged(
    received: tuple[asyncio.Queue[str | bytes], str],
) -> None:
    """With websockets' debug logging on, the frame goes through `send_text`, which logs it."""
    queue, url = received
    async with connect(url, compression=None) as ws:
        socket = ModelSocket(ws)
        ws.protocol.debug = True
        sent: list[bytes] = []
        original = ws.protocol.send_text
        ws.protocol.send_text = lambda data, fin=True: (sent.append(data), original(data, fin))[1]  # type: ignore[method-assign]
        assert socket.send_now('{"n":1}')
        assert sent == [b'{"n":1}']
        assert await within(2, queue.get()) == '{"n":1}'
