"""Calling windows in the callee's local time, and phone-number normalisation.

A window is `HH:MM-HH:MM` in the callee's time zone (the row's, else the campaign's); one that ends before it
starts runs past midnight. Outside the window a number waits for its next opening rather than being skipped.
"""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_NUMBER = re.compile(r"^\+?[0-9]{6,16}$")
_SEPARATORS = re.compile(r"[\s().\-]")


class WindowError(ValueError):
    """A window, time or time zone that cannot be used."""


def parse_hhmm(text: str) -> dt.time:
    match = _HHMM.match(text.strip())
    if match is None:
        raise WindowError(f"{text!r} is not a time of day as HH:MM (00:00-23:59)")
    return dt.time(int(match.group(1)), int(match.group(2)))


def parse_window(text: str) -> tuple[str, str]:
    """`09:00-20:00` → ("09:00", "20:00"); start == end means all day."""
    start, sep, end = text.partition("-")
    if not sep:
        raise WindowError(f"{text!r} is not a window as HH:MM-HH:MM")
    parse_hhmm(start)
    parse_hhmm(end)
    return start.strip(), end.strip()


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(f"unknown time zone {name!r} (use an IANA name such as Asia/Kolkata)") from None


def next_opening(now: float, start: str, end: str, tz: str) -> float:
    """`now` if it is inside the window in `tz`, else the epoch time the window next opens."""
    begin, finish = parse_hhmm(start), parse_hhmm(end)
    if begin == finish:
        return now
    local = dt.datetime.fromtimestamp(now, zone(tz))
    t = local.time().replace(tzinfo=None)
    inside = begin <= t < finish if begin < finish else (t >= begin or t < finish)
    if inside:
        return now
    day = local.date() if t < begin else local.date() + dt.timedelta(days=1)
    opening = dt.datetime.combine(day, begin, zone(tz))
    return opening.timestamp()


def normalise_number(text: str) -> str:
    """Digits with an optional leading +, separators removed; raises ValueError for anything else."""
    cleaned = _SEPARATORS.sub("", text.strip())
    if cleaned.startswith("00"):
        cleaned = "+" + cleaned[2:]
    if not _NUMBER.match(cleaned):
        raise ValueError(f"{text!r} is not a phone number (E.164, e.g. +919876543210)")
    return cleaned
