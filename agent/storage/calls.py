"""The call store: saving call records, reading one back, and the call list.

`save` is an idempotent upsert: a call is saved when it ends and again when a late hangup webhook refines it,
so the call row is upserted and its turns, barge-ins, tools, events and tags are replaced in the same
transaction (on PostgreSQL the upsert's row lock also orders two replicas saving the same call).

`CallStore` also carries the queries of its other parts: statistics (`agent.storage.call_stats`), eval runs and
experiments (`agent.storage.call_evals`) and prompt versions (`agent.storage.prompt_versions`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Row, delete, exists, func, or_, select

from agent.prompts.loader import Prompt
from agent.records import record as rec
from agent.storage import tables as t
from agent.storage.call_evals import EvalQueries
from agent.storage.call_results import CallDetail, CallPage
from agent.storage.call_rows import StoredRows, call_summary, record_rows, stored_record
from agent.storage.database import Database
from agent.storage.prompt_versions import PromptVersionQueries, version_row
from agent.storage.store_base import has_tag, in_window

if TYPE_CHECKING:
    from sqlalchemy.dialects.postgresql import Insert as PgInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert

log = logging.getLogger("agent.storage")

_LIKE_ESCAPE = "!"


class CallStore(EvalQueries, PromptVersionQueries):
    def __init__(self, db: Database) -> None:
        self.db = db
        self._known_versions: set[tuple[str, str]] = set()

    # --- writing ---------------------------------------------------------------------------------------------

    async def save(self, record: rec.CallRecord, prompt: Prompt | None = None) -> None:
        """Insert or replace everything about the call: however often a call is saved, one copy remains."""
        rows = record_rows(record)  # one synchronous pass: a consistent snapshot even while the call mutates it
        version = None
        if prompt is not None and (prompt.name, prompt.content_hash) not in self._known_versions:
            version = await asyncio.to_thread(version_row, prompt, rows.call["started_at"])
        now = dt.datetime.now(dt.UTC)
        # Core statements on one connection: plain executemany, none of the ORM's per-row bookkeeping.
        async with self.db.engine.begin() as conn:
            await conn.execute(self._upsert_call(), rows.call | {"first_saved_at": now, "saved_at": now, "saves": 1})
            for table, values in (
                (t.turns, rows.turns),
                (t.barge_ins, rows.barge_ins),
                (t.tool_uses, rows.tools),
                (t.call_events, rows.events),
                (t.call_tags, rows.tags),
            ):
                await conn.execute(delete(table).where(table.c.call_id == rows.call["call_id"]))
                if values:
                    await conn.execute(self._insert(table), values)
            if version is not None:
                await conn.execute(self._insert(t.prompt_versions).on_conflict_do_nothing(), version)
        if version is not None:
            self._known_versions.add((version["name"], version["content_hash"]))

    async def delete_calls_before(self, cutoff: dt.datetime, *, batch: int = 500) -> int:
        """Delete calls that started before `cutoff`, with their turns, barge-ins, tools, events and tags (the
        foreign keys cascade); returns how many. Batches keep each transaction, and the locks it holds, short."""
        table = t.calls
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

    def _upsert_call(self) -> PgInsert | SqliteInsert:
        """Insert the call, or update every column but its first-save time (and count the save)."""
        table = t.calls
        stmt = self._insert(table)
        keep = {"call_id", "first_saved_at", "saves"}
        updates: dict[str, Any] = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keep}
        updates["saves"] = table.c.saves + 1
        return stmt.on_conflict_do_update(index_elements=[table.c.call_id], set_=updates)

    # --- reading one call ------------------------------------------------------------------------------------

    async def has_ended(self, call_id: str) -> bool:
        """Whether a finished record of the call is stored: its stream URL must never start it again."""
        stmt = select(t.calls.c.ended_at).where(t.calls.c.call_id == call_id)
        async with self.db.engine.connect() as conn:
            return (await conn.execute(stmt)).scalar_one_or_none() is not None

    async def get_call(self, call_id: str) -> CallDetail | None:
        async with self.db.engine.connect() as conn:
            call = (await conn.execute(select(t.calls).where(t.calls.c.call_id == call_id))).one_or_none()
            if call is None:
                return None
            children: dict[str, list[Row[Any]]] = {}
            for table in t.CHILD_TABLES:
                stmt = select(table).where(table.c.call_id == call_id)
                if "seq" in table.c:
                    stmt = stmt.order_by(table.c.seq)
                children[table.name] = list(await conn.execute(stmt))
        tags = {row.key: row.value for row in children["call_tags"]}
        stored = StoredRows(
            call, children["turns"], children["barge_ins"], children["tool_uses"], children["call_events"], tags
        )
        return CallDetail(
            call_summary(call, tags), stored_record(stored), call.first_saved_at, call.saved_at, call.saves
        )

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
        where = in_window(since, until)
        c = t.calls.c
        if search and search.strip():
            where.append(_search_clause(search.strip()))
        if tag is not None:
            where.append(has_tag(*tag))
        if end_reason is not None:
            where.append(c.end_reason == end_reason)
        if prompt_name is not None:
            where.append(c.prompt_name == prompt_name)
        async with self.db.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(t.calls).where(*where))).scalar_one()
            stmt = (
                select(t.calls)
                .where(*where)
                .order_by(c.started_at.desc(), c.call_id.desc())
                .limit(max(0, limit))
                .offset(max(0, offset))
            )
            calls = list(await conn.execute(stmt))
            tags: dict[str, dict[str, str]] = defaultdict(dict)
            if calls:
                tagged = t.call_tags.c
                tag_rows = await conn.execute(
                    select(tagged.call_id, tagged.key, tagged.value).where(
                        tagged.call_id.in_([row.call_id for row in calls])
                    )
                )
                for call_id, key, value in tag_rows:
                    tags[call_id][key] = value
        return CallPage([call_summary(row, tags.get(row.call_id, {})) for row in calls], total)


def _like(text: str) -> str:
    escaped = (
        text.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2).replace("%", f"{_LIKE_ESCAPE}%").replace("_", f"{_LIKE_ESCAPE}_")
    )
    return f"%{escaped}%"


def _search_clause(query: str) -> ColumnElement[bool]:
    pattern = _like(query)
    c, turn = t.calls.c, t.turns.c
    options: list[ColumnElement[bool]] = [
        c.call_id.ilike(pattern, escape=_LIKE_ESCAPE),
        c.from_number.ilike(pattern, escape=_LIKE_ESCAPE),
        c.to_number.ilike(pattern, escape=_LIKE_ESCAPE),
        exists().where(turn.call_id == c.call_id, turn.text.ilike(pattern, escape=_LIKE_ESCAPE)),
    ]
    digits = re.sub(r"[\s\-().+/]", "", query)
    if digits != query and digits.isdigit() and len(digits) >= 3:
        # "(555) 123-4567" finds +15551234567.
        options += [c.from_number.like(f"%{digits}%"), c.to_number.like(f"%{digits}%")]
    return or_(*options)


__all__ = ["CallStore"]
