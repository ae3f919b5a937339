"""What the call store's queries return: plain frozen dataclasses for the console and the eval tool.

Kept apart from the queries so readers of results (the console's views) need not import the store.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from agent.records import record as rec

Bucket = Literal["minute", "hour", "day"]


@dataclass(frozen=True)
class CallSummary:
    """One line of the call list."""

    call_id: str
    from_number: str
    to_number: str
    direction: str
    prompt_name: str
    prompt_hash: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    duration_s: float | None
    end_reason: str | None
    hung_up_by: str | None
    turn_count: int
    assistant_turns: int
    interrupted_turns: int
    barge_in_count: int
    tool_count: int
    tool_failures: int
    cost_usd: float
    recording_path: str | None
    tags: dict[str, str]


@dataclass(frozen=True)
class CallPage:
    calls: list[CallSummary]
    total: int  # matching calls, ignoring limit/offset


@dataclass(frozen=True)
class CallDetail:
    """Everything stored about one call: its list line, the record as the call kept it, and save bookkeeping."""

    summary: CallSummary
    record: rec.CallRecord
    first_saved_at: dt.datetime
    saved_at: dt.datetime
    saves: int


@dataclass(frozen=True)
class Percentiles:
    count: int
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    p95: float | None = None  # after p99 so positional construction of older callers keeps working


@dataclass(frozen=True)
class CallStats:
    """Aggregates over a set of calls: a time window for the summary, one eval run for a comparison.

    `barge_in_rate` is barge-ins per assistant answer: how often the caller talked over the bot.
    """

    calls: int
    latency_ms: Percentiles
    assistant_turns: int
    interrupted_turns: int
    barge_ins: int
    calls_with_barge_in: int
    barge_in_rate: float | None
    total_cost_usd: float
    mean_cost_usd: float | None
    mean_duration_s: float | None
    mean_turns: float | None
    tool_calls: int
    tool_failures: int
    end_reasons: dict[str, int]
    hung_up_by: dict[str, int]


@dataclass(frozen=True)
class SummaryBucket:
    start: dt.datetime
    calls: int
    cost_usd: float
    barge_ins: int
    assistant_turns: int
    latency_ms: Percentiles

    @property
    def barge_in_rate(self) -> float | None:
        return self.barge_ins / self.assistant_turns if self.assistant_turns else None


@dataclass(frozen=True)
class Summary:
    since: dt.datetime | None
    until: dt.datetime | None
    bucket: Bucket
    stats: CallStats
    buckets: list[SummaryBucket]  # oldest first; empty buckets included within the window (up to 10,000)


@dataclass(frozen=True)
class RunComparison:
    tag_key: str
    run_a: str
    run_b: str
    a: CallStats
    b: CallStats


@dataclass(frozen=True)
class PromptVersionInfo:
    """A prompt version seen on calls. `instructions`/`meta` are None when the version was never stored (a call
    saved without its prompt)."""

    name: str
    content_hash: str
    first_seen: dt.datetime
    last_seen: dt.datetime | None
    calls: int
    instructions: str | None = None
    meta: dict[str, Any] | None = None
    from_source: bool = False

    @property
    def text(self) -> str | None:
        """The version as a prompt file would read: front matter, then instructions; what the diff compares."""
        if self.instructions is None:
            return None
        front = yaml.safe_dump(self.meta or {}, sort_keys=True, allow_unicode=True).rstrip("\n")
        return f"---\n{front}\n---\n{self.instructions}\n"


@dataclass(frozen=True)
class EvalRunResult:
    """One eval run's calls on one prompt version, with how many passed their assertions (the eval tool tags
    each call `eval_verdict=pass|fail`; calls without a verdict are runs that had no assertions)."""

    run: str
    calls: int
    passed: int
    failed: int
    first_call: dt.datetime


@dataclass(frozen=True)
class ArmData:
    """One arm of an experiment: its aggregates and the raw numbers its confidence intervals need."""

    arm: str
    stats: CallStats
    latencies_ms: list[list[float]]  # per call: the interval resamples calls, not answers
