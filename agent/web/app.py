"""The FastAPI application: wires settings, storage and the call registry to the routes of `agent.web`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from agent.calls.context import CallDeps
from agent.calls.outcome import Outcome
from agent.calls.registry import CallRegistry
from agent.campaigns.routes import operator_api, outbound_router
from agent.carrier.rest import VobizClient
from agent.config import Settings
from agent.console import LazyConsole
from agent.model.connection import ModelConnector
from agent.observability.health import ModelReachability
from agent.observability.metrics import Metrics
from agent.prompts.library import PromptLibrary
from agent.storage import CallStore, Database, RecordWriter, start_retention_sweeper
from agent.storage.call_state import CallStates
from agent.web import health, stream_route, webhooks
from agent.web.state import AppState
from agent.web.tool_client import tool_client

if TYPE_CHECKING:
    from agent.observability.tracing import CallTracer

log = logging.getLogger("agent.web.app")


async def _outcome_not_shared(call_id: str, outcome: Outcome) -> None:
    """Until the registry takes over this hook, outcomes stay with their call."""


def _otlp_tracer(settings: Settings) -> CallTracer | None:
    """OpenTelemetry is loaded only when traces go somewhere."""
    if not settings.otel_endpoint:
        return None
    from agent.observability.tracing import CallTracer

    return CallTracer.otlp(settings.otel_endpoint)


def create_app(
    settings: Settings,
    *,
    connector: ModelConnector | None = None,
    vobiz: VobizClient | None = None,
    tracer: CallTracer | None = None,
    embedded_engine: bool = False,
) -> FastAPI:
    """`embedded_engine` runs the local realtime engine in-process: no OpenAI key needed.

    Raises ConfigError when webhooks would be open without AGENT_INSECURE_WEBHOOKS=true."""
    webhooks.check_webhook_auth(settings)
    if embedded_engine:  # the offline engine costs nothing: its calls must not show gpt-realtime prices
        settings = settings.model_copy(update={name: 0.0 for name in settings.price_fields})
    metrics = Metrics()
    connector = connector or ModelConnector(settings)
    connector.on_off_contract = lambda outcome: metrics.model_events_off_contract.labels(outcome).inc()
    if vobiz is None and settings.vobiz_rest_enabled:
        assert settings.vobiz_auth_id and settings.vobiz_auth_token
        vobiz = VobizClient(
            settings.vobiz_auth_id, settings.vobiz_auth_token.get_secret_value(), settings.vobiz_api_url
        )
    http = tool_client({"User-Agent": "vobiz-voice-agent"})  # the prompts' HTTP tools; set up on first use
    database = Database(settings.database_url)
    call_store = CallStore(database)
    writer = RecordWriter(
        call_store, spool_dir=settings.spool_dir, metrics=metrics, save_timeout_s=settings.record_save_timeout_s
    )
    deps = CallDeps(
        settings=settings,
        connector=connector,
        metrics=metrics,
        vobiz=vobiz,
        http=http,
        records=writer,
        tracer=tracer or _otlp_tracer(settings),
        transfer_url=lambda call_id: f"{settings.public_url}/vobiz/transfer?call={call_id}",
        on_outcome=_outcome_not_shared,
    )
    # Only replicas share calls, and replicas share PostgreSQL: one SQLite process keeps them in memory.
    call_states = CallStates(database) if database.dialect == "postgresql" else None
    registry = CallRegistry(deps, call_states)
    prompts = PromptLibrary(settings.prompts_dir, settings.default_prompt)
    probe = ModelReachability(connector.base_url, settings.readiness_probe_interval_s)
    state = AppState(settings, metrics, registry, connector, vobiz, prompts, probe, call_store, writer)
    # Fail at start-up, not on the first call, when the default prompt is unusable.
    prompts.get(settings.default_prompt)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = None
        if embedded_engine:
            from agent.engine.engine import EngineOptions, build_engine

            engine = build_engine(
                EngineOptions(prompts_dir=settings.prompts_dir, default_prompt=settings.default_prompt)
            )
            await engine.start()
            connector.retarget(engine.http_base_url)
            probe.retarget(engine.http_base_url)
            log.warning(
                "OPENAI_API_KEY is not set: calls are answered by the embedded offline realtime engine at %s "
                "(eSpeak NG voice, PocketSphinx recognition, the prompt's scripted dialogue). "
                "Set OPENAI_API_KEY to use OpenAI.",
                engine.ws_base_url,
            )
        await database.migrate()
        writer.start()  # also replays, in the background, records spooled while the database was out
        # Retention runs even with recording off: call records expire, and so do recordings made before.
        sweeper = start_retention_sweeper(
            call_store, settings.recordings_dir, settings.recording_retention_days, states=call_states
        )
        yield
        await registry.shutdown()
        sweeper.cancel()  # not awaited: a pass stuck on a hung database must not hold up shutdown
        await writer.aclose()  # saves what it can in time, spools the rest
        await database.aclose()
        if deps.tracer is not None:
            await asyncio.to_thread(deps.tracer.shutdown)  # flushes the last spans
        if engine is not None:
            await engine.stop()
        if vobiz is not None:
            await vobiz.aclose()
        await http.aclose()
        await connector.aclose()

    app = FastAPI(title="Vobiz voice agent", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.agent = state
    app.include_router(webhooks.router)
    app.add_middleware(webhooks.StreamStatusFastPath)  # the per-checkpoint callbacks skip the framework
    app.include_router(stream_route.router)
    app.include_router(health.router)
    app.router.routes.append(LazyConsole())  # the console's pages load on its first request
    app.include_router(outbound_router())  # outbound callbacks, the campaign dialler
    app.router.routes.append(operator_api())  # POST /calls, /campaigns, /dnc: loaded on their first request
    if settings.fault_injection:
        from agent.testkit import faults

        log.warning("fault injection is on: POST /debug/stall blocks the event loop")
        app.include_router(faults.router)

    return app
