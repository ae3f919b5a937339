"""Writing a WebSocket text message without a coroutine, when `send` would not wait.

Caller audio (the agent to the model) and a load test's carrier (to the agent) send 50 messages a second per call,
and websockets' `send` spends as much on its async context manager as on the write. When the socket is open, not
paused by flow control and no fragmented message is going out, `send` would frame the message and write it at once:
`write_now` does just that, through websockets' own framing (masking, extensions); otherwise await `send`.
Written for websockets 15's asyncio connection (the project pins it).
"""

from __future__ import annotations

from websockets.asyncio.connection import Connection
from websockets.protocol import State


def can_send_now(ws: Connection) -> bool:
    return (
        ws.protocol.state is State.OPEN
        and not ws.paused
        and ws.fragmented_send_waiter is None
        and not ws.transport.is_closing()
    )


def write_now(ws: Connection, text: str) -> None:
    """Only when `can_send_now`: the message is framed and written before this returns."""
    ws.protocol.send_text(text.encode())
    try:
        ws.send_data()
    except Exception as exc:
        ws.transport.abort()  # as `send` does on a failed write: the reader sees the connection close
        raise OSError(f"websocket write failed: {exc!r}") from exc
