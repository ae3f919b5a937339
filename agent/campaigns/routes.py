"""HTTP side of outbound calls: the operator API (`POST /calls`, `/campaigns`, `/dnc`), the outbound Vobiz
callbacks (hangup, asynchronous machine detection), and the dialler's lifetime inside the service.

Mount with `app.include_router(outbound_router())`: the router's lifespan starts this replica's dialler after the
application's own start-up (the database is migrated by then) and stops it first on shutdown. The API needs the
operator token (as the console does; 404 while none is set); callbacks are verified like every Vobiz webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from agent.campaigns import hooks
from agent.campaigns.dialler import DialError, Dialler, place_one
from agent.campaigns.outcomes import classify, duration_of, machine_verdict
from agent.campaigns.pending import PendingResults
from agent.campaigns.results import number_results, to_csv
from agent.campaigns.store import RETRYABLE, CampaignError, CampaignSpec, CampaignStore, parse_csv
from agent.console import auth
from agent.console.auth import app_state
from agent.protocol.vobiz import xml
from agent.web import webhooks
from agent.web.state import AppState

log = logging.getLogger("agent.campaigns")


class CallRequest(BaseModel):
    to: str = Field(min_length=3, max_length=40)
    prompt: str | None = Field(default=None, max_length=64)
    variables: dict[str, str] = Field(default_factory=dict)
    from_: str | None = Field(default=None, alias="from", max_length=40)


class CampaignRequest(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    prompt: str | None = Field(default=None, max_length=64)
    csv: str = Field(min_length=1, max_length=20_000_000)
    from_: str | None = Field(default=None, alias="from", max_length=40)
    concurrency: int = 5
    rate_per_min: float = 0.0
    window: str = "09:00-20:00"
    timezone: str | None = None
    max_attempts: int = 3
    retry_delay_s: float = 600.0
    retry_on: list[str] = Field(default_factory=lambda: list(RETRYABLE))


def store_of(request: Request) -> CampaignStore:
    return CampaignStore(app_state(request).store.db)


def wake_dialler(request: Request) -> None:
    """A campaign changed: this replica's dialler (if it runs one) looks at once instead of at its next poll."""
    dialler: Dialler | None = getattr(request.app.state, "campaign_dialler", None)
    if dialler is not None:
        dialler.wake()


async def create_campaign(state: AppState, body: CampaignRequest) -> str:
    """Validate and store a campaign (shared by the API and the console's form); raises CampaignError."""
    prompt = body.prompt or state.settings.default_prompt
    state.prompts.get(prompt)  # PromptError for an unknown or broken prompt
    sender = body.from_ or state.settings.outbound_from_number
    if not sender:
        raise CampaignError("no caller ID: give a from number or set AGENT_OUTBOUND_FROM_NUMBER")
    timezone = body.timezone or state.settings.campaign_timezone
    spec = CampaignSpec(
        name=body.name,
        prompt=prompt,
        from_number=sender,
        concurrency=body.concurrency,
        rate_per_min=body.rate_per_min,
        window=body.window,
        timezone=timezone,
        max_attempts=body.max_attempts,
        retry_delay_s=body.retry_delay_s,
        retry_on=tuple(body.retry_on),
    )
    spec.check()
    rows = parse_csv(body.csv)
    return await CampaignStore(state.store.db).create(spec, rows)


def _json(body: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, headers={"Cache-Control": "no-store"})


def outbound_router(login_throttle: auth.LoginThrottle | None = None) -> APIRouter:
    throttle = login_throttle or auth.LoginThrottle()

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
    api = APIRouter(dependencies=[Depends(auth.operator_guard(throttle))])
    callbacks = APIRouter(prefix="/vobiz", route_class=webhooks._WebhookRoute)

    # --- one call -----------------------------------------------------------------------------------------

    @api.post("/calls")
    async def dial(request: Request, body: CallRequest) -> Response:
        state = app_state(request)
        if state.vobiz is None:
            raise HTTPException(status_code=503, detail="outbound calls need VOBIZ_AUTH_ID and VOBIZ_AUTH_TOKEN")
        try:
            placed = await place_one(
                store_of(request),
                state.vobiz,
                state.settings,
                state.prompts,
                body.to,
                body.prompt or state.settings.default_prompt,
                body.variables,
                body.from_,
            )
        except DialError as exc:
            return _json({"detail": str(exc)}, exc.status)
        return _json({"attempt_id": placed.attempt_id, "call_id": placed.call_id}, 201)

    @api.get("/calls/{attempt_id}")
    async def call_status(request: Request, attempt_id: str) -> Response:
        attempt = await store_of(request).attempt(attempt_id)
        if attempt is None:
            raise HTTPException(status_code=404)
        return _json(attempt)

    # --- campaigns ----------------------------------------------------------------------------------------

    @api.get("/campaigns")
    async def list_campaigns(request: Request) -> Response:
        return _json(await store_of(request).all_campaigns())

    @api.post("/campaigns")
    async def new_campaign(request: Request, body: CampaignRequest) -> Response:
        try:
            campaign_id = await create_campaign(app_state(request), body)
        except (CampaignError, ValueError) as exc:
            return _json({"detail": str(exc)}, 400)
        wake_dialler(request)
        return _json({"id": campaign_id}, 201)

    @api.get("/campaigns/{ref}")
    async def campaign_progress(request: Request, ref: str) -> Response:
        try:
            progress = await store_of(request).progress(ref)
        except CampaignError:
            raise HTTPException(status_code=404) from None
        body = {"campaign": progress.campaign, "states": progress.states, "outcomes": progress.outcomes}
        return _json(body | {"attempts": progress.attempts})

    @api.post("/campaigns/{ref}/{action}")
    async def campaign_action(request: Request, ref: str, action: str) -> Response:
        if action not in ("pause", "resume", "stop"):
            raise HTTPException(status_code=404)
        try:
            state = await store_of(request).set_state(ref, action)
        except CampaignError as exc:
            return _json({"detail": str(exc)}, 409)
        wake_dialler(request)
        return _json({"state": state})

    @api.get("/campaigns/{ref}/export.csv")
    async def campaign_export(request: Request, ref: str) -> Response:
        return await export_response(request, ref)

    # --- do not call --------------------------------------------------------------------------------------

    @api.get("/dnc")
    async def dnc_list(request: Request) -> Response:
        return _json(await store_of(request).dnc_list())

    @api.post("/dnc")
    async def dnc_add(request: Request, body: dict[str, Any]) -> Response:
        numbers = body.get("numbers") or ([body["number"]] if "number" in body else [])
        try:
            added = await store_of(request).dnc_add([str(n) for n in numbers], str(body.get("reason", "")))
        except ValueError as exc:
            return _json({"detail": str(exc)}, 400)
        return _json({"added": added})

    @api.delete("/dnc/{number}")
    async def dnc_remove(request: Request, number: str) -> Response:
        try:
            removed = await store_of(request).dnc_remove(number)
        except ValueError as exc:
            return _json({"detail": str(exc)}, 400)
        return _json({"removed": removed}, 200 if removed else 404)

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

    router.include_router(api)
    router.include_router(callbacks)
    return router


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


async def export_response(request: Request, ref: str) -> Response:
    store = store_of(request)
    try:
        campaign = await store.find(ref)
    except CampaignError:
        raise HTTPException(status_code=404) from None
    rows = await number_results(store, campaign["id"], app_state(request).settings.public_url)
    filename = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in campaign["name"])[:60] or "campaign"
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}.csv"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    return Response(content=to_csv(rows), media_type="text/csv; charset=utf-8", headers=headers)
