"""The console's pages and their data: server-rendered HTML from the call store, the registry and the prompts.

Every page is built from the shared `AppState` on `request.app.state.agent`; nothing here touches a live call's
audio path (the live view only reads a few attributes of each call). Pages carry a per-response CSP nonce, so
the only scripts and styles that run are the ones in these templates.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from agent.console import auth, charts
from agent.console.auth import app_state
from agent.console.campaigns import campaign_pages
from agent.console.rendering import call_url, render
from agent.console.views import (
    call_view,
    experiment_rows,
    live_rows,
    ms_axis,
    pct_axis,
    percentile_series,
    query_string,
    recent_rows,
    safe_recording,
    stats_rows,
    usd_axis,
    version_row,
)
from agent.prompts.library import experiment_name
from agent.prompts.loader import PromptError, check_name
from agent.stats import (
    MIN_CALLS_PER_ARM,
)
from agent.storage.cleaning import plain_json

PAGE_SIZE = 25
RUN_TAG = "eval_run"
EXPERIMENT_TAG = "experiment"
RECENT_CALLS = 8
RUN_CALLS = 100
WINDOWS = {"24h": dt.timedelta(hours=24), "7d": dt.timedelta(days=7)}
# Known end reasons, offered as suggestions in the call list's filter (any value can be typed).
END_REASONS = (
    "caller_hangup",
    "carrier_closed",
    "carrier_stop",
    "agent_end_call",
    "agent_transfer",
    "idle_timeout",
    "max_duration",
    "max_cost",
    "drain",
    "shutdown",
    "internal_error",
    "unknown",
)

# --- the router ------------------------------------------------------------------------------------------------


def console_router(login_throttle: auth.LoginThrottle | None = None) -> APIRouter:
    """`/console` and its pages. Mount with `app.include_router(console_router())`."""
    throttle = login_throttle or auth.LoginThrottle()
    router = APIRouter(include_in_schema=False)
    public = APIRouter(prefix="/console")
    pages = APIRouter(prefix="/console", dependencies=[Depends(auth.operator_guard(throttle))])

    # --- login / logout (the only routes without the operator dependency) -----------------------------------

    @public.get("/login", response_class=HTMLResponse, name="console_login")
    async def login_form(request: Request, next: str | None = None) -> Response:
        token = auth.operator_token(request)
        if token is None:
            raise HTTPException(status_code=404)
        target = auth.safe_next(next)
        if auth.is_authenticated(request, token):
            return RedirectResponse(target, status_code=303)
        return render(request, "login.html", next=target, error=None)

    @public.post("/login", response_class=HTMLResponse)
    async def login(request: Request, token: str = Form(""), next: str = Form("")) -> Response:
        expected = auth.operator_token(request)
        if expected is None:
            raise HTTPException(status_code=404)
        target = auth.safe_next(next)
        client = auth.client_address(request)
        if throttle.blocked(client):
            error = "Too many wrong tokens: try again in a minute."
            return render(request, "login.html", status_code=429, next=target, error=error)
        if not auth.token_matches(expected, token):
            throttle.failed(client)
            return render(request, "login.html", status_code=401, next=target, error="That token is not right.")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            auth.COOKIE_NAME,
            auth.session_value(expected),
            max_age=auth.SESSION_TTL_S,
            path=auth.COOKIE_PATH,
            secure=auth.cookie_secure(request),
            httponly=True,
            samesite="strict",
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    @public.post("/logout")
    async def logout(request: Request) -> Response:
        if auth.operator_token(request) is None:
            raise HTTPException(status_code=404)
        response = RedirectResponse(auth.LOGIN_PATH, status_code=303)
        response.delete_cookie(auth.COOKIE_NAME, path=auth.COOKIE_PATH, httponly=True, samesite="strict")
        return response

    # --- live calls ---------------------------------------------------------------------------------------

    @pages.get("", response_class=HTMLResponse)
    async def live_page(request: Request) -> Response:
        state = app_state(request)
        recent = await state.store.list_calls(limit=RECENT_CALLS)
        return render(
            request,
            "live.html",
            live=live_rows(list(state.registry.live.values())),
            recent=recent_rows(recent.calls),
            total=recent.total,
            draining=state.draining,
            max_calls=state.settings.max_concurrent_calls,
        )

    @pages.get("/live.json")
    async def live_json(request: Request) -> Response:
        state = app_state(request)
        recent = await state.store.list_calls(limit=RECENT_CALLS)
        body = {
            "live": live_rows(list(state.registry.live.values())),
            "recent": recent_rows(recent.calls),
            "total": recent.total,
            "draining": state.draining,
            "max_calls": state.settings.max_concurrent_calls,
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    # --- call history ---------------------------------------------------------------------------------------

    @pages.get("/calls", response_class=HTMLResponse)
    async def calls_page(
        request: Request,
        q: str = Query("", max_length=200),
        end_reason: str = Query("", max_length=64),
        prompt: str = Query("", max_length=64),
        run: str = Query("", max_length=200),
        page: int = Query(1, ge=1, le=100_000),
    ) -> Response:
        state = app_state(request)
        result = await state.store.list_calls(
            q.strip() or None,
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
            end_reason=end_reason.strip() or None,
            prompt_name=prompt.strip() or None,
            tag=(RUN_TAG, run.strip()) if run.strip() else None,
        )
        params: dict[str, str | int | None] = {"q": q, "end_reason": end_reason, "prompt": prompt, "run": run}
        pages_total = max(1, math.ceil(result.total / PAGE_SIZE))
        return render(
            request,
            "calls.html",
            calls=result.calls,
            total=result.total,
            page=page,
            pages=pages_total,
            prev_url=f"?{query_string(params, page=page - 1)}" if page > 1 else None,
            next_url=f"?{query_string(params, page=page + 1)}" if page < pages_total else None,
            q=q,
            end_reason=end_reason,
            prompt=prompt,
            run=run,
            end_reasons=END_REASONS,
            prompt_names=sorted(set(state.prompts.names()) | ({prompt} if prompt else set())),
            offset=(page - 1) * PAGE_SIZE,
        )

    @pages.get("/calls/{call_id}", response_class=HTMLResponse)
    async def call_page(request: Request, call_id: str) -> Response:
        state = app_state(request)
        detail = await state.store.get_call(call_id)
        live = state.registry.live.get(call_id)
        if detail is not None:
            record, saved = detail.record, detail
        elif live is not None or call_id in state.registry.records:
            # Not saved yet (still live, or the writer has not got to it): show what the process holds.
            record = live.record if live is not None else state.registry.records[call_id]
            saved = None
        else:
            return render(request, "not_found.html", status_code=404, what=f"call {call_id}")
        recording = safe_recording(state.settings.recordings_dir, record.recording_path)
        return render(
            request,
            "call.html",
            record=record,
            saved=saved,
            live=live is not None,
            view=call_view(record),
            recording_url=f"{call_url(call_id)}/recording.wav" if recording is not None else None,
            recording_missing=record.recording_path is not None and recording is None,
        )

    @pages.get("/api/calls/{call_id}")
    async def call_json(request: Request, call_id: str) -> Response:
        """A call's record as JSON, stored or still in the process: how `voice-agent call --operator-token`
        prints the agent's own latency and end reason, the figures this console shows."""
        state = app_state(request)
        detail = await state.store.get_call(call_id)
        record = detail.record if detail is not None else state.registry.records.get(call_id)
        live = state.registry.live.get(call_id)
        if record is None and live is not None:
            record = live.record
        if record is None:
            return JSONResponse({"detail": "no such call"}, status_code=404, headers={"Cache-Control": "no-store"})
        return JSONResponse(plain_json(record.to_dict()), headers={"Cache-Control": "no-store"})

    @pages.get("/calls/{call_id}/recording.wav")
    async def recording(request: Request, call_id: str) -> Response:
        state = app_state(request)
        detail = await state.store.get_call(call_id)
        if detail is None:
            raise HTTPException(status_code=404)
        path = safe_recording(state.settings.recordings_dir, detail.record.recording_path)
        if path is None:
            raise HTTPException(status_code=404)
        headers = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}
        return FileResponse(path, media_type="audio/wav", headers=headers)

    # --- prompts --------------------------------------------------------------------------------------------

    @pages.get("/prompts", response_class=HTMLResponse)
    async def prompts_page(request: Request) -> Response:
        state = app_state(request)
        library = state.prompts
        numbers_error = None
        routed: dict[str, list[str]] = defaultdict(list)
        try:
            for number, name in sorted(library.numbers().items()):
                routed[name].append(f"+{number}")
        except PromptError as exc:
            numbers_error = str(exc)
        names = library.names()
        items = []
        for name in names:
            problem = library.problem(name)
            try:
                current = library.get(name)
            except PromptError:
                current = None
            versions = await state.store.prompt_versions(name)
            stats = await state.store.version_stats(name)
            evals = await state.store.eval_results(name)
            experiment = current.meta.experiment if current is not None else None
            rows = [version_row(v, stats.get(v.content_hash), evals.get(v.content_hash, [])) for v in versions]
            items.append(
                {
                    "name": name,
                    "ok": problem is None,
                    "errors": str(problem).splitlines() if problem is not None else [],
                    "serving": current,
                    "description": current.meta.description if current is not None else "",
                    "numbers": routed.get(name, []),
                    "default": name == library.default,
                    "versions": versions,
                    "rows": rows,
                    "diffable": [v for v in versions if v.instructions is not None],
                    "experiment": (
                        {
                            "name": experiment_name(name, experiment),
                            "candidate": experiment.candidate,
                            "share": experiment.share,
                            "problem": library.problem(experiment.candidate)
                            if experiment.candidate in names
                            else f"there is no prompt file {experiment.candidate}.md",
                        }
                        if experiment is not None
                        else None
                    ),
                }
            )
        unrouted = sorted((name, nums) for name, nums in routed.items() if name not in names)
        return render(request, "prompts.html", prompts=items, numbers_error=numbers_error, missing_targets=unrouted)

    @pages.get("/prompts/{name}/diff", response_class=HTMLResponse)
    async def prompt_diff(
        request: Request, name: str, old: str = Query(..., max_length=64), new: str = Query(..., max_length=64)
    ) -> Response:
        state = app_state(request)
        try:
            check_name(name)
            diff = await state.store.diff_prompt_versions(name, old, new)
        except (KeyError, PromptError) as exc:
            return render(request, "not_found.html", status_code=404, what=str(exc).strip("'\""))
        lines = []
        for line in diff.splitlines():
            if line.startswith(("+++", "---")):
                kind = "file"
            elif line.startswith("@@"):
                kind = "hunk"
            elif line.startswith("+"):
                kind = "add"
            elif line.startswith("-"):
                kind = "del"
            else:
                kind = "same"
            lines.append((kind, line))
        versions = {v.content_hash: v for v in await state.store.prompt_versions(name)}
        return render(
            request,
            "diff.html",
            name=name,
            old=versions.get(old),
            new=versions.get(new),
            lines=lines,
            old_hash=old,
            new_hash=new,
        )

    # --- experiments ----------------------------------------------------------------------------------------

    @pages.get("/experiments", response_class=HTMLResponse)
    async def experiments_page(request: Request, name: str = Query("", max_length=200)) -> Response:
        state = app_state(request)
        seen = dict(await state.store.tag_values(EXPERIMENT_TAG))
        configured: dict[str, tuple[str, str, float]] = {}
        for prompt_name, result in state.prompts.check_all().items():
            if not isinstance(result, PromptError) and result.meta.experiment is not None:
                exp = result.meta.experiment
                configured[experiment_name(prompt_name, exp)] = (prompt_name, exp.candidate, exp.share)
        names = sorted(seen.keys() | configured.keys())
        if not name and names:
            name = names[0]
        context: dict[str, Any] = {
            "names": [(n, seen.get(n, 0), configured.get(n)) for n in names],
            "name": name,
            "comparison": None,
            "min_calls": MIN_CALLS_PER_ARM,
        }
        if name:
            arms = await state.store.experiment_arms(name)
            context["comparison"] = experiment_rows(arms["control"], arms["candidate"])
            context["arms"] = arms
            context["configured"] = configured.get(name)
        return render(request, "experiments.html", **context)

    # --- summary --------------------------------------------------------------------------------------------

    @pages.get("/summary", response_class=HTMLResponse)
    async def summary_page(request: Request, window: str = Query("24h", max_length=8)) -> Response:
        state = app_state(request)
        if window not in WINDOWS:
            window = "24h"
        now = dt.datetime.now(dt.UTC)
        summary = await state.store.summary(now - WINDOWS[window], now, "hour")
        buckets = summary.buckets
        fmt = "%H:%M" if window == "24h" else "%a %H:%M"
        labels = [b.start.astimezone(dt.UTC).strftime(fmt) for b in buckets]
        rates = [b.barge_in_rate * 100 if b.barge_in_rate is not None else None for b in buckets]
        return render(
            request,
            "summary.html",
            window=window,
            windows=list(WINDOWS),
            summary=summary,
            stats=summary.stats,
            calls_chart=charts.bar_chart(labels, [b.calls for b in buckets], title="Calls per hour", fmt=charts.plain),
            latency_chart=charts.line_chart(
                labels,
                percentile_series([b.latency_ms for b in buckets]),
                title="Response latency p50 / p90 / p99 per hour (caller stopped speaking → bot audio on the line)",
                fmt=ms_axis,
            ),
            barge_chart=charts.bar_chart(labels, rates, title="Barge-in rate per hour", fmt=pct_axis, css="s3"),
            cost_chart=charts.bar_chart(
                labels, [b.cost_usd for b in buckets], title="Cost per hour", fmt=usd_axis, css="s2"
            ),
        )

    # --- eval runs ------------------------------------------------------------------------------------------

    @pages.get("/runs", response_class=HTMLResponse)
    async def runs_page(
        request: Request, a: str = Query("", max_length=200), b: str = Query("", max_length=200)
    ) -> Response:
        state = app_state(request)
        runs = await state.store.tag_values(RUN_TAG)
        known = [value for value, _ in runs]
        if not a and not b and len(known) >= 2:
            a, b = known[1], known[0]
        context: dict[str, Any] = {"runs": runs, "a": a, "b": b, "tag": RUN_TAG, "comparison": None}
        if a and b:
            comparison = await state.store.compare_runs(RUN_TAG, a, b)
            calls_a = await state.store.list_calls(tag=(RUN_TAG, a), limit=RUN_CALLS)
            calls_b = await state.store.list_calls(tag=(RUN_TAG, b), limit=RUN_CALLS)
            ca, cb = comparison.a, comparison.b
            context |= {
                "comparison": comparison,
                "rows": stats_rows(ca, cb),
                "calls_a": calls_a,
                "calls_b": calls_b,
                "latency_chart": charts.paired_bars(
                    ["p50", "p90", "p99"],
                    [
                        charts.Series(a, [ca.latency_ms.p50, ca.latency_ms.p90, ca.latency_ms.p99], "s1"),
                        charts.Series(b, [cb.latency_ms.p50, cb.latency_ms.p90, cb.latency_ms.p99], "s2"),
                    ],
                    title="Response latency by run",
                    fmt=ms_axis,
                ),
            }
        return render(request, "runs.html", **context)

    router.include_router(public)
    router.include_router(pages)
    router.include_router(campaign_pages(throttle))
    return router
