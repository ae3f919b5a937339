"""Eval runs and experiments: calls grouped by their tags (run, verdict, experiment arm) and compared.

The eval tool tags each call it places (`eval_run=<run>`, then `eval_verdict=pass|fail` once it has judged the
call); experiments tag `experiment=<name>` and `arm=control|candidate`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from sqlalchemy import case, delete, func, select

from agent.storage import tables as t
from agent.storage.call_results import ArmData, EvalRunResult, RunComparison
from agent.storage.call_stats import StatsQueries
from agent.storage.cleaning import cut
from agent.storage.store_base import has_tag

EVAL_VERDICT = "eval_verdict"


class EvalQueries(StatsQueries):
    async def compare_runs(self, tag_key: str, run_a: str, run_b: str) -> RunComparison:
        """The same aggregates for two sets of calls tagged `tag_key=run_a` and `tag_key=run_b` (eval runs)."""
        async with self.db.engine.connect() as conn:
            a = await self._stats(conn, [has_tag(tag_key, run_a)])
            b = await self._stats(conn, [has_tag(tag_key, run_b)])
        return RunComparison(tag_key, run_a, run_b, a, b)

    async def eval_results(self, name: str, run_key: str = "eval_run") -> dict[str, list[EvalRunResult]]:
        """Eval runs per version of a prompt (newest run first), with their assertion verdicts."""
        c = t.calls.c
        run_tags, verdict_tags = t.call_tags.alias("run_tag"), t.call_tags.alias("verdict_tag")
        run, verdict = run_tags.c, verdict_tags.c
        stmt = (
            select(
                c.prompt_hash,
                run.value,
                func.count(),
                func.coalesce(func.sum(case((verdict.value == "pass", 1), else_=0)), 0),
                func.coalesce(func.sum(case((verdict.value == "fail", 1), else_=0)), 0),
                func.min(c.started_at),
            )
            .select_from(
                t.calls.join(run_tags, (run.call_id == c.call_id) & (run.key == run_key)).outerjoin(
                    verdict_tags, (verdict.call_id == c.call_id) & (verdict.key == EVAL_VERDICT)
                )
            )
            .where(c.prompt_name == name)
            .group_by(c.prompt_hash, run.value)
        )
        out: dict[str, list[EvalRunResult]] = defaultdict(list)
        async with self.db.engine.connect() as conn:
            for content_hash, run, calls, passed, failed, first in await conn.execute(stmt):
                out[content_hash].append(EvalRunResult(run, int(calls), int(passed), int(failed), first))
        for runs in out.values():
            runs.sort(key=lambda r: (r.first_call, r.run), reverse=True)
        return dict(out)

    async def experiment_arms(self, experiment: str) -> dict[str, ArmData]:
        """Both arms of an experiment (calls tagged `experiment=<name>` and `arm=control|candidate`)."""
        out: dict[str, ArmData] = {}
        async with self.db.engine.connect() as conn:
            for arm in ("control", "candidate"):
                where = [has_tag("experiment", experiment), has_tag("arm", arm)]
                stats = await self._stats(conn, where)
                latencies = (
                    select(t.turns.c.call_id, t.turns.c.latency_ms)
                    .join_from(t.turns, t.calls, t.turns.c.call_id == t.calls.c.call_id)
                    .where(t.turns.c.speaker == "assistant", t.turns.c.latency_ms.is_not(None), *where)
                    .order_by(t.turns.c.call_id, t.turns.c.seq)
                )
                per_call: dict[str, list[float]] = defaultdict(list)
                for call_id, value in await conn.execute(latencies):
                    if value is not None:
                        per_call[call_id].append(float(value))
                out[arm] = ArmData(arm, stats, list(per_call.values()))
        return out

    async def add_tags(self, call_id: str, tags: Mapping[str, str]) -> None:
        """Add (or replace) tags on a stored call: the eval tool's verdict, known only after the call ended."""
        table = t.call_tags
        rows = [
            {"call_id": call_id, "key": cut(str(k), t.SHORT_LEN), "value": cut(str(v), t.TAG_VALUE_LEN)}
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
            select(t.call_tags.c.value, func.count())
            .where(t.call_tags.c.key == tag_key)
            .group_by(t.call_tags.c.value)
            .order_by(func.count().desc(), t.call_tags.c.value)
        )
        async with self.db.engine.connect() as conn:
            return [(value, int(count)) for value, count in await conn.execute(stmt)]
