"""The console's campaign pages: the list with a form to start one from a CSV, each campaign's progress, outcome
counts and per-number results (linked to the call records), pause / resume / stop, and the CSV export.

Mounted by `console_router` under the same operator guard as every console page; all state comes from the
database, so any replica shows the same campaign.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request, UploadFile
from fastapi.responses import RedirectResponse, Response

from agent.campaigns.api import CampaignRequest, create_campaign, export_response
from agent.campaigns.results import number_results
from agent.campaigns.store import OUTCOMES, CampaignError
from agent.campaigns.web_state import store_of, wake_dialler
from agent.console import auth
from agent.console.auth import app_state
from agent.console.rendering import render
from agent.prompts.loader import PromptError

PAGE_ROWS = 200
MAX_UPLOAD_BYTES = 20_000_000


def campaign_pages(throttle: auth.LoginThrottle) -> APIRouter:
    pages = APIRouter(prefix="/console/campaigns", dependencies=[Depends(auth.operator_guard(throttle))])

    @pages.get("")
    async def campaigns_page(request: Request) -> Response:
        return await _list(request)

    @pages.post("")
    async def campaign_create(
        request: Request,
        name: str = Form(..., max_length=128),
        prompt: str = Form("", max_length=64),
        numbers: UploadFile | None = None,
        from_number: str = Form("", max_length=40),
        concurrency: int = Form(5),
        rate_per_min: float = Form(0.0),
        window: str = Form("09:00-20:00", max_length=11),
        timezone: str = Form("", max_length=64),
        max_attempts: int = Form(3),
        retry_delay_s: float = Form(600.0),
    ) -> Response:
        try:
            data = await numbers.read(MAX_UPLOAD_BYTES + 1) if numbers is not None else b""
            if len(data) > MAX_UPLOAD_BYTES:
                raise CampaignError("the CSV is larger than 20 MB")
            body = CampaignRequest.model_validate(
                {
                    "name": name,
                    "prompt": prompt or None,
                    "csv": data.decode("utf-8-sig") or " ",
                    "from": from_number or None,
                    "concurrency": concurrency,
                    "rate_per_min": rate_per_min,
                    "window": window,
                    "timezone": timezone or None,
                    "max_attempts": max_attempts,
                    "retry_delay_s": retry_delay_s,
                }
            )
            campaign_id = await create_campaign(app_state(request), body)
        except (CampaignError, PromptError, UnicodeDecodeError, ValueError) as exc:
            return await _list(request, error=str(exc), status_code=400)
        wake_dialler(request)
        return RedirectResponse(f"/console/campaigns/{campaign_id}", status_code=303)

    @pages.get("/{ref}")
    async def campaign_page(request: Request, ref: str, offset: int = 0) -> Response:

        store = store_of(request)
        try:
            progress = await store.progress(ref)
        except CampaignError:
            raise HTTPException(status_code=404) from None
        campaign = progress.campaign
        rows = await number_results(
            store, campaign["id"], app_state(request).settings.public_url, limit=PAGE_ROWS, offset=max(offset, 0)
        )
        total = int(campaign["total"])
        done = progress.done
        return render(
            request,
            "campaign.html",
            campaign=campaign,
            states=progress.states,
            outcomes=[(o, progress.outcomes.get(o, 0)) for o in OUTCOMES],
            attempts=progress.attempts,
            done=done,
            total=total,
            percent=round(100 * done / total) if total else 100,
            rows=rows,
            offset=max(offset, 0),
            page_rows=PAGE_ROWS,
        )

    @pages.post("/{ref}/{action}")
    async def campaign_action(request: Request, ref: str, action: str) -> Response:
        if action not in ("pause", "resume", "stop"):
            raise HTTPException(status_code=404)
        store = store_of(request)
        try:
            await store.set_state(ref, action)
        except CampaignError:
            pass  # a double click or a race with another operator: the page shows the state as it is
        else:
            wake_dialler(request)
        return RedirectResponse(f"/console/campaigns/{ref}", status_code=303)

    @pages.get("/{ref}/export.csv")
    async def campaign_export(request: Request, ref: str) -> Response:
        return await export_response(request, ref)

    return pages


async def _list(request: Request, error: str | None = None, status_code: int = 200) -> Response:

    state = app_state(request)
    store = store_of(request)
    campaigns = []
    for campaign in await store.all_campaigns():
        progress = await store.progress(campaign["id"])
        campaigns.append({**campaign, "done": progress.done, "outcomes": progress.outcomes})
    return render(
        request,
        "campaigns.html",
        status_code=status_code,
        campaigns=campaigns,
        prompt_names=state.prompts.names(),
        default_prompt=state.settings.default_prompt,
        default_timezone=state.settings.campaign_timezone,
        error=error,
        can_dial=state.vobiz is not None,
    )
