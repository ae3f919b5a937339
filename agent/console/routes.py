"""The console's pages and their data: server-rendered HTML from the call store, the registry and the prompts.

Every page is built from the shared `AppState` on `request.app.state.agent`; nothing here touches a live call's
audio path (the live view only reads a few attributes of each call). Pages carry a per-response CSP nonce, so
the only scripts and styles that run are the ones in these templates.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from agent.calls.call import Call
from agent.console import auth, charts
from agent.console.auth import app_state
from agent.console.campaigns import campaign_pages
from agent.console.rendering import call_url, fmt_duration, fmt_json, fmt_ms, fmt_pct, fmt_time, fmt_usd, render
from agent.prompts.library import experiment_name
from agent.prompts.loader import PromptError, check_name
from agent.records.record import CallRecord
from agent.stats import (
    MIN_CALLS_PER_ARM,
    Interval,
    bootstrap_percentile,
    percentile,
    proportion_interval,
)
from agent.storage import CallStats, CallSummary, Percentiles, PromptVersionInfo
from agent.storage.calls import ArmData, EvalRunResult, plain_json

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


# --- live calls ------------------------------------------------------------------------------------------------


def call_state(call: Call) -> str:
    """A one-word answer to "what is this call doing right now", from flags the call already keeps."""
    if call.closing or call.done.is_set():
        return "ending"
    if not call.model_ready.is_set():
        return "connecting"
    if call.caller_speaking:
        return "caller speaking"
    if call.playout.is_audible():
        return "bot speaking"
    return "listening"


def live_rows(calls: Sequence[Call], now: float | None = None) -> list[dict[str, Any]]:
    now = time.monotonic() if now is None else now
    rows = []
    for call in sorted(calls, key=lambda c: c.started_monotonic):
        record = call.record
        rows.append(
            {
                "call_id": call.call_id,
                "url": call_url(call.call_id),
                "from": record.from_number,
                "to": record.to_number,
                "prompt": call.prompt.name,
                "duration_s": round(max(now - call.started_monotonic, 0.0), 1),
                "duration": fmt_duration(now - call.started_monotonic),
                "turns": sum(1 for t in record.turns if t.text.strip()),
                "barge_ins": call.barge_ins,
                "state": call_state(call),
            }
        )
    return rows


def recent_rows(calls: Sequence[CallSummary]) -> list[dict[str, Any]]:
    return [
        {
            "call_id": c.call_id,
            "url": call_url(c.call_id),
            "from": c.from_number,
            "to": c.to_number,
            "prompt": c.prompt_name,
            "started": fmt_time(c.started_at),
            "duration": fmt_duration(c.duration_s),
            "turns": c.turn_count,
            "barge_ins": c.barge_in_count,
            "end_reason": c.end_reason or "—",
        }
        for c in calls
    ]


# --- one call --------------------------------------------------------------------------------------------------


def safe_recording(recordings_dir: Path, stored: str | None) -> Path | None:
    """The recording file a call points at, only if it is a `.wav` file inside the recordings folder.

    The stored path comes from the database, so it is not trusted: it is resolved (following `..` and symlinks)
    and refused unless it lands inside `recordings_dir`. A relative path is tried against the working directory
    (how the agent writes it) and against the recordings folder itself.
    """
    if not stored or "\x00" in stored:
        return None
    root = recordings_dir.resolve()
    for candidate in (Path(stored), root / stored):
        try:
            path = candidate.resolve()
        except (OSError, RuntimeError):
            continue
        if path.is_relative_to(root) and path.suffix.lower() == ".wav" and path.is_file():
            return path
    return None


def call_view(record: CallRecord) -> dict[str, Any]:
    """Transcript, timeline, latencies, barge-ins and tools of one call, with times relative to its start."""
    t0 = record.started_at
    end = record.ended_at if record.ended_at is not None else time.time()
    duration = max(end - t0, 0.0)
    turns = []
    spans: list[charts.Span] = []
    for i, turn in enumerate(record.turns):
        start = turn.started_at - t0
        stop = (turn.ended_at - t0) if turn.ended_at is not None else max(start + 0.3, duration)
        turns.append(
            {
                "n": i + 1,
                "speaker": turn.speaker,
                "text": turn.text,
                "at": start,
                "length": max(stop - start, 0.0),
                "interrupted": turn.interrupted,
                "heard_ms": turn.heard_ms,
                "audio_ms": turn.audio_ms,
                "latency_ms": turn.latency_ms,
            }
        )
        tip = f"{turn.speaker} at {start:.2f} s: {turn.text[:120]}"
        if turn.latency_ms is not None:
            tip += f" (response latency {turn.latency_ms:.0f} ms)"
        if turn.interrupted:
            tip += f" — interrupted, heard {fmt_ms(turn.heard_ms)}"
        css = "interrupted" if turn.interrupted else turn.speaker
        spans.append(charts.Span(turn.speaker, start, stop, css, tip))
    for tool in record.tools:
        start = tool.started_at - t0
        stop = (tool.ended_at - t0) if tool.ended_at is not None else start + 0.3
        state = "ok" if tool.ok else ("failed" if tool.ok is False else "no result")
        spans.append(charts.Span("tools", start, stop, "tool", f"{tool.name} ({state}) at {start:.2f} s"))
    markers = [
        charts.Marker(
            b.t - t0,
            "barge",
            f"barge-in at {b.t - t0:.2f} s: heard {b.heard_ms:.0f} ms, cleared in {b.clear_ms:.1f} ms",
        )
        for b in record.barge_ins
    ]
    lanes = ["caller", "assistant"]
    if any(t.speaker == "system" for t in record.turns):
        lanes.append("system")
    if record.tools:
        lanes.append("tools")
    latencies = [t.latency_ms for t in record.turns if t.speaker == "assistant" and t.latency_ms is not None]
    answers = [t for t in record.turns if t.speaker == "assistant"]
    # Answers are "#n" everywhere on the page (the nth assistant answer), never the model's item ids.
    answer_numbers = {t.item_id: i + 1 for i, t in enumerate(answers) if t.item_id}
    return {
        "duration": duration,
        "turns": turns,
        "timeline": charts.timeline(lanes, spans, markers, duration, title="Timeline of turns"),
        "latencies": [
            {"n": i + 1, "at": t.started_at - t0, "latency_ms": t.latency_ms, "text": t.text}
            for i, t in enumerate(answers)
            if t.latency_ms is not None
        ],
        "latency_median": percentile(latencies, 50),
        "latency_max": max(latencies) if latencies else None,
        "barge_ins": [
            {
                "at": b.t - t0,
                "answer": answer_numbers.get(b.item_id or ""),
                "heard_ms": b.heard_ms,
                "clear_ms": b.clear_ms,
            }
            for b in record.barge_ins
        ],
        "tools": [
            {
                "name": u.name,
                "arguments": fmt_json(u.arguments),
                "at": u.started_at - t0,
                "took": (u.ended_at - u.started_at) if u.ended_at is not None else None,
                "ok": u.ok,
                "result": u.result,
            }
            for u in record.tools
        ],
        "interruptions": [
            {
                "at": e.t - t0,
                "outcome": str(e.detail.get("outcome", "")),
                "reason": str(e.detail.get("reason", "")),
                "paused_ms": e.detail.get("paused_ms"),
                "transcript": e.detail.get("transcript"),
                "source": str(e.detail.get("source", "")),
            }
            for e in record.events
            if e.kind == "interruption"
        ],
        "events": [{"at": e.t - t0, "kind": e.kind, "detail": fmt_json(e.detail)} for e in record.events],
        "usage": record.usage,
        "cost_usd": record.cost_usd,
    }


# --- charts and comparisons ------------------------------------------------------------------------------------


def stats_rows(a: CallStats, b: CallStats) -> list[tuple[str, str, str, str]]:
    """Metric, run A, run B, difference (B − A): the side-by-side table of the runs page."""

    def diff(x: float | None, y: float | None, fmt: Any) -> str:
        if x is None or y is None:
            return ""
        delta = y - x
        sign = "+" if delta > 0 else ("−" if delta < 0 else "±")
        return sign + str(fmt(abs(delta)))

    def row(label: str, x: float | None, y: float | None, fmt: Any) -> tuple[str, str, str, str]:
        return label, fmt(x), fmt(y), diff(x, y, fmt)

    def count(v: float | None) -> str:
        return "—" if v is None else f"{v:,.0f}"

    def num(v: float | None) -> str:
        return "—" if v is None else f"{v:,.2f}"

    rows = [
        row("Calls", a.calls, b.calls, count),
        row("Answers with a response latency", a.latency_ms.count, b.latency_ms.count, count),
        row("Response latency p50", a.latency_ms.p50, b.latency_ms.p50, fmt_ms),
        row("Response latency p90", a.latency_ms.p90, b.latency_ms.p90, fmt_ms),
        row("Response latency p99", a.latency_ms.p99, b.latency_ms.p99, fmt_ms),
        row("Assistant answers", a.assistant_turns, b.assistant_turns, count),
        row("Interrupted answers", a.interrupted_turns, b.interrupted_turns, count),
        row("Barge-ins", a.barge_ins, b.barge_ins, count),
        row("Barge-in rate", a.barge_in_rate, b.barge_in_rate, fmt_pct),
        row("Calls with a barge-in", a.calls_with_barge_in, b.calls_with_barge_in, count),
        row("Total cost", a.total_cost_usd, b.total_cost_usd, fmt_usd),
        row("Mean cost per call", a.mean_cost_usd, b.mean_cost_usd, fmt_usd),
        row("Mean duration", a.mean_duration_s, b.mean_duration_s, fmt_duration),
        row("Mean turns", a.mean_turns, b.mean_turns, num),
        row("Tool calls", a.tool_calls, b.tool_calls, count),
        row("Tool failures", a.tool_failures, b.tool_failures, count),
    ]
    for reason in sorted(a.end_reasons.keys() | b.end_reasons.keys()):
        rows.append(row(f"Ended: {reason}", a.end_reasons.get(reason, 0), b.end_reasons.get(reason, 0), count))
    return rows


def version_row(version: PromptVersionInfo, stats: CallStats | None, evals: list[EvalRunResult]) -> dict[str, Any]:
    """One version's line on the Prompts page: how calls on it went, and its eval runs."""
    return {
        "v": version,
        "stats": stats,
        "endings": sorted(stats.end_reasons.items(), key=lambda kv: (-kv[1], kv[0])) if stats else [],
        "evals": evals,
    }


def _interval_text(interval: Interval | None, fmt: Any) -> str:
    if interval is None:
        return "—"
    return f"{fmt(interval.value)} ({fmt(interval.low)}–{fmt(interval.high)})"


def experiment_rows(control: ArmData, candidate: ArmData) -> dict[str, Any]:
    """Control and candidate side by side, each figure with its 95% interval, and a verdict per row that only
    calls a difference when the intervals do not overlap and both arms have enough calls."""
    enough = min(control.stats.calls, candidate.stats.calls) >= MIN_CALLS_PER_ARM
    rows: list[dict[str, str]] = []

    def add(label: str, a: Interval | None, b: Interval | None, fmt: Any) -> None:
        if a is None or b is None:
            verdict = "no data"
        elif not enough:
            verdict = "not enough calls yet"
        elif a.overlaps(b):
            verdict = "within noise"
        else:
            verdict = "candidate higher" if b.value > a.value else "candidate lower"
        rows.append(
            {"label": label, "control": _interval_text(a, fmt), "candidate": _interval_text(b, fmt), "verdict": verdict}
        )

    add(
        "Response latency p50",
        bootstrap_percentile(control.latencies_ms, 50),
        bootstrap_percentile(candidate.latencies_ms, 50),
        fmt_ms,
    )
    add(
        "Response latency p95",
        bootstrap_percentile(control.latencies_ms, 95),
        bootstrap_percentile(candidate.latencies_ms, 95),
        fmt_ms,
    )
    a, b = control.stats, candidate.stats
    add(
        "Barge-in rate (per answer)",
        proportion_interval(a.barge_ins, a.assistant_turns),
        proportion_interval(b.barge_ins, b.assistant_turns),
        fmt_pct,
    )
    add(
        "Calls with a barge-in",
        proportion_interval(a.calls_with_barge_in, a.calls),
        proportion_interval(b.calls_with_barge_in, b.calls),
        fmt_pct,
    )
    for reason in sorted(a.end_reasons.keys() | b.end_reasons.keys()):
        add(
            f"Ended: {reason}",
            proportion_interval(a.end_reasons.get(reason, 0), a.calls),
            proportion_interval(b.end_reasons.get(reason, 0), b.calls),
            fmt_pct,
        )
    add(
        "Tool failures (per tool call)",
        proportion_interval(a.tool_failures, a.tool_calls),
        proportion_interval(b.tool_failures, b.tool_calls),
        fmt_pct,
    )
    return {
        "rows": rows,
        "enough": enough,
        "calls": (a.calls, b.calls),
        "cost": (fmt_usd(a.mean_cost_usd), fmt_usd(b.mean_cost_usd)),
    }


def _percentile_series(points: Sequence[Percentiles]) -> list[charts.Series]:
    return [
        charts.Series("p50", [p.p50 for p in points], "s1"),
        charts.Series("p90", [p.p90 for p in points], "s2"),
        charts.Series("p99", [p.p99 for p in points], "s3"),
    ]


def _ms_axis(v: float) -> str:
    return f"{v / 1000:g} s" if v >= 1000 else f"{v:.0f} ms"


def _usd_axis(v: float) -> str:
    return f"${v:.2g}" if v else "$0"


def _pct_axis(v: float) -> str:
    return f"{v:.0f}%"


def _query(params: Mapping[str, str | int | None], **changes: str | int | None) -> str:
    merged = {k: v for k, v in {**params, **changes}.items() if v not in (None, "")}
    return urlencode(merged)


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
            prev_url=f"?{_query(params, page=page - 1)}" if page > 1 else None,
            next_url=f"?{_query(params, page=page + 1)}" if page < pages_total else None,
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
                _percentile_series([b.latency_ms for b in buckets]),
                title="Response latency p50 / p90 / p99 per hour (caller stopped speaking → bot audio on the line)",
                fmt=_ms_axis,
            ),
            barge_chart=charts.bar_chart(labels, rates, title="Barge-in rate per hour", fmt=_pct_axis, css="s3"),
            cost_chart=charts.bar_chart(
                labels, [b.cost_usd for b in buckets], title="Cost per hour", fmt=_usd_axis, css="s2"
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
                    fmt=_ms_axis,
                ),
            }
        return render(request, "runs.html", **context)

    router.include_router(public)
    router.include_router(pages)
    router.include_router(campaign_pages(throttle))
    return router
