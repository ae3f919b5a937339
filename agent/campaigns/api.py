"""The operator API for outbound calls: `POST /calls`, `/campaigns`, `/dnc` (the operator token, as for the
console; 404 while none is set). Loaded on its first request (`agent.campaigns.routes.operator_api`): a replica
that only takes calls never builds its request models and routes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from agent.campaigns.dialler import DialError, place_one
from agent.campaigns.results import number_results, to_csv
from agent.campaigns.store import RETRYABLE, CampaignError, CampaignSpec, CampaignStore, parse_csv
from agent.campaigns.web_state import store_of, wake_dialler
from agent.console import auth
from agent.console.auth import app_state
from agent.web.state import AppState


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


async def create_campaign(state: AppState, body: CampaignRequest) -> str:
    """Validate and store a campaign (shared by the API and the console's form); raises CampaignError."""
    spec = CampaignSpec.asked(
        state.settings,
        name=body.name,
        prompt=body.prompt,
        from_number=body.from_,
        timezone=body.timezone,
        concurrency=body.concurrency,
        rate_per_min=body.rate_per_min,
        window=body.window,
        max_attempts=body.max_attempts,
        retry_delay_s=body.retry_delay_s,
        retry_on=tuple(body.retry_on),
    )
    state.prompts.get(spec.prompt)  # PromptError for an unknown or broken prompt
    rows = parse_csv(body.csv)
    return await CampaignStore(state.store.db).create(spec, rows)


def _json(body: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, headers={"Cache-Control": "no-store"})


def api_router(throttle: auth.LoginThrottle) -> APIRouter:
    api = APIRouter(include_in_schema=False, dependencies=[Depends(auth.operator_guard(throttle))])

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

    return api


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
