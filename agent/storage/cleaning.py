"""Cleaning values on their way into the database or the spool: a save must never fail on an odd value.

PostgreSQL rejects NUL characters in text and NaN/inf in JSON, and event details can hold anything; tool header
values are usually credentials. Shared by the call store (rows, prompt versions) and the spool (files on disk).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

_REDACTED = "<redacted>"


def utc_time(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def epoch(t: dt.datetime | None) -> float | None:
    return t.timestamp() if t is not None else None


def as_float(value: Any) -> float | None:
    return float(value) if value is not None else None


def finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def clean_text(value: str) -> str:
    """PostgreSQL text cannot hold NUL characters."""
    return value.replace("\x00", "")


def cut(value: str, length: int) -> str:
    return clean_text(value)[:length]


def plain_json(value: Any) -> Any:
    """Plain JSON for any event detail: NaN/inf become null (PostgreSQL rejects them), unknown types their str."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping):
        return {clean_text(str(k)): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain_json(v) for v in value]
    return clean_text(str(value))


def json_object(value: Any) -> dict[str, Any]:
    cleaned = plain_json(value)
    return cleaned if isinstance(cleaned, dict) else {"value": cleaned}


def redact_headers(value: Any) -> Any:
    """Tool header values are usually credentials: keep the header names, never the values."""
    if isinstance(value, dict):
        return {
            k: {h: _REDACTED for h in v} if k == "headers" and isinstance(v, dict) else redact_headers(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_headers(v) for v in value]
    return value
