"""A whole call path on loopback: the local realtime engine, the agent under uvicorn, a simulated carrier."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from agent.carrier.rest import VobizClient
from agent.config import Settings
from agent.engine import RealtimeServer, RealtimeSimConfig
from agent.testkit.carrier import CarrierSim, SimCall
from agent.testkit.local_server import serve_app
from agent.web.app import create_app
from agent.web.state import AppState

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


class VobizTransferApi:
    """Vobiz's REST transfer API, faked for the agent's VobizClient: it records each request and, as Vobiz does,
    ends the stream of `call` by fetching the transfer URL for the call's next XML."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.call: SimCall | None = None
        self._transfers: list[asyncio.Task[None]] = []

    def client(self) -> VobizClient:
        return VobizClient("MA_TEST", "tok", "https://api.vobiz.test/api/v1", transport=httpx.MockTransport(self._api))

    def _api(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert self.call is not None, "set VobizTransferApi.call to the call being transferred"
        url = json.loads(request.content)["aleg_url"]
        self._transfers.append(asyncio.get_running_loop().create_task(self.call.transfer_to(url)))
        return httpx.Response(202, json={"api_id": "a", "message": "call transferred", "call_uuid": "x"})

    async def aclose(self) -> None:
        await asyncio.gather(*self._transfers, return_exceptions=True)


def replica_settings(
    engine_url: str, public_url: str, database_url: str, tmp_path: Path, index: int, token: str, **extra: Any
) -> Settings:
    """One of several replicas behind one public URL: the same database, stream secret and Vobiz account, a
    recordings and spool folder of its own."""
    values: dict[str, Any] = {
        "openai_api_key": "sk-test-not-a-real-key",
        "openai_base_url": engine_url,
        "public_url": public_url,
        "prompts_dir": ROOT / "prompts",
        "stream_secret": "one-secret-for-all-replicas",
        "vobiz_auth_token": token,
        "vobiz_auth_id": "MA_TEST",
        "database_url": database_url,
        "recordings_dir": tmp_path / f"recordings-{index}",
        "spool_dir": tmp_path / f"spool-{index}",
    }
    return Settings(**(values | extra))


def stream_url(xml_text: str) -> str:
    """The stream URL in an answer's `<Stream>`, for tests that open the stream socket by hand."""
    root = ET.fromstring(xml_text.split("?>", 1)[1])
    stream = root.find("Stream")
    assert stream is not None and stream.text
    return stream.text.strip()


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
