"""What every part of the call store shares: the database, the dialect's INSERT, and the common WHERE clauses.

The store is split by job (saving and listing calls, statistics, eval runs and experiments, prompt versions);
each part is a class over this one and `CallStore` combines them.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ColumnElement, Table, exists
from sqlalchemy.dialects import postgresql, sqlite

from agent.storage import models as m
from agent.storage.database import Database


class StoreBase:
    db: Database

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if self.db.dialect == "postgresql" else sqlite.insert(table)


def table_of(entity: type[m.Base]) -> Table:
    table = entity.__table__
    assert isinstance(table, Table)
    return table


def in_window(since: dt.datetime | None, until: dt.datetime | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if since is not None:
        where.append(m.Call.started_at >= since)
    if until is not None:
        where.append(m.Call.started_at < until)
    return where


def has_tag(key: str, value: str) -> ColumnElement[bool]:
    return exists().where(m.CallTag.call_id == m.Call.call_id, m.CallTag.key == key, m.CallTag.value == value)
