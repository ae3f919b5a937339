"""Writing a text message to the stream socket without a coroutine, when websockets' own `send` would not wait.

A load test sends 50 caller frames a second per call; `ClientConnection.send` spends more on its async context
manager and on fetching a fresh 4-byte mask key from the OS (one syscall per frame) than on the write. This
writes the same RFC 6455 client frame (FIN, text opcode, masked with an unpredictable key) straight to the
transport, but only when `send` would have done just that at once; otherwise the caller awaits `send` as usual.
"""

from __future__ import annotations

import os
import struct

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the pure-Python fallback websockets ships
    from websockets.utils import apply_mask

_POOL_BYTES = 4096


class _MaskKeys:
    """Mask keys from the OS's CSPRNG, fetched 1024 at a time instead of one syscall per frame (RFC 6455 §5.3 asks
    for unpredictable keys, which bulk `os.urandom` keys are)."""

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def take(self) -> bytes:
        if self._pos + 4 > len(self._pool):
            self._pool, self._pos = os.urandom(_POOL_BYTES), 0
        key = self._pool[self._pos : self._pos + 4]
        self._pos += 4
        return key


_keys = _MaskKeys()


def can_send_now(ws: object) -> bool:
    """Whether `ws.send` would write at once: a plain client socket (not a wrapper that adds jitter or echo), open,
    no extension (compression) to run, its buffer not above the high-water mark, no fragmented message going out,
    nothing of websockets' own still waiting to be written."""
    if type(ws) is not ClientConnection:
        return False
    protocol = ws.protocol
    return (
        protocol.state is State.OPEN
        and not ws.paused
        and ws.fragmented_send_waiter is None
        and not protocol.extensions
        and not protocol.writes
        and not ws.transport.is_closing()
    )


def frame_text(text: str) -> bytes:
    """One complete masked client text frame for ``text``."""
    data = text.encode()
    n = len(data)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0xFE, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0xFF, n)
    key = _keys.take()
    return header + key + apply_mask(data, key)


def write_text(ws: ClientConnection, text: str) -> None:
    """Write ``text`` as one frame now; only when :func:`can_send_now` says so (else await ``ws.send``)."""
    try:
        ws.transport.write(frame_text(text))
    except Exception:
        ws.transport.abort()  # as `send` does on a failed write: the reader sees the connection close
        raise
