"""HTTP side of outbound calls: the outbound Vobiz callbacks (hangup, asynchronous machine detection), the
dialler's lifetime inside the service, and the mount of the operator API (`agent.campaigns.api`).

Mount with `app.include_router(outbound_router())`: the router's lifespan starts this replica's dialler after the
application's own start-up (the database is migrated by then) and stops it first on shutdown; callbacks are
verified like every Vobiz webhook. `operator_api()` goes into the app's routes as it is: the API loads on its
first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request, Response
from sqlalchemy.exc import SQLAlchemyError

from agent.campaigns import hooks
from agent.campaigns.dialler import Dialler
from agent.campaigns.outcomes import classify, duration_of, machine_verdict
from agent.campaigns.pending import PendingResults
from agent.campaigns.store import CampaignStore
from agent.campaigns.web_state import store_of, wake_dialler
from agent.console import auth
from agent.console.auth import app_state
from agent.protocol.vobiz import xml
from agent.web import webhooks
from agent.web.lazy_routes import LazyRoutes
from agent.web.state import AppState

log = logging.getLogger("agent.campaigns")


def outbound_router() -> APIRouter:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: AppState = app.state.agent
        dialler = None
        if state.settings.campaign_dialler and state.vobiz is not None:
            dialler = Dialler(CampaignStore(state.store.db), state.vobiz, state.settings, state.prompts)
            dialler.should_claim = lambda: not state.draining  # SIGTERM: no new calls from here
            dialler.start()
        app.state.campaign_dialler = dialler
        replay = asyncio.create_task(_replay_pending(state), name="outbound-results-replay")
        try:
            yield
        finally:
            replay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replay
            if dialler is not None:
                await dialler.stop()

    router = APIRouter(include_in_schema=False, lifespan=lifespan)
    callbacks = APIRouter(prefix="/vobiz", route_class=webhooks._WebhookRoute)

    # --- Vobiz callbacks ----------------------------------------------------------------------------------

    @callbacks.api_route("/outbound/hangup", methods=["GET", "POST"])
    async def outbound_hangup(request: Request) -> Response:
        """hangup_url of every outbound call: settles its attempt (retry or final outcome) and, like the plain
        hangup webhook, ends the call here if its stream is here."""
        state = app_state(request)
        params = await webhooks._params(request, "outbound_hangup")
        call_id = webhooks._call_id(params)
        state.registry.hangup(call_id, "caller_hangup")
        webhooks._log_event(state, call_id, "hangup_webhook", params)
        store = store_of(request)
        attempt_id = request.query_params.get("attempt") or None
        try:
            attempt = await store.attempt(attempt_id) if attempt_id else None
        except SQLAlchemyError:
            attempt = None  # the database is down: settled from the callback alone, below or from the spool
        # Answered? Anything that says so counts, on whichever replica the answer landed: this replica's memory,
        # Vobiz's AnswerTime, the attempt's progress note, the answer context every replica shares.
        seen_here = hooks.recent_answer(call_id)
        answered_by = (attempt["answered_by"] if attempt is not None else None) or seen_here
        answered = seen_here is not None or bool(params.get("AnswerTime", "").strip()) or answered_by is not None
        answered = answered or (attempt is not None and attempt["state"] == "answered")
        if not answered:
            stored = await state.registry.stored(call_id)
            answered = stored is not None and stored.answer is not None
        result = classify(params, answered=answered)
        if result == "person" and answered_by == "machine":
            result = "machine"
        cause, duration = params.get("HangupCause", ""), duration_of(params)
        try:
            settled = await store.settle(attempt_id, call_id, result, cause=cause, duration_s=duration)
        except SQLAlchemyError as exc:
            # The result is this callback's alone: kept on disk and settled once the database is back.
            path = PendingResults(state.settings.spool_dir).put(attempt_id, call_id, result, cause, duration)
            log.error("outbound call %s: database unavailable (%r); result %s kept in %s", call_id, exc, result, path)
            settled = None
        if settled is not None:
            log.info("outbound call %s: %s%s", call_id, result, " (retry scheduled)" if settled.retry_at else "")
        wake_dialler(request)
        return Response(content=xml.empty(), media_type=xml.XML_MEDIA_TYPE)

    @callbacks.api_route("/outbound/machine", methods=["GET", "POST"])
    async def outbound_machine(request: Request) -> Response:
        """machine_detection_url (asynchronous detection): the verdict arrives while the call may be talking."""
        state = app_state(request)
        params = await webhooks._params(request, "outbound_machine")
        call_id = webhooks._call_id(params)
        verdict = machine_verdict(params)
        webhooks._log_event(state, call_id, "machine_detection", params)
        attempt_id = request.query_params.get("attempt") or None
        if verdict is not None:
            attempt = await store_of(request).attempt(attempt_id) if attempt_id else None
            prompt = str(attempt["prompt"]) if attempt is not None else None
            await hooks.machine_detected(state, call_id, attempt_id, verdict, prompt)
        return Response(content=xml.empty(), media_type=xml.XML_MEDIA_TYPE)

    router.include_router(callbacks)
    return router


def operator_api(login_throttle: auth.LoginThrottle | None = None) -> LazyRoutes:
    """`/calls`, `/campaigns`, `/dnc` (`agent.campaigns.api`), loaded on their first request."""
    throttle = login_throttle or auth.LoginThrottle()

    def build() -> APIRouter:
        from agent.campaigns.api import api_router

        router = APIRouter()
        router.include_router(api_router(throttle))
        return router

    return LazyRoutes(("/calls", "/campaigns", "/dnc"), build)


async def _replay_pending(state: AppState, every_s: float = 5.0) -> None:
    """Settle the attempt results this replica spooled while the database was down, as soon as it is back."""
    pending = PendingResults(state.settings.spool_dir)
    store = CampaignStore(state.store.db)
    while True:
        if pending.waiting():
            try:
                if settled := await pending.replay(store):
                    log.warning("settled %d outbound result(s) kept while the database was down", settled)
            except SQLAlchemyError as exc:
                log.warning("outbound results still waiting for the database: %r", exc)
        await asyncio.sleep(every_s)
