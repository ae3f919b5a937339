"""How console pages are rendered: the jinja2 environment, its formatting filters, and the headers every page
carries (a per-response CSP nonce, no caching). Shared by every console page module."""

from __future__ import annotations

import datetime as dt
import json
import math
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from agent.stats import RESPONSE_LATENCY

_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


# --- formatting ------------------------------------------------------------------------------------------------


def fmt_time(value: dt.datetime | float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, int | float):
        value = dt.datetime.fromtimestamp(value, dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_time_short(value: dt.datetime | None) -> str:
    return "—" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def short_id(call_id: str) -> str:
    """Long (UUID) call ids are cut in tables; the link's title and the detail page show all of it."""
    return call_id if len(call_id) <= 20 else call_id[:13] + "…"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m" if hours else f"{minutes} m {secs:02d} s"


def fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def fmt_usd(value: float | None) -> str:
    if value is None:
        return "—"
    return f"${value:,.4f}" if abs(value) < 1 else f"${value:,.2f}"


def fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def fmt_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def call_url(call_id: str) -> str:
    return f"/console/calls/{quote(call_id, safe='')}"


_TEMPLATES.filters.update(
    when_short=fmt_time_short,
    short_id=short_id,
    when=fmt_time,
    dur=fmt_duration,
    ms=fmt_ms,
    usd=fmt_usd,
    pct=fmt_pct,
    seg=lambda s: quote(s, safe=""),
)
_TEMPLATES.globals.update(call_url=call_url, latency_label=RESPONSE_LATENCY)


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page with a fresh CSP nonce; never cached (it shows live, operator-only data)."""
    nonce = secrets.token_urlsafe(16)
    html = _TEMPLATES.get_template(template).render(nonce=nonce, path=request.url.path, **context)
    response = HTMLResponse(html, status_code=status_code)
    response.headers.update(security_headers(nonce))
    return response


def security_headers(nonce: str | None = None) -> dict[str, str]:
    scripts = f"'nonce-{nonce}'" if nonce else "'none'"
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src {scripts}; style-src {scripts}; img-src 'self' data:; "
            "connect-src 'self'; media-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }
