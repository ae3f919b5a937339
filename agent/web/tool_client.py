"""The HTTP client for the prompts' HTTP tools, whose connection machinery is built on its first request.

An `httpx.AsyncClient` builds its transport, and with it a TLS context holding certifi's CA bundle, when it is
created: ~3 MB that every replica would keep even when no prompt has an HTTP tool (the default prompt has none).
Here the client's transport is a stand-in that creates the real client on the first request and hands every
request to it, so proxies from the environment, TLS and pooling are exactly those of a plain client.
"""

from __future__ import annotations

from typing import Any

import httpx


class DeferredTransport(httpx.AsyncBaseTransport):
    """Sends through a plain client made with `options` on the first request."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    @property
    def started(self) -> bool:
        return self._client is not None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the HTTP tool client is closed")
        if self._client is None:
            self._client = httpx.AsyncClient(**self._options)
        return await self._client.send(request, stream=True)

    async def aclose(self) -> None:
        self._closed = True
        if self._client is not None:
            await self._client.aclose()


def tool_client(headers: dict[str, str]) -> httpx.AsyncClient:
    """A client that never follows redirects (a tool's answer is the service's own), built on first use."""
    transport = DeferredTransport(follow_redirects=False)
    return httpx.AsyncClient(transport=transport, follow_redirects=False, headers=headers)
