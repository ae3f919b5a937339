"""A whole call path on loopback: the local realtime engine, the agent under uvicorn, a simulated carrier."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from agent.app import create_app
from agent.carrier.rest import VobizClient
from agent.config import Settings
from agent.simulation.carrier import CarrierSim
from agent.simulation.local_server import serve_app
from agent.simulation.realtime_server import RealtimeServer, RealtimeSimConfig
from agent.state import AppState

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stack:
    engine: RealtimeServer
    app: FastAPI
    base_url: str
    settings: Settings
    carrier: CarrierSim

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.agent
        return state

    def metric(self, name: str, **labels: str) -> float:
        return self.state.metrics.value(name, **labels)


@contextlib.asynccontextmanager
async def running_stack(
    engine_config: RealtimeSimConfig | None = None, vobiz: VobizClient | None = None, **overrides: Any
) -> AsyncIterator[Stack]:
    engine = RealtimeServer(engine_config or RealtimeSimConfig())
    await engine.start()
    holder: dict[str, Any] = {}
    workdir = tempfile.TemporaryDirectory(prefix="agent-test-")

    def make_app(base_url: str) -> FastAPI:
        values: dict[str, Any] = {
            "openai_api_key": "sk-test-not-a-real-key",
            "openai_base_url": engine.http_base_url,
            "public_url": base_url,
            "prompts_dir": ROOT / "prompts",
            "stream_secret": "test-stream-secret",
            "vobiz_auth_token": None,
            "insecure_webhooks": True,  # loopback test agent; tests that check signatures set vobiz_auth_token
            "vobiz_auth_id": None,
            "transfer_number": None,
            "database_url": f"sqlite+aiosqlite:///{workdir.name}/agent.db",
            "recordings_dir": Path(workdir.name) / "recordings",
            "spool_dir": Path(workdir.name) / "spool",
        }
        settings = Settings(**(values | overrides))
        holder["settings"] = settings
        holder["app"] = app = create_app(settings, vobiz=vobiz)
        return app

    try:
        async with serve_app(make_app) as base_url:
            carrier = CarrierSim(base_url)
            try:
                yield Stack(engine, holder["app"], base_url, holder["settings"], carrier)
            finally:
                await carrier.aclose()
    finally:
        await engine.stop()
        workdir.cleanup()


def start_message(call_id: str, stream_id: str) -> str:
    """Vobiz's `start` for a μ-law stream, for tests that open the stream socket by hand."""
    start = {
        "event": "start",
        "sequenceNumber": 0,
        "start": {
            "callId": call_id,
            "streamId": stream_id,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
        },
    }
    return json.dumps(start)
