"""Run an ASGI app with uvicorn on a loopback socket that is listening before the server starts.

Binding first means the port is known up front (PUBLIC_URL needs it) and clients can connect at once: their
connections wait in the backlog until uvicorn accepts, so nobody has to sleep until the server is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import uvicorn


def listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def serve_app(
    make_app: Callable[[str], Any], host: str = "127.0.0.1", ready_path: str | None = "/healthz"
) -> AsyncIterator[str]:
    """Serve `make_app(base_url)` and yield the base URL once `ready_path` answers (start-up is done)."""
    sock = listening_socket(host)
    base_url = f"http://{host}:{sock.getsockname()[1]}"
    config = uvicorn.Config(
        make_app(base_url), lifespan="on", log_level="warning", log_config=None, ws_ping_interval=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        if ready_path is not None:
            async with httpx.AsyncClient() as http:
                (await http.get(base_url + ready_path, timeout=30)).raise_for_status()
        yield base_url
    finally:
        server.should_exit = True
        await task
        sock.close()
