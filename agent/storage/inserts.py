"""The dialect's own INSERT (for ON CONFLICT upserts), with the PostgreSQL dialect imported only when it is the one
in use: on SQLite it would be ~2 MB of memory held for nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Table

if TYPE_CHECKING:
    from sqlalchemy.dialects.postgresql import Insert as PgInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert


def dialect_insert(dialect: str, table: Table) -> PgInsert | SqliteInsert:
    """`INSERT` for `dialect` ("postgresql" or "sqlite"), with `on_conflict_do_update`/`_do_nothing`."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)
