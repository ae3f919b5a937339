"""The load test's result file: versioned JSON that one run writes and that runs from many machines merge into.

The file keeps every call's metrics (not just aggregates), so a merge recomputes exact percentiles and the
report can draw any call's timeline. The flat ``summary`` is what SLOs are checked against.
"""

from __future__ import annotations

import itertools
import json
import socket
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.stats import RESPONSE_LATENCY, percentile
from agent.testkit.analysis.call import CallMetrics

# The load test may drive a remote agent, so it measures at its own simulated carrier; said in the report.
RESPONSE_MEASURED_AT = (
    f"{RESPONSE_LATENCY}. Measured at the simulated carrier (the caller's last speech frame sent -> the first "
    "bot audio played), because the agent under test may be remote; the agent's console shows its own figure "
    "for the same definition."
)

__all__ = [
    "AGENT_KEYS",
    "CAMPAIGN_KEYS",
    "COUNTS",
    "DISTRIBUTIONS",
    "RESPONSE_MEASURED_AT",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STATS",
    "SUMMARY_KEYS",
    "AgentSample",
    "AgentStats",
    "LoadTestResults",
    "ResultsError",
    "RunInfo",
    "SloResult",
    "load_results",
    "merge_results",
    "samples",
    "summarize",
]

SCHEMA = "vobiz-voice-agent/loadtest-results"
SCHEMA_VERSION = 1
STATS = ("p50", "p90", "p95", "p99", "max", "mean")
# Distribution name -> how to pull its samples (ms) out of one call.
DISTRIBUTIONS: dict[str, str] = {
    "answer": "answer webhook -> 200",
    "greeting": "stream start -> greeting heard",
    "response": "caller stopped speaking -> bot audio on the line, at the carrier",
    "barge_in": "caller talks over the bot -> clearAudio",
    "truncation_error": "|model truncated at - caller heard|",
    "playout_gap": "silence inside one answer",
    "queue_max": "carrier queue, max per call",
    "queue_avg": "carrier queue, mean per call",
}
COUNTS = (
    "calls",
    "ok",
    "failed",
    "failure_rate",
    "calls_per_s",
    "wall_s",
    "unanswered_turns",
    "missed_barge_ins",
    "playout_gaps",
    "webhook_errors",
)
AGENT_KEYS = (
    "agent_cpu_mean_percent",
    "agent_cpu_max_percent",
    "agent_cpu_ms_per_call",
    "agent_rss_start_mb",
    "agent_rss_max_mb",
    "agent_rss_end_mb",
    "agent_active_calls_max",
    "agent_leaked_calls",
)
# An outbound run (`--outbound`): the campaign's own figures, None for an inbound run.
CAMPAIGN_KEYS = (
    "campaign_numbers",
    "campaign_dials",
    "campaign_redials",  # dials beyond the first of a number: retries by the campaign's rules
    "campaign_duplicate_dials",  # dials beyond what the rules allow (max attempts): must be 0
    "campaign_missing_outcomes",  # numbers without exactly one final outcome at the end: must be 0
    "campaign_complete_s",  # campaign created -> completed
    "campaign_dials_per_min",  # achieved, first dial to last
    "campaign_rate_per_min",  # configured (0: no limit)
    "campaign_concurrency",  # configured
    "campaign_live_max",  # calls up at the simulated Vobiz at once, most
)
SUMMARY_KEYS: tuple[str, ...] = (
    COUNTS
    + tuple(f"{name}_{stat}_ms" for name in DISTRIBUTIONS for stat in STATS)
    + tuple(f"{name}_count" for name in DISTRIBUTIONS)
    + AGENT_KEYS
    + CAMPAIGN_KEYS
)


class ResultsError(ValueError):
    """A result file that cannot be read or merged, with the reason."""


class AgentSample(BaseModel):
    t: float  # epoch seconds
    cpu_s: float | None = None  # process CPU seconds (user + system) so far
    rss_bytes: float | None = None
    active_calls: float | None = None


class AgentStats(BaseModel):
    """The agent's resource use during one run, from its /metrics (works remotely) or psutil (local pid)."""

    source: str  # "metrics <url>" or "psutil pid N"
    samples: list[AgentSample] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)

    def cpu_percent(self) -> list[tuple[float, float]]:
        """(t, CPU % of one core) between consecutive samples."""
        cpu = [(x.t, x.cpu_s) for x in self.samples if x.cpu_s is not None]
        return [(t1, 100 * (c1 - c0) / (t1 - t0)) for (t0, c0), (t1, c1) in itertools.pairwise(cpu) if t1 > t0]

    def summary(self, calls: int) -> dict[str, float | None]:
        out: dict[str, float | None] = dict.fromkeys(AGENT_KEYS)
        cpu = [(x.t, x.cpu_s) for x in self.samples if x.cpu_s is not None]
        rates = [r for _, r in self.cpu_percent()]
        if len(cpu) >= 2 and cpu[-1][0] > cpu[0][0]:
            total = cpu[-1][1] - cpu[0][1]
            out["agent_cpu_mean_percent"] = round(100 * total / (cpu[-1][0] - cpu[0][0]), 1)
            out["agent_cpu_max_percent"] = round(max(rates), 1) if rates else None
            out["agent_cpu_ms_per_call"] = round(1000 * total / calls, 1) if calls else None
        rss = [x.rss_bytes / 2**20 for x in self.samples if x.rss_bytes is not None]
        if rss:
            out["agent_rss_start_mb"], out["agent_rss_end_mb"] = round(rss[0], 1), round(rss[-1], 1)
            out["agent_rss_max_mb"] = round(max(rss), 1)
        active = [x.active_calls for x in self.samples if x.active_calls is not None]
        if active:
            out["agent_active_calls_max"] = max(active)
            out["agent_leaked_calls"] = max(0.0, active[-1] - active[0])
        return out


class RunInfo(BaseModel):
    """One generator run (one machine or pod); a merged file lists them all."""

    host: str = Field(default_factory=socket.gethostname)
    started_at: float
    ended_at: float
    config: dict[str, Any]


class SloResult(BaseModel):
    key: str
    op: str
    threshold: float
    value: float | None
    ok: bool


class LoadTestResults(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    schema_name: str = Field(default=SCHEMA, alias="schema")
    version: int = SCHEMA_VERSION
    runs: list[RunInfo]
    calls: list[CallMetrics]
    agent: list[AgentStats] = Field(default_factory=list)
    summary: dict[str, float | None] = Field(default_factory=dict)
    failures_by_cause: dict[str, int] = Field(default_factory=dict)
    slo: list[SloResult] = Field(default_factory=list)
    campaign: dict[str, Any] | None = None  # an outbound run: its campaign's figures and outcome counts

    @property
    def wall_s(self) -> float:
        return max(r.ended_at for r in self.runs) - min(r.started_at for r in self.runs) if self.runs else 0.0

    @property
    def scenario(self) -> str:
        names = sorted({str(r.config.get("scenario", "?")) for r in self.runs})
        return ", ".join(names)

    def refresh(self) -> LoadTestResults:
        """Recompute the summary from the calls and agent stats (after a run or a merge)."""
        self.summary = summarize(self.calls, self.agent, self.wall_s)
        figures = self.campaign or {}
        self.summary |= {k: figures.get(k.removeprefix("campaign_")) for k in CAMPAIGN_KEYS}
        self.failures_by_cause = dict(Counter(c.failure for c in self.calls if c.failure is not None).most_common())
        return self

    def dump(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(mode="json", by_alias=True), separators=(",", ":")) + "\n")


def samples(calls: Iterable[CallMetrics], name: str) -> list[float]:
    """Every sample (ms) of distribution ``name`` over ``calls``."""
    out: list[float] = []
    for c in calls:
        if name == "answer" and c.answer_ms is not None:
            out.append(c.answer_ms)
        elif name == "greeting" and c.greeting_ms is not None:
            out.append(c.greeting_ms)
        elif name == "response":
            out += c.response_ms
        elif name == "barge_in":
            out += c.barge_in_ms
        elif name == "truncation_error":
            out += [abs(v) for v in c.truncation_error_ms]
        elif name == "playout_gap":
            out += c.playout_gaps_ms
        elif name == "queue_max" and c.queue_max_ms is not None:
            out.append(c.queue_max_ms)
        elif name == "queue_avg" and c.queue_avg_ms is not None:
            out.append(c.queue_avg_ms)
    return out


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return dict.fromkeys(STATS)
    out = {f"p{q}": percentile(values, q) for q in (50, 90, 95, 99)}
    return out | {"max": round(max(values), 1), "mean": round(sum(values) / len(values), 1)}


def summarize(calls: Sequence[CallMetrics], agent: Sequence[AgentStats], wall_s: float) -> dict[str, float | None]:
    """The flat numbers SLOs are written against; every key in SUMMARY_KEYS is present (None = no data)."""
    failed = sum(1 for c in calls if not c.ok)
    out: dict[str, float | None] = {
        "calls": len(calls),
        "ok": len(calls) - failed,
        "failed": failed,
        "failure_rate": round(failed / len(calls), 4) if calls else None,
        "calls_per_s": round(len(calls) / wall_s, 2) if wall_s > 0 else None,
        "wall_s": round(wall_s, 1),
        "unanswered_turns": sum(c.unanswered_turns for c in calls),
        "missed_barge_ins": sum(c.missed_barge_ins for c in calls),
        "playout_gaps": sum(len(c.playout_gaps_ms) for c in calls),
        "webhook_errors": sum(len(c.webhook_errors) for c in calls),
    }
    for name in DISTRIBUTIONS:
        values = samples(calls, name)
        out[f"{name}_count"] = len(values)
        out |= {f"{name}_{stat}_ms": v for stat, v in _stats(values).items()}
    # Several generators usually watch the same agent: take the worst each of them saw.
    agent_rows = [a.summary(len(calls)) for a in agent]
    for key in AGENT_KEYS:
        values_k = [row[key] for row in agent_rows if row[key] is not None]
        out[key] = max(v for v in values_k if v is not None) if values_k else None
    return out


def load_results(path: Path) -> LoadTestResults:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: cannot read ({exc})") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise ResultsError(f"{path}: not a load-test result file (schema {SCHEMA!r})")
    if raw.get("version") != SCHEMA_VERSION:
        raise ResultsError(f"{path}: result file version {raw.get('version')}, this tool reads {SCHEMA_VERSION}")
    try:
        return LoadTestResults.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ResultsError(f"{path}: invalid result file at {where}: {first['msg']}") from None


def merge_results(parts: Sequence[LoadTestResults]) -> LoadTestResults:
    """One result from many generators: calls and agent samples are concatenated, the summary recomputed."""
    if not parts:
        raise ResultsError("nothing to merge")
    merged = LoadTestResults(
        runs=[r for p in parts for r in p.runs],
        calls=[c for p in parts for c in p.calls],
        agent=[a for p in parts for a in p.agent],
    )
    return merged.refresh()
