"""What a campaign is made of, before and outside the database: its settings, its CSV rows, a claim, a result."""

from __future__ import annotations

import csv
import io
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.campaigns.windows import WindowError, normalise_number, parse_window, zone

if TYPE_CHECKING:
    from agent.config import Settings

RESULTS = ("person", "machine", "busy", "no_answer", "failed")
OUTCOMES = (*RESULTS, "dnc")
RETRYABLE = ("busy", "no_answer", "failed")
CAMPAIGN_STATES = ("running", "paused", "stopped", "completed")


class CampaignError(ValueError):
    """A campaign request that cannot be carried out (bad CSV, unknown campaign, invalid setting)."""


@dataclass(frozen=True)
class CampaignSpec:
    name: str
    prompt: str
    from_number: str
    concurrency: int = 5
    rate_per_min: float = 0.0
    window: str = "09:00-20:00"
    timezone: str = "Asia/Kolkata"
    max_attempts: int = 3
    retry_delay_s: float = 600.0
    retry_on: tuple[str, ...] = RETRYABLE

    @classmethod
    def asked(
        cls,
        settings: Settings,
        *,
        name: str,
        prompt: str | None,
        from_number: str | None,
        timezone: str | None,
        concurrency: int,
        rate_per_min: float,
        window: str,
        max_attempts: int,
        retry_delay_s: float,
        retry_on: tuple[str, ...],
    ) -> CampaignSpec:
        """A campaign as an operator asked for it (command line, API or console), what they left out taken from the
        service's settings, and checked."""
        sender = from_number or settings.outbound_from_number
        if not sender:
            raise CampaignError("no caller ID: give a from number or set AGENT_OUTBOUND_FROM_NUMBER")
        spec = cls(
            name=name,
            prompt=prompt or settings.default_prompt,
            from_number=sender,
            concurrency=concurrency,
            rate_per_min=rate_per_min,
            window=window,
            timezone=timezone or settings.campaign_timezone,
            max_attempts=max_attempts,
            retry_delay_s=retry_delay_s,
            retry_on=retry_on,
        )
        spec.check()
        return spec

    def check(self) -> None:
        if not self.name.strip() or len(self.name) > 128:
            raise CampaignError("a campaign needs a name of 1-128 characters")
        if self.concurrency < 1 or self.concurrency > 1000:
            raise CampaignError("concurrency must be 1-1000")
        if self.rate_per_min < 0:
            raise CampaignError("rate must be >= 0 calls a minute (0: no limit)")
        if self.max_attempts < 1 or self.max_attempts > 20:
            raise CampaignError("max attempts must be 1-20")
        if self.retry_delay_s < 0:
            raise CampaignError("retry delay must be >= 0 seconds")
        unknown = set(self.retry_on) - set(RETRYABLE)
        if unknown:
            raise CampaignError(f"only {', '.join(RETRYABLE)} can be retried, not {', '.join(sorted(unknown))}")
        try:
            parse_window(self.window)
            zone(self.timezone)
            normalise_number(self.from_number)
        except (WindowError, ValueError) as exc:
            raise CampaignError(str(exc)) from None


@dataclass(frozen=True)
class NumberRow:
    number: str
    variables: dict[str, str] = field(default_factory=dict)
    timezone: str | None = None


@dataclass(frozen=True)
class Claim:
    """One number claimed for one dial attempt."""

    attempt_id: str
    campaign_id: str | None
    number_id: int | None
    number: str
    attempt_no: int
    prompt: str
    from_number: str
    variables: dict[str, str]


@dataclass(frozen=True)
class Settled:
    """What a final callback did: the attempt's result, and the number's state afterwards."""

    attempt_id: str
    result: str
    campaign_id: str | None
    retry_at: float | None  # a retry was scheduled for then
    final: bool  # the number reached its final outcome


@dataclass
class Progress:
    campaign: dict[str, Any]
    states: dict[str, int]
    outcomes: dict[str, int]
    attempts: int

    @property
    def done(self) -> int:
        return self.states.get("done", 0)


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(8)}"


def parse_csv(text: str, default_tz: str | None = None) -> list[NumberRow]:
    """One row per number: a `number` (or `phone`/`to`) column, an optional `timezone` column; every other
    column is a variable for the prompt. Duplicate numbers are refused: each number is dialled at most once."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    if reader.fieldnames is None:
        raise CampaignError("the CSV is empty")
    headers = [h.strip() for h in reader.fieldnames]
    number_col = next((h for h in ("number", "phone", "to") if h in headers), None)
    if number_col is None:
        raise CampaignError("the CSV needs a 'number' column (or 'phone' / 'to')")
    rows: list[NumberRow] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    for line, raw in enumerate(reader, start=2):
        values = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(values.values()):
            continue
        try:
            number = normalise_number(values.pop(number_col, ""))
        except ValueError as exc:
            problems.append(f"line {line}: {exc}")
            continue
        if number in seen:
            problems.append(f"line {line}: {number} is already on line {seen[number]}")
            continue
        seen[number] = line
        tz = values.pop("timezone", "") or default_tz
        if tz:
            try:
                zone(tz)
            except WindowError as exc:
                problems.append(f"line {line}: {exc}")
                continue
        bad = [k for k in values if not k.isidentifier()]
        if bad:
            problems.append(f"line {line}: column names must be identifiers to be prompt variables: {bad}")
            continue
        rows.append(NumberRow(number, values, tz or None))
    if problems:
        raise CampaignError("\n".join(problems[:20]) + ("\n…" if len(problems) > 20 else ""))
    if not rows:
        raise CampaignError("the CSV has no numbers")
    return rows
