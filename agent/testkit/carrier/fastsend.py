"""The carrier's messages written without a coroutine when websockets' `send` would not wait (`agent.ws_send`):
a load test sends 50 caller frames a second per call, and `send`'s async context manager cost more than the write.
"""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection

from agent.ws_send import can_send_now as _writable
from agent.ws_send import write_now as write_text

__all__ = ["can_send_now", "write_text"]


def can_send_now(ws: object) -> bool:
    """A plain client socket (not a test's wrapper that adds jitter or echo) that `send` would write to at once."""
    return type(ws) is ClientConnection and _writable(ws)
