"""What every part of the call store shares: the database, the dialect's INSERT, and the common WHERE clauses.

The store is split by job (saving and listing calls, statistics, eval runs and experiments, prompt versions);
each part is a class over this one and `CallStore` combines them.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, Table, exists

from agent.storage import tables as t
from agent.storage.database import Database
from agent.storage.inserts import dialect_insert

if TYPE_CHECKING:
    from sqlalchemy.dialects.postgresql import Insert as PgInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert


class StoreBase:
    db: Database

    def _insert(self, table: Table) -> PgInsert | SqliteInsert:
        return dialect_insert(self.db.dialect, table)


def in_window(since: dt.datetime | None, until: dt.datetime | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if since is not None:
        where.append(t.calls.c.started_at >= since)
    if until is not None:
        where.append(t.calls.c.started_at < until)
    return where


def has_tag(key: str, value: str) -> ColumnElement[bool]:
    tags = t.call_tags.c
    return exists().where(tags.call_id == t.calls.c.call_id, tags.key == key, tags.value == value)
