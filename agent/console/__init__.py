"""The operator web console: live calls, call history, prompts, summaries and eval-run comparisons.

Server-rendered pages (jinja2, autoescaped) with inline SVG charts and a few lines of JavaScript for the live
view. Everything lives under `/console` and is off (404) unless `AGENT_OPERATOR_TOKEN` is set.

The app mounts `LazyConsole`, which loads the pages (routes, templates, charts, the campaign pages) on the first
request under `/console`: a replica that only takes calls never does.
"""

from __future__ import annotations

from fastapi import APIRouter

from agent.web.lazy_routes import LazyRoutes

PREFIX = "/console"


def _console() -> APIRouter:
    from agent.console.routes import console_router

    router = APIRouter()
    router.include_router(console_router())
    return router


class LazyConsole(LazyRoutes):
    """`/console` and everything below it, loaded on its first request."""

    def __init__(self) -> None:
        super().__init__((PREFIX,), _console)
