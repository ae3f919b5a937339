"""Routes whose code is loaded on the first request under their path prefixes.

Pages and APIs that an operator uses now and then (the console, the outbound-calls API) cost every replica their
modules, request models and route tables from start-up on; mounted through `LazyRoutes`, a replica that only
takes calls never loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.routing import BaseRoute, Match, Router
from starlette.types import Receive, Scope, Send


class LazyRoutes(BaseRoute):
    """Matches each of `prefixes` and everything below it; builds its router with `build` on first use and hands
    it the request as the app's own router would have (same scope, same exception handlers)."""

    def __init__(self, prefixes: tuple[str, ...], build: Callable[[], Router]) -> None:
        self.prefixes = prefixes
        self._build = build
        self._router: Router | None = None

    @property
    def loaded(self) -> bool:
        return self._router is not None

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if any(path == prefix or path.startswith(prefix + "/") for prefix in self.prefixes):
                return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        """Pages link by path; a name asked for (tools, tests) loads the routes to resolve it."""
        return self._load().url_path_for(name, **path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._load()(scope, receive, send)

    def _load(self) -> Router:
        if self._router is None:
            self._router = self._build()
        return self._router
