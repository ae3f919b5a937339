"""Reading the stream socket frame by frame, with the close code always known.

Starlette's `receive_text` raises a bare RuntimeError once a send has failed on the same socket, which hides how
the socket closed; the call then cannot tell a caller's hang-up (1000) from a network drop that Vobiz will retry.
Reading the raw ASGI messages keeps the code whatever the order of the failures.
"""

from __future__ import annotations

from fastapi import WebSocket

NORMAL_CLOSE = 1000  # Vobiz's end of a call; anything else (1005/1006: no close frame) may be a network drop
SERVER_RESTART = 1012  # what uvicorn reports while this server shuts down: nobody will reconnect to it


class CarrierClosed(Exception):
    """The stream socket closed; `code` is None when the closing message was already consumed."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"stream socket closed (code {code})")
        self.code = code

    @property
    def may_come_back(self) -> bool:
        """Not a clean end: with <Stream maxRetries> Vobiz reconnects a dropped stream with a new streamId."""
        return self.code is not None and self.code not in (NORMAL_CLOSE, SERVER_RESTART)


async def receive_text(ws: WebSocket) -> str | None:
    """The next text frame, or None for a binary one (Vobiz sends only text); CarrierClosed at the end."""
    try:
        message = await ws.receive()
    except RuntimeError:  # the disconnect was already received (and acted on) elsewhere
        raise CarrierClosed(None) from None
    if message["type"] == "websocket.disconnect":
        raise CarrierClosed(int(message.get("code") or 1005))
    text: str | None = message.get("text")
    return text
