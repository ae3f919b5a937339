"""Liveness, readiness and Prometheus metrics: what an orchestrator and a scraper ask of every replica."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.web.state import AppState

router = APIRouter()


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.agent
    return state


@router.get("/healthz", response_model=None)  # no response model: nothing to validate, nothing to build
async def healthz() -> dict[str, str]:
    """Alive: the process answers. Restart it only when this fails."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Ready for new calls: not draining, and the model endpoint is reachable."""
    state = _state(request)
    model = await state.model_probe.check()
    ready = model.ok and not state.draining
    body = {
        "ready": ready,
        "draining": state.draining,
        "model": model.detail,
        "live_calls": len(state.registry.live),
        "max_calls": state.settings.max_concurrent_calls,
    }
    return Response(json.dumps(body), status_code=200 if ready else 503, media_type="application/json")


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    return Response(generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
