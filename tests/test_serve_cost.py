"""What a plain `serve` costs: the modules it leaves out, and the model socket it opens without the openai SDK."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.server import ServerConnection

from agent.config import Settings
from agent.console import LazyConsole
from agent.model.connection import ModelConnector
from agent.web.app import create_app
from agent.web.lazy_routes import LazyRoutes
from agent.web.tool_client import DeferredTransport, tool_client
from tests.agent_process import agent_process, clean_env
from tests.harness import stream_url

NOT_IN_SERVE = (
    "openai",
    "alembic",
    "opentelemetry.sdk",
    "agent.observability.tracing",
    "agent.console.routes",
    "agent.campaigns.api",
    "pydantic.v1",
    "sqlalchemy.orm",
    "sqlalchemy.dialects.postgresql",
    "rich",
    "pygments",
)
"""Loaded only when used: the SDK (strict event types, opt-in), migrations (schema behind), tracing (an endpoint),
the console's pages and the operator API (their first request; with them, FastAPI's check for pydantic.v1 request
models); never: the ORM (Core statements only, ~6 MB), on SQLite (the default
database) the PostgreSQL dialect (~2 MB), and httpx's command-line client (rich, pygments), which a dev
environment would otherwise load."""


def test_serve_import_path_leaves_out_the_sdk_migrations_and_tracing() -> None:
    code = textwrap.dedent(
        """
        import json, sys
        import agent.cli, agent.web.app  # in serve's order: `voice-agent serve` starts in agent.cli
        from agent.config import load_settings

        settings = load_settings()
        app = agent.web.app.create_app(settings)
        print(json.dumps(sorted(sys.modules)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(OPENAI_API_KEY="sk-test-not-used", OPENAI_BASE_URL="http://127.0.0.1:9/v1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    leaked = [m for m in loaded if any(m == name or m.startswith(name + ".") for name in NOT_IN_SERVE)]
    assert leaked == []


def test_the_async_engine_comes_without_the_orm_and_the_full_package_still_loads() -> None:
    """`agent.storage.aio` holds back `sqlalchemy.ext.asyncio`'s `__init__` (which imports the ORM session); asked
    for anything else, the package completes itself, with the very same engine classes."""
    code = textwrap.dedent(
        """
        import json, sys
        from agent.storage.aio import AsyncEngine, create_async_engine
        engine = create_async_engine("sqlite+aiosqlite://")
        before = sorted(m for m in sys.modules if m.startswith("sqlalchemy.orm"))
        from sqlalchemy.ext.asyncio import AsyncEngine as Full, AsyncSession, async_sessionmaker
        import sqlalchemy.ext.asyncio as package
        sessions = async_sessionmaker(engine)
        print(json.dumps([before, Full is AsyncEngine, isinstance(engine, Full), sessions.class_ is AsyncSession,
                          package.create_async_engine is create_async_engine, "sqlalchemy.orm" in sys.modules]))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [[], True, True, True, True, True]


async def test_model_socket_carries_the_sdk_url_and_bearer_key() -> None:
    seen: dict[str, Any] = {}

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen["path"] = ws.request.path
        seen["headers"] = dict(ws.request.headers.raw_items())
        await ws.send(json.dumps({"type": "session.created", "session": {}}))
        await ws.wait_closed()

    async with websockets.serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        settings = Settings(openai_api_key="sk-abc", openai_base_url=f"http://127.0.0.1:{port}/v1")
        socket = await ModelConnector(settings).connect("gpt-realtime")
        events = socket.events()
        first = await anext(events)
        await socket.close()
    assert first.type == "session.created"
    assert seen["path"] == "/v1/realtime?model=gpt-realtime"
    assert seen["headers"]["Authorization"] == "Bearer sk-abc"
    assert "OpenAI-Beta" not in seen["headers"]  # GA only


def _operator_settings(tmp_path: Path, token: str) -> Settings:
    return Settings(
        openai_api_key="sk-test-not-used",
        operator_token=token,
        insecure_webhooks=True,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/agent.db",
    )


async def test_the_operator_api_loads_on_its_first_request(tmp_path: Path) -> None:
    token = "operator-token-for-the-lazy-operator-api"
    app = create_app(_operator_settings(tmp_path, token))
    (api,) = [r for r in app.router.routes if isinstance(r, LazyRoutes) and "/campaigns" in r.prefixes]
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent")
    async with app.router.lifespan_context(app), client as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/campaignsX")).status_code == 404
        assert not api.loaded
        assert (await http.get("/campaigns")).status_code == 303  # still guarded: to the login form
        assert api.loaded
        bearer = {"Authorization": f"Bearer {token}"}
        assert (await http.get("/campaigns", headers=bearer)).json() == []
        added = await http.post("/dnc", json={"number": "+15550001111"}, headers=bearer)
        assert added.status_code == 200 and added.json() == {"added": 1}
        bad = await http.post("/calls", json={"to": "1"}, headers=bearer)
        assert bad.status_code == 422  # the request model validates as before


async def test_the_console_loads_on_its_first_request(tmp_path: Path) -> None:
    token = "operator-token-for-the-lazy-console"
    app = create_app(_operator_settings(tmp_path, token))
    (console,) = [route for route in app.router.routes if isinstance(route, LazyConsole)]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent") as http:
        assert (await http.get("/healthz")).status_code == 200
        assert not console.loaded
        login = await http.get("/console/login")
        assert login.status_code == 200 and "<form" in login.text
        assert console.loaded
        assert (await http.get("/console/no-such-page")).status_code in (401, 403, 404)
        assert (await http.get("/consoleX")).status_code == 404


async def test_the_http_tool_client_sets_up_tls_and_pooling_on_its_first_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plain client builds its TLS context (certifi's CA bundle, ~3 MB) when made; the tools' client when first
    used, then behaves as a plain one: its headers sent, redirects not followed, the answer streamed."""
    contexts: list[ssl.SSLContext] = []
    real = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        contexts.append(real(*args, **kwargs))
        return contexts[-1]

    monkeypatch.setattr(ssl, "create_default_context", counted)
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 5\r\n\r\nmoved")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        client = tool_client({"User-Agent": "vobiz-voice-agent"})
        transport = client._transport  # what tool_client put there
        assert isinstance(transport, DeferredTransport)
        assert contexts == [] and not transport.started
        async with client.stream("GET", f"http://127.0.0.1:{port}/orders", headers={"X-Call-Id": "c1"}) as reply:
            body = await reply.aread()
        assert (reply.status_code, body) == (302, b"moved")  # not followed
        assert len(contexts) == 1 and transport.started
        head = seen[0].decode().lower()
        assert head.startswith("get /orders ") and "user-agent: vobiz-voice-agent" in head and "x-call-id: c1" in head
        await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await transport.handle_async_request(httpx.Request("GET", f"http://127.0.0.1:{port}/"))


async def test_the_stream_socket_declines_compression() -> None:
    """A carrier that offers permessage-deflate gets plain frames: base64 μ-law hardly compresses, and every call
    would spend CPU on each 20 ms frame and keep two zlib states (hundreds of KB) for its socket. The simulated
    carrier offers none, so only the served process itself shows this."""
    form = {"CallUUID": "call-deflate-1", "From": "+911", "To": "+912", "Direction": "inbound", "Event": "StartApp"}
    async with agent_process() as agent, httpx.AsyncClient() as http:
        answer = await http.post(f"{agent.base_url}/vobiz/answer", data=form)
        async with websockets.connect(stream_url(answer.text), compression="deflate") as ws:
            assert ws.protocol.extensions == []
