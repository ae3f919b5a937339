"""Saving call records and the queries the console and the eval tool ask of them.

`save` is an idempotent upsert: a call is saved when it ends and again when a late hangup webhook refines it,
so the call row is upserted and its turns, barge-ins, tools, events and tags are replaced in the same
transaction (on PostgreSQL the upsert's row lock also orders two replicas saving the same call).

Aggregates are computed by the database where both databases can (counts, sums, grouping by time bucket).
Percentiles use `percentile_cont` on PostgreSQL; SQLite has no percentile function, so there the values are
fetched and interpolated the same way (linear, as `percentile_cont` does), giving identical numbers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import difflib
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from sqlalchemy import ColumnElement, Table, case, delete, exists, func, literal_column, or_, select, type_coerce
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, selectinload

from agent.prompts.loader import Prompt, PromptError, parse_prompt
from agent.records import record as rec
from agent.stats import percentile
from agent.storage import models as m
from agent.storage.database import Database

log = logging.getLogger("agent.storage")

Bucket = Literal["minute", "hour", "day"]
_BUCKET_STEP = {"minute": dt.timedelta(minutes=1), "hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1)}
_SQLITE_BUCKET_FORMAT = {"minute": "%Y-%m-%d %H:%M:00", "hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00"}
_MAX_FILLED_BUCKETS = 10_000
_QUANTILES = (0.5, 0.9, 0.99, 0.95)  # in the order of Percentiles' fields
_LIKE_ESCAPE = "!"
_REDACTED = "<redacted>"
EVAL_VERDICT = "eval_verdict"


# --- results -------------------------------------------------------------------------------------------------


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


# --- the store -----------------------------------------------------------------------------------------------


@dataclass
class _Rows:
    call: dict[str, Any]
    turns: list[dict[str, Any]] = field(default_factory=list)
    barge_ins: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    tags: list[dict[str, Any]] = field(default_factory=list)


class CallStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._known_versions: set[tuple[str, str]] = set()

    # --- writing ---------------------------------------------------------------------------------------------

    async def save(self, record: rec.CallRecord, prompt: Prompt | None = None) -> None:
        """Insert or replace everything about the call: however often a call is saved, one copy remains."""
        rows = _rows(record)  # one synchronous pass: a consistent snapshot even while the call mutates it
        version = None
        if prompt is not None and (prompt.name, prompt.content_hash) not in self._known_versions:
            version = await asyncio.to_thread(_version_row, prompt, rows.call["started_at"])
        now = dt.datetime.now(dt.UTC)
        # Core statements on one connection: plain executemany, none of the ORM's per-row bookkeeping.
        async with self.db.engine.begin() as conn:
            await conn.execute(self._upsert_call(), rows.call | {"first_saved_at": now, "saved_at": now, "saves": 1})
            for entity, values in (
                (m.Turn, rows.turns),
                (m.BargeIn, rows.barge_ins),
                (m.ToolUse, rows.tools),
                (m.CallEvent, rows.events),
                (m.CallTag, rows.tags),
            ):
                table = _table(entity)
                await conn.execute(delete(table).where(table.c.call_id == rows.call["call_id"]))
                if values:
                    await conn.execute(self._insert(table), values)
            if version is not None:
                await conn.execute(self._insert(_table(m.PromptVersion)).on_conflict_do_nothing(), version)
        if version is not None:
            self._known_versions.add((version["name"], version["content_hash"]))

    async def delete_calls_before(self, cutoff: dt.datetime, *, batch: int = 500) -> int:
        """Delete calls that started before `cutoff`, with their turns, barge-ins, tools, events and tags (the
        foreign keys cascade); returns how many. Batches keep each transaction, and the locks it holds, short."""
        table = _table(m.Call)
        deleted = 0
        while True:
            oldest = select(table.c.call_id).where(table.c.started_at < cutoff).limit(batch)
            async with self.db.engine.begin() as conn:
                ids = list((await conn.execute(oldest)).scalars())
                if ids:
                    await conn.execute(delete(table).where(table.c.call_id.in_(ids)))
            deleted += len(ids)
            if len(ids) < batch:
                return deleted

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if self.db.dialect == "postgresql" else sqlite.insert(table)

    def _upsert_call(self) -> postgresql.Insert | sqlite.Insert:
        """Insert the call, or update every column but its first-save time (and count the save)."""
        table = _table(m.Call)
        stmt = self._insert(table)
        keep = {"call_id", "first_saved_at", "saves"}
        updates: dict[str, Any] = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keep}
        updates["saves"] = table.c.saves + 1
        return stmt.on_conflict_do_update(index_elements=[table.c.call_id], set_=updates)

    # --- reading one call ------------------------------------------------------------------------------------

    async def has_ended(self, call_id: str) -> bool:
        """Whether a finished record of the call is stored: its stream URL must never start it again."""
        stmt = select(m.Call.ended_at).where(m.Call.call_id == call_id)
        async with self.db.sessions() as session:
            return (await session.execute(stmt)).scalar_one_or_none() is not None

    async def get_call(self, call_id: str) -> CallDetail | None:
        stmt = (
            select(m.Call)
            .where(m.Call.call_id == call_id)
            .options(
                selectinload(m.Call.turns),
                selectinload(m.Call.barge_ins),
                selectinload(m.Call.tool_uses),
                selectinload(m.Call.events),
                selectinload(m.Call.tags),
            )
        )
        async with self.db.sessions() as session:
            call = (await session.execute(stmt)).scalar_one_or_none()
        if call is None:
            return None
        tags = {t.key: t.value for t in call.tags}
        record = rec.CallRecord(
            call_id=call.call_id,
            from_number=call.from_number,
            to_number=call.to_number,
            direction=call.direction,
            prompt_name=call.prompt_name,
            prompt_hash=call.prompt_hash,
            stream_id=call.stream_id,
            started_at=call.started_at.timestamp(),
            ended_at=_epoch(call.ended_at),
            end_reason=call.end_reason,
            hung_up_by=call.hung_up_by,
            turns=[
                rec.Turn(
                    speaker=cast(rec.Speaker, t.speaker),
                    text=t.text,
                    started_at=t.started_at.timestamp(),
                    ended_at=_epoch(t.ended_at),
                    item_id=t.item_id,
                    interrupted=t.interrupted,
                    heard_ms=t.heard_ms,
                    audio_ms=t.audio_ms,
                    latency_ms=t.latency_ms,
                )
                for t in call.turns
            ],
            events=[rec.CallEvent(e.t.timestamp(), e.kind, e.detail) for e in call.events],
            barge_ins=[rec.BargeIn(b.t.timestamp(), b.item_id, b.heard_ms, b.clear_ms) for b in call.barge_ins],
            tools=[
                rec.ToolUse(
                    name=u.name,
                    arguments=u.arguments,
                    started_at=u.started_at.timestamp(),
                    ended_at=_epoch(u.ended_at),
                    ok=u.ok,
                    result=u.result,
                )
                for u in call.tool_uses
            ],
            usage=rec.Usage(
                input_text=call.input_text_tokens,
                input_audio=call.input_audio_tokens,
                input_cached=call.input_cached_tokens,
                output_text=call.output_text_tokens,
                output_audio=call.output_audio_tokens,
            ),
            cost_usd=call.cost_usd,
            recording_path=call.recording_path,
            tags=tags,
        )
        return CallDetail(_summary(call, tags), record, call.first_saved_at, call.saved_at, call.saves)

    # --- the call list ---------------------------------------------------------------------------------------

    async def list_calls(
        self,
        search: str | None = None,
        *,
        limit: int = 50,
        offset: int = 0,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        tag: tuple[str, str] | None = None,
        end_reason: str | None = None,
        prompt_name: str | None = None,
    ) -> CallPage:
        """Newest first. `search` matches numbers (ignoring spaces, dashes, brackets), the call id and what was
        said, case-insensitively; `since` is inclusive and `until` exclusive, on the call's start."""
        where = _window(since, until)
        if search and search.strip():
            where.append(_search_clause(search.strip()))
        if tag is not None:
            where.append(_has_tag(*tag))
        if end_reason is not None:
            where.append(m.Call.end_reason == end_reason)
        if prompt_name is not None:
            where.append(m.Call.prompt_name == prompt_name)
        async with self.db.sessions() as session:
            total = (await session.execute(select(func.count()).select_from(m.Call).where(*where))).scalar_one()
            stmt = (
                select(m.Call)
                .where(*where)
                .order_by(m.Call.started_at.desc(), m.Call.call_id.desc())
                .limit(max(0, limit))
                .offset(max(0, offset))
            )
            calls = list((await session.execute(stmt)).scalars())
            tags: dict[str, dict[str, str]] = defaultdict(dict)
            if calls:
                tag_rows = await session.execute(
                    select(m.CallTag.call_id, m.CallTag.key, m.CallTag.value).where(
                        m.CallTag.call_id.in_([c.call_id for c in calls])
                    )
                )
                for call_id, key, value in tag_rows:
                    tags[call_id][key] = value
        return CallPage([_summary(c, tags.get(c.call_id, {})) for c in calls], total)

    # --- aggregates ------------------------------------------------------------------------------------------

    async def summary(
        self, since: dt.datetime | None = None, until: dt.datetime | None = None, bucket: Bucket = "hour"
    ) -> Summary:
        """The dashboard: totals and latency percentiles for the window, and calls/cost/barge-ins/latency per
        time bucket (UTC) for the charts."""
        if bucket not in _BUCKET_STEP:
            raise ValueError(f"bucket must be one of {', '.join(_BUCKET_STEP)}")
        where = _window(since, until)
        key = self._bucket_expr(bucket)
        async with self.db.sessions() as session:
            stats = await self._stats(session, where)
            rows = await session.execute(
                select(
                    key.label("bucket"),
                    func.count(),
                    func.coalesce(func.sum(m.Call.cost_usd), 0.0),
                    func.coalesce(func.sum(m.Call.barge_in_count), 0),
                    func.coalesce(func.sum(m.Call.assistant_turns), 0),
                )
                .where(*where)
                .group_by(key)
                .order_by(key)
            )
            counted = {r[0]: (int(r[1]), float(r[2]), int(r[3]), int(r[4])) for r in rows}
            latencies = await self._latency_percentiles(session, where, key)
        buckets = [
            SummaryBucket(start, *counted.get(start, (0, 0.0, 0, 0)), latencies.get(start, Percentiles(0)))
            for start in _bucket_starts(sorted(counted), since, until, bucket)
        ]
        return Summary(since, until, bucket, stats, buckets)

    async def compare_runs(self, tag_key: str, run_a: str, run_b: str) -> RunComparison:
        """The same aggregates for two sets of calls tagged `tag_key=run_a` and `tag_key=run_b` (eval runs)."""
        async with self.db.sessions() as session:
            a = await self._stats(session, [_has_tag(tag_key, run_a)])
            b = await self._stats(session, [_has_tag(tag_key, run_b)])
        return RunComparison(tag_key, run_a, run_b, a, b)

    async def version_stats(self, name: str) -> dict[str, CallStats]:
        """The call aggregates of every version of a prompt (by content hash): what the Prompts page shows per
        version, so an edit's effect on latency, barge-ins, endings, tool failures and cost is visible."""
        async with self.db.sessions() as session:
            hashes = list(
                (
                    await session.execute(select(m.Call.prompt_hash).where(m.Call.prompt_name == name).distinct())
                ).scalars()
            )
            return {
                h: await self._stats(session, [m.Call.prompt_name == name, m.Call.prompt_hash == h]) for h in hashes
            }

    async def eval_results(self, name: str, run_key: str = "eval_run") -> dict[str, list[EvalRunResult]]:
        """Eval runs per version of a prompt (newest run first), with their assertion verdicts."""
        run_tag, verdict_tag = aliased(m.CallTag), aliased(m.CallTag)
        stmt = (
            select(
                m.Call.prompt_hash,
                run_tag.value,
                func.count(),
                func.coalesce(func.sum(case((verdict_tag.value == "pass", 1), else_=0)), 0),
                func.coalesce(func.sum(case((verdict_tag.value == "fail", 1), else_=0)), 0),
                func.min(m.Call.started_at),
            )
            .join(run_tag, (run_tag.call_id == m.Call.call_id) & (run_tag.key == run_key))
            .outerjoin(verdict_tag, (verdict_tag.call_id == m.Call.call_id) & (verdict_tag.key == EVAL_VERDICT))
            .where(m.Call.prompt_name == name)
            .group_by(m.Call.prompt_hash, run_tag.value)
        )
        out: dict[str, list[EvalRunResult]] = defaultdict(list)
        async with self.db.sessions() as session:
            for content_hash, run, calls, passed, failed, first in await session.execute(stmt):
                out[content_hash].append(EvalRunResult(run, int(calls), int(passed), int(failed), first))
        for runs in out.values():
            runs.sort(key=lambda r: (r.first_call, r.run), reverse=True)
        return dict(out)

    async def experiment_arms(self, experiment: str) -> dict[str, ArmData]:
        """Both arms of an experiment (calls tagged `experiment=<name>` and `arm=control|candidate`)."""
        out: dict[str, ArmData] = {}
        async with self.db.sessions() as session:
            for arm in ("control", "candidate"):
                where = [_has_tag("experiment", experiment), _has_tag("arm", arm)]
                stats = await self._stats(session, where)
                latencies = (
                    select(m.Turn.call_id, m.Turn.latency_ms)
                    .join_from(m.Turn, m.Call, m.Turn.call_id == m.Call.call_id)
                    .where(m.Turn.speaker == "assistant", m.Turn.latency_ms.is_not(None), *where)
                    .order_by(m.Turn.call_id, m.Turn.seq)
                )
                per_call: dict[str, list[float]] = defaultdict(list)
                for call_id, value in await session.execute(latencies):
                    if value is not None:
                        per_call[call_id].append(float(value))
                out[arm] = ArmData(arm, stats, list(per_call.values()))
        return out

    async def add_tags(self, call_id: str, tags: Mapping[str, str]) -> None:
        """Add (or replace) tags on a stored call: the eval tool's verdict, known only after the call ended."""
        table = _table(m.CallTag)
        rows = [
            {"call_id": call_id, "key": _cut(str(k), m.SHORT_LEN), "value": _cut(str(v), m.TAG_VALUE_LEN)}
            for k, v in tags.items()
        ]
        if not rows:
            return
        async with self.db.engine.begin() as conn:
            await conn.execute(
                delete(table).where(table.c.call_id == call_id, table.c.key.in_([r["key"] for r in rows]))
            )
            await conn.execute(self._insert(table), rows)

    async def tag_values(self, tag_key: str) -> list[tuple[str, int]]:
        """Values of a tag with their call counts, most calls first: the eval runs there are to compare."""
        stmt = (
            select(m.CallTag.value, func.count())
            .where(m.CallTag.key == tag_key)
            .group_by(m.CallTag.value)
            .order_by(func.count().desc(), m.CallTag.value)
        )
        async with self.db.sessions() as session:
            return [(value, int(count)) for value, count in await session.execute(stmt)]

    async def _stats(self, session: AsyncSession, where: Sequence[ColumnElement[bool]]) -> CallStats:
        totals = (
            await session.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(m.Call.cost_usd), 0.0),
                    func.avg(m.Call.cost_usd),
                    func.avg(m.Call.duration_s),
                    func.avg(m.Call.turn_count),
                    func.coalesce(func.sum(m.Call.assistant_turns), 0),
                    func.coalesce(func.sum(m.Call.interrupted_turns), 0),
                    func.coalesce(func.sum(m.Call.barge_in_count), 0),
                    func.coalesce(func.sum(case((m.Call.barge_in_count > 0, 1), else_=0)), 0),
                    func.coalesce(func.sum(m.Call.tool_count), 0),
                    func.coalesce(func.sum(m.Call.tool_failures), 0),
                ).where(*where)
            )
        ).one()
        calls, cost, mean_cost, mean_duration, mean_turns, answers, interrupted, barge_ins, barged, tools, failed = (
            totals
        )
        reasons = await session.execute(
            select(func.coalesce(m.Call.end_reason, "unknown"), func.count()).where(*where).group_by(m.Call.end_reason)
        )
        who = await session.execute(
            select(func.coalesce(m.Call.hung_up_by, "unknown"), func.count()).where(*where).group_by(m.Call.hung_up_by)
        )
        latency = (await self._latency_percentiles(session, where, None)).get(None, Percentiles(0))
        return CallStats(
            calls=int(calls),
            latency_ms=latency,
            assistant_turns=int(answers),
            interrupted_turns=int(interrupted),
            barge_ins=int(barge_ins),
            calls_with_barge_in=int(barged),
            barge_in_rate=int(barge_ins) / int(answers) if answers else None,
            total_cost_usd=round(float(cost), 6),
            mean_cost_usd=_float(mean_cost),
            mean_duration_s=_float(mean_duration),
            mean_turns=_float(mean_turns),
            tool_calls=int(tools),
            tool_failures=int(failed),
            end_reasons=_counts(reasons),
            hung_up_by=_counts(who),
        )

    async def _latency_percentiles(
        self, session: AsyncSession, where: Sequence[ColumnElement[bool]], key: ColumnElement[Any] | None
    ) -> dict[Any, Percentiles]:
        """Response-latency p50/p90/p99 of assistant answers, per `key` (None: one group, keyed None)."""
        value = m.Turn.latency_ms
        keys: list[ColumnElement[Any]] = [key.label("k")] if key is not None else []
        base = [m.Turn.speaker == "assistant", value.is_not(None), *where]
        if self.db.dialect == "postgresql":
            stmt = (
                select(
                    *keys,
                    func.count(value),
                    *(func.percentile_cont(literal_column(repr(q))).within_group(value) for q in _QUANTILES),
                )
                .join_from(m.Turn, m.Call, m.Turn.call_id == m.Call.call_id)
                .where(*base)
            )
            if key is not None:
                stmt = stmt.group_by(key)
            result: dict[Any, Percentiles] = {}
            for row in await session.execute(stmt):
                k, rest = (row[0], row[1:]) if key is not None else (None, row)
                if rest[0]:
                    result[k] = Percentiles(int(rest[0]), *(round(float(v), 1) for v in rest[1:]))
            return result
        stmt = select(*keys, value).join_from(m.Turn, m.Call, m.Turn.call_id == m.Call.call_id).where(*base)
        groups: dict[Any, list[float]] = defaultdict(list)
        for row in await session.execute(stmt):
            groups[row[0] if key is not None else None].append(float(row[-1]))
        return {k: _percentiles(v) for k, v in groups.items()}

    def _bucket_expr(self, bucket: Bucket) -> ColumnElement[dt.datetime]:
        """Start of the call's UTC time bucket. Literal SQL (from a fixed set) rather than bound parameters, so
        PostgreSQL sees the GROUP BY expression as the same one as in the select list."""
        if self.db.dialect == "postgresql":
            expr = func.date_trunc(
                literal_column(f"'{bucket}'"), func.timezone(literal_column("'UTC'"), m.Call.started_at)
            )
        else:
            expr = func.strftime(literal_column(f"'{_SQLITE_BUCKET_FORMAT[bucket]}'"), m.Call.started_at)
        return type_coerce(expr, m.UtcDateTime())

    # --- prompt versions -------------------------------------------------------------------------------------

    async def prompt_versions(self, name: str) -> list[PromptVersionInfo]:
        """Every version of a prompt seen on calls, oldest first, with when it was first/last used and by how
        many calls, and its text where it was stored."""
        seen = (
            select(
                m.Call.prompt_hash,
                func.count(),
                func.min(m.Call.started_at),
                func.max(m.Call.started_at),
            )
            .where(m.Call.prompt_name == name)
            .group_by(m.Call.prompt_hash)
        )
        async with self.db.sessions() as session:
            usage = {h: (int(n), first, last) for h, n, first, last in await session.execute(seen)}
            stored = {
                v.content_hash: v
                for v in (await session.execute(select(m.PromptVersion).where(m.PromptVersion.name == name))).scalars()
            }
        versions = []
        for content_hash in usage.keys() | stored.keys():
            calls, first, last = usage.get(content_hash, (0, None, None))
            version = stored.get(content_hash)
            first_seen = first or (version.first_seen if version else None)
            assert first_seen is not None
            versions.append(
                PromptVersionInfo(
                    name=name,
                    content_hash=content_hash,
                    first_seen=first_seen,
                    last_seen=last,
                    calls=calls,
                    instructions=version.instructions if version else None,
                    meta=version.meta if version else None,
                    from_source=version.from_source if version else False,
                )
            )
        return sorted(versions, key=lambda v: (v.first_seen, v.content_hash))

    async def prompt_version(self, name: str, content_hash: str) -> PromptVersionInfo | None:
        return next((v for v in await self.prompt_versions(name) if v.content_hash == content_hash), None)

    async def diff_prompt_versions(self, name: str, old_hash: str, new_hash: str, context: int = 3) -> str:
        """A unified diff between two stored versions of a prompt (front matter and instructions)."""
        versions = {v.content_hash: v for v in await self.prompt_versions(name)}
        texts = []
        for content_hash in (old_hash, new_hash):
            version = versions.get(content_hash)
            if version is None or version.text is None:
                raise KeyError(f"prompt {name!r} version {content_hash} is not stored")
            texts.append(version.text)
        return "".join(
            difflib.unified_diff(
                texts[0].splitlines(keepends=True),
                texts[1].splitlines(keepends=True),
                fromfile=f"{name}@{old_hash}",
                tofile=f"{name}@{new_hash}",
                n=context,
            )
        )


# --- record -> rows ------------------------------------------------------------------------------------------


def _table(entity: type[m.Base]) -> Table:
    table = entity.__table__
    assert isinstance(table, Table)
    return table


def _rows(record: rec.CallRecord) -> _Rows:
    call_id = _cut(record.call_id, m.ID_LEN)
    started = _time(record.started_at)
    ended = _time(record.ended_at) if record.ended_at is not None else None
    usage = record.usage
    turns = [
        {
            "call_id": call_id,
            "seq": seq,
            "speaker": _cut(t.speaker, 16),
            "text": _text(t.text),
            "started_at": _time(t.started_at),
            "ended_at": _time(t.ended_at) if t.ended_at is not None else None,
            "item_id": _cut(t.item_id, m.ID_LEN) if t.item_id is not None else None,
            "interrupted": bool(t.interrupted),
            "heard_ms": _finite(t.heard_ms),
            "audio_ms": _finite(t.audio_ms),
            "latency_ms": _finite(t.latency_ms),
        }
        for seq, t in enumerate(record.turns)
    ]
    call = {
        "call_id": call_id,
        "from_number": _cut(record.from_number, m.NUMBER_LEN),
        "to_number": _cut(record.to_number, m.NUMBER_LEN),
        "direction": _cut(record.direction, m.SHORT_LEN),
        "stream_id": _cut(record.stream_id, m.ID_LEN),
        "prompt_name": _cut(record.prompt_name, m.SHORT_LEN),
        "prompt_hash": _cut(record.prompt_hash, m.SHORT_LEN),
        "started_at": started,
        "ended_at": ended,
        "duration_s": round(record.ended_at - record.started_at, 3) if record.ended_at is not None else None,
        "end_reason": _cut(record.end_reason, m.SHORT_LEN) if record.end_reason is not None else None,
        "hung_up_by": _cut(record.hung_up_by, m.SHORT_LEN) if record.hung_up_by is not None else None,
        "input_text_tokens": usage.input_text,
        "input_audio_tokens": usage.input_audio,
        "input_cached_tokens": usage.input_cached,
        "output_text_tokens": usage.output_text,
        "output_audio_tokens": usage.output_audio,
        "cost_usd": _finite(record.cost_usd) or 0.0,
        "recording_path": _text(record.recording_path) if record.recording_path else None,
        "turn_count": len(record.turns),
        "assistant_turns": sum(1 for t in record.turns if t.speaker == "assistant"),
        "interrupted_turns": sum(1 for t in record.turns if t.interrupted),
        "barge_in_count": len(record.barge_ins),
        "tool_count": len(record.tools),
        "tool_failures": sum(1 for u in record.tools if u.ok is False),
        "event_count": len(record.events),
    }
    return _Rows(
        call=call,
        turns=turns,
        barge_ins=[
            {
                "call_id": call_id,
                "seq": seq,
                "t": _time(b.t),
                "item_id": _cut(b.item_id, m.ID_LEN) if b.item_id is not None else None,
                "heard_ms": _finite(b.heard_ms) or 0.0,
                "clear_ms": _finite(b.clear_ms) or 0.0,
            }
            for seq, b in enumerate(record.barge_ins)
        ],
        tools=[
            {
                "call_id": call_id,
                "seq": seq,
                "name": _cut(u.name, m.ID_LEN),
                "arguments": _json_object(u.arguments),
                "started_at": _time(u.started_at),
                "ended_at": _time(u.ended_at) if u.ended_at is not None else None,
                "ok": u.ok,
                "result": _text(u.result) if u.result is not None else None,
            }
            for seq, u in enumerate(record.tools)
        ],
        events=[
            {
                "call_id": call_id,
                "seq": seq,
                "t": _time(e.t),
                "kind": _cut(e.kind, m.SHORT_LEN),
                "detail": _json_object(e.detail),
            }
            for seq, e in enumerate(list(record.events))
        ],
        tags=[
            {"call_id": call_id, "key": _cut(str(k), m.SHORT_LEN), "value": _cut(str(v), m.TAG_VALUE_LEN)}
            for k, v in dict(record.tags).items()
        ],
    )


def _version_row(prompt: Prompt, seen: dt.datetime) -> dict[str, Any]:
    """The version to store for a prompt: the file's own template when it still matches the call's hash.

    The prompt a call holds has `{{caller}}`/`{{now}}` filled in, so storing its instructions would put one
    caller's number and the time into the "version"; re-reading the file (in a worker thread) avoids that.
    """
    instructions, meta, from_source = prompt.instructions, prompt.meta, False
    if prompt.source and not prompt.source.startswith("<"):
        try:
            source = parse_prompt(prompt.name, Path(prompt.source).read_text(encoding="utf-8"), prompt.source)
            if source.content_hash == prompt.content_hash:
                instructions, meta, from_source = source.instructions, source.meta, True
        except (OSError, UnicodeDecodeError, PromptError):
            pass
    return {
        "name": _cut(prompt.name, m.SHORT_LEN),
        "content_hash": _cut(prompt.content_hash, m.SHORT_LEN),
        "instructions": _text(instructions),
        "meta": redact_headers(_json_object(meta.model_dump(mode="json"))),
        "from_source": from_source,
        "first_seen": seen,
    }


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


# --- query helpers -------------------------------------------------------------------------------------------


def _window(since: dt.datetime | None, until: dt.datetime | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if since is not None:
        where.append(m.Call.started_at >= since)
    if until is not None:
        where.append(m.Call.started_at < until)
    return where


def _has_tag(key: str, value: str) -> ColumnElement[bool]:
    return exists().where(m.CallTag.call_id == m.Call.call_id, m.CallTag.key == key, m.CallTag.value == value)


def _like(text: str) -> str:
    escaped = (
        text.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2).replace("%", f"{_LIKE_ESCAPE}%").replace("_", f"{_LIKE_ESCAPE}_")
    )
    return f"%{escaped}%"


def _search_clause(query: str) -> ColumnElement[bool]:
    pattern = _like(query)
    options: list[ColumnElement[bool]] = [
        m.Call.call_id.ilike(pattern, escape=_LIKE_ESCAPE),
        m.Call.from_number.ilike(pattern, escape=_LIKE_ESCAPE),
        m.Call.to_number.ilike(pattern, escape=_LIKE_ESCAPE),
        exists().where(m.Turn.call_id == m.Call.call_id, m.Turn.text.ilike(pattern, escape=_LIKE_ESCAPE)),
    ]
    digits = re.sub(r"[\s\-().+/]", "", query)
    if digits != query and digits.isdigit() and len(digits) >= 3:
        # "(555) 123-4567" finds +15551234567.
        options += [m.Call.from_number.like(f"%{digits}%"), m.Call.to_number.like(f"%{digits}%")]
    return or_(*options)


def _bucket_starts(
    present: list[dt.datetime], since: dt.datetime | None, until: dt.datetime | None, bucket: Bucket
) -> list[dt.datetime]:
    """Every bucket start from the window's (or the data's) first to its last, so charts show empty hours."""
    step = _BUCKET_STEP[bucket]
    first = _floor(since, bucket) if since is not None else (present[0] if present else None)
    last = (
        _floor(until - dt.timedelta(microseconds=1), bucket)
        if until is not None
        else (present[-1] if present else None)
    )
    if first is None or last is None or last < first or (last - first) / step >= _MAX_FILLED_BUCKETS:
        return present
    starts, t = [], first
    while t <= last:
        starts.append(t)
        t += step
    return starts


def _floor(t: dt.datetime, bucket: Bucket) -> dt.datetime:
    t = t.astimezone(dt.UTC).replace(second=0, microsecond=0)
    if bucket in ("hour", "day"):
        t = t.replace(minute=0)
    if bucket == "day":
        t = t.replace(hour=0)
    return t


def _percentiles(values: Iterable[float]) -> Percentiles:
    """The shared percentile (linear interpolation between closest ranks): what PostgreSQL's percentile_cont
    computes, so SQLite and PostgreSQL give the same numbers."""
    ordered = sorted(values)
    if not ordered:
        return Percentiles(0)
    return Percentiles(len(ordered), *(percentile(ordered, q * 100) for q in _QUANTILES))


def _counts(rows: Iterable[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key, n in rows:
        counts[str(key)] = counts.get(str(key), 0) + int(n)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _summary(call: m.Call, tags: Mapping[str, str]) -> CallSummary:
    return CallSummary(
        call_id=call.call_id,
        from_number=call.from_number,
        to_number=call.to_number,
        direction=call.direction,
        prompt_name=call.prompt_name,
        prompt_hash=call.prompt_hash,
        started_at=call.started_at,
        ended_at=call.ended_at,
        duration_s=call.duration_s,
        end_reason=call.end_reason,
        hung_up_by=call.hung_up_by,
        turn_count=call.turn_count,
        assistant_turns=call.assistant_turns,
        interrupted_turns=call.interrupted_turns,
        barge_in_count=call.barge_in_count,
        tool_count=call.tool_count,
        tool_failures=call.tool_failures,
        cost_usd=call.cost_usd,
        recording_path=call.recording_path,
        tags=dict(tags),
    )


# --- value cleaning: a save must never fail on an odd value ----------------------------------------------------


def _time(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def _epoch(t: dt.datetime | None) -> float | None:
    return t.timestamp() if t is not None else None


def _float(value: Any) -> float | None:
    return float(value) if value is not None else None


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL characters."""
    return value.replace("\x00", "")


def _cut(value: str, length: int) -> str:
    return _text(value)[:length]


def plain_json(value: Any) -> Any:
    """Plain JSON for any event detail: NaN/inf become null (PostgreSQL rejects them), unknown types their str."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, Mapping):
        return {_text(str(k)): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain_json(v) for v in value]
    return _text(str(value))


def _json_object(value: Any) -> dict[str, Any]:
    cleaned = plain_json(value)
    return cleaned if isinstance(cleaned, dict) else {"value": cleaned}


__all__ = [
    "EVAL_VERDICT",
    "ArmData",
    "Bucket",
    "CallDetail",
    "CallPage",
    "CallStats",
    "CallStore",
    "CallSummary",
    "EvalRunResult",
    "Percentiles",
    "PromptVersionInfo",
    "RunComparison",
    "Summary",
    "SummaryBucket",
]
