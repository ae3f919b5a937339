"""The operator web console: live calls, call history, prompts, summaries and eval-run comparisons.

Server-rendered pages (jinja2, autoescaped) with inline SVG charts and a few lines of JavaScript for the live
view. Everything lives under `/console` and is off (404) unless `AGENT_OPERATOR_TOKEN` is set.

The app mounts `LazyConsole`, which loads the pages (routes, templates, charts, the campaign pages) on the first
request under `/console`: a replica that only takes calls never does.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute, Match, Router
from starlette.types import Receive, Scope, Send

PREFIX = "/console"


class LazyConsole(BaseRoute):
    """Matches `/console` and everything below it; builds `console_router()` on first use and hands it the
    request as the app's own router would have (same scope, same exception handlers)."""

    def __init__(self) -> None:
        self._router: Router | None = None

    @property
    def loaded(self) -> bool:
        return self._router is not None

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if path == PREFIX or path.startswith(PREFIX + "/"):
                return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        """The console's pages link by path; a name asked for (tools, tests) loads the console to resolve it."""
        return self._load().url_path_for(name, **path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._load()(scope, receive, send)

    def _load(self) -> Router:
        if self._router is None:
            from fastapi import APIRouter

            from agent.console.routes import console_router

            router = APIRouter()
            router.include_router(console_router())
            self._router = router
        return self._router
