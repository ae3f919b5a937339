"""Aggregates over calls: the dashboard summary per time bucket, and the same statistics per prompt version.

Aggregates are computed by the database where both databases can (counts, sums, grouping by time bucket).
Percentiles use `percentile_cont` on PostgreSQL; SQLite has no percentile function, so there the values are
fetched and interpolated the same way (linear, as `percentile_cont` does), giving identical numbers.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, case, func, literal_column, select, type_coerce

from agent.stats import percentile
from agent.storage import tables as t
from agent.storage.aio import AsyncConnection
from agent.storage.call_results import Bucket, CallStats, Percentiles, Summary, SummaryBucket
from agent.storage.cleaning import as_float
from agent.storage.store_base import StoreBase, in_window

_BUCKET_STEP = {"minute": dt.timedelta(minutes=1), "hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1)}
_SQLITE_BUCKET_FORMAT = {"minute": "%Y-%m-%d %H:%M:00", "hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00"}
_MAX_FILLED_BUCKETS = 10_000
_QUANTILES = (0.5, 0.9, 0.99, 0.95)  # in the order of Percentiles' fields


class StatsQueries(StoreBase):
    async def summary(
        self, since: dt.datetime | None = None, until: dt.datetime | None = None, bucket: Bucket = "hour"
    ) -> Summary:
        """The dashboard: totals and latency percentiles for the window, and calls/cost/barge-ins/latency per
        time bucket (UTC) for the charts."""
        if bucket not in _BUCKET_STEP:
            raise ValueError(f"bucket must be one of {', '.join(_BUCKET_STEP)}")
        where = in_window(since, until)
        key = self._bucket_expr(bucket)
        async with self.db.engine.connect() as conn:
            stats = await self._stats(conn, where)
            rows = await conn.execute(
                select(
                    key.label("bucket"),
                    func.count(),
                    func.coalesce(func.sum(t.calls.c.cost_usd), 0.0),
                    func.coalesce(func.sum(t.calls.c.barge_in_count), 0),
                    func.coalesce(func.sum(t.calls.c.assistant_turns), 0),
                )
                .where(*where)
                .group_by(key)
                .order_by(key)
            )
            counted = {r[0]: (int(r[1]), float(r[2]), int(r[3]), int(r[4])) for r in rows}
            latencies = await self._latency_percentiles(conn, where, key)
        buckets = [
            SummaryBucket(start, *counted.get(start, (0, 0.0, 0, 0)), latencies.get(start, Percentiles(0)))
            for start in _bucket_starts(sorted(counted), since, until, bucket)
        ]
        return Summary(since, until, bucket, stats, buckets)

    async def version_stats(self, name: str) -> dict[str, CallStats]:
        """The call aggregates of every version of a prompt (by content hash): what the Prompts page shows per
        version, so an edit's effect on latency, barge-ins, endings, tool failures and cost is visible."""
        async with self.db.engine.connect() as conn:
            hashes = list(
                (
                    await conn.execute(select(t.calls.c.prompt_hash).where(t.calls.c.prompt_name == name).distinct())
                ).scalars()
            )
            return {
                h: await self._stats(conn, [t.calls.c.prompt_name == name, t.calls.c.prompt_hash == h]) for h in hashes
            }

    async def _stats(self, conn: AsyncConnection, where: Sequence[ColumnElement[bool]]) -> CallStats:
        totals = (
            await conn.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(t.calls.c.cost_usd), 0.0),
                    func.avg(t.calls.c.cost_usd),
                    func.avg(t.calls.c.duration_s),
                    func.avg(t.calls.c.turn_count),
                    func.coalesce(func.sum(t.calls.c.assistant_turns), 0),
                    func.coalesce(func.sum(t.calls.c.interrupted_turns), 0),
                    func.coalesce(func.sum(t.calls.c.barge_in_count), 0),
                    func.coalesce(func.sum(case((t.calls.c.barge_in_count > 0, 1), else_=0)), 0),
                    func.coalesce(func.sum(t.calls.c.tool_count), 0),
                    func.coalesce(func.sum(t.calls.c.tool_failures), 0),
                ).where(*where)
            )
        ).one()
        calls, cost, mean_cost, mean_duration, mean_turns, answers, interrupted, barge_ins, barged, tools, failed = (
            totals
        )
        reasons = await conn.execute(
            select(func.coalesce(t.calls.c.end_reason, "unknown"), func.count())
            .where(*where)
            .group_by(t.calls.c.end_reason)
        )
        who = await conn.execute(
            select(func.coalesce(t.calls.c.hung_up_by, "unknown"), func.count())
            .where(*where)
            .group_by(t.calls.c.hung_up_by)
        )
        latency = (await self._latency_percentiles(conn, where, None)).get(None, Percentiles(0))
        return CallStats(
            calls=int(calls),
            latency_ms=latency,
            assistant_turns=int(answers),
            interrupted_turns=int(interrupted),
            barge_ins=int(barge_ins),
            calls_with_barge_in=int(barged),
            barge_in_rate=int(barge_ins) / int(answers) if answers else None,
            total_cost_usd=round(float(cost), 6),
            mean_cost_usd=as_float(mean_cost),
            mean_duration_s=as_float(mean_duration),
            mean_turns=as_float(mean_turns),
            tool_calls=int(tools),
            tool_failures=int(failed),
            end_reasons=_counts(reasons),
            hung_up_by=_counts(who),
        )

    async def _latency_percentiles(
        self, conn: AsyncConnection, where: Sequence[ColumnElement[bool]], key: ColumnElement[Any] | None
    ) -> dict[Any, Percentiles]:
        """Response-latency p50/p90/p99 of assistant answers, per `key` (None: one group, keyed None)."""
        value = t.turns.c.latency_ms
        keys: list[ColumnElement[Any]] = [key.label("k")] if key is not None else []
        base = [t.turns.c.speaker == "assistant", value.is_not(None), *where]
        if self.db.dialect == "postgresql":
            stmt = (
                select(
                    *keys,
                    func.count(value),
                    *(func.percentile_cont(literal_column(repr(q))).within_group(value) for q in _QUANTILES),
                )
                .join_from(t.turns, t.calls, t.turns.c.call_id == t.calls.c.call_id)
                .where(*base)
            )
            if key is not None:
                stmt = stmt.group_by(key)
            result: dict[Any, Percentiles] = {}
            for row in await conn.execute(stmt):
                k, rest = (row[0], row[1:]) if key is not None else (None, row)
                if rest[0]:
                    result[k] = Percentiles(int(rest[0]), *(round(float(v), 1) for v in rest[1:]))
            return result
        stmt = select(*keys, value).join_from(t.turns, t.calls, t.turns.c.call_id == t.calls.c.call_id).where(*base)
        groups: dict[Any, list[float]] = defaultdict(list)
        for row in await conn.execute(stmt):
            groups[row[0] if key is not None else None].append(float(row[-1]))
        return {k: _percentiles(v) for k, v in groups.items()}

    def _bucket_expr(self, bucket: Bucket) -> ColumnElement[dt.datetime]:
        """Start of the call's UTC time bucket. Literal SQL (from a fixed set) rather than bound parameters, so
        PostgreSQL sees the GROUP BY expression as the same one as in the select list."""
        if self.db.dialect == "postgresql":
            expr = func.date_trunc(
                literal_column(f"'{bucket}'"), func.timezone(literal_column("'UTC'"), t.calls.c.started_at)
            )
        else:
            expr = func.strftime(literal_column(f"'{_SQLITE_BUCKET_FORMAT[bucket]}'"), t.calls.c.started_at)
        return type_coerce(expr, t.UtcDateTime())


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
