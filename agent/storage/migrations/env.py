"""Alembic environment: uses the service's own connection when called from `Database.migrate`, or opens one
from `-x url=…`, `sqlalchemy.url` or `DATABASE_URL` when run from the alembic command line (for writing new
revisions: `alembic -c agent/storage/migrations/alembic.ini revision --autogenerate -m "…"`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection
from sqlalchemy.pool import NullPool

from agent.storage.aio import create_async_engine
from agent.storage.database import normalise_url
from agent.storage.migrations.metadata import declared_metadata
from agent.storage.tables import JsonDocument, UtcDateTime

config = context.config
target_metadata = declared_metadata()
DEFAULT_URL = "sqlite+aiosqlite:///var/agent.db"


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("DATABASE_URL")
        or DEFAULT_URL
    )
    return normalise_url(url).render_as_string(hide_password=False)


def _render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Revisions spell out plain column types, so they never depend on this package's Python classes."""
    if kind == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    if kind == "type" and isinstance(obj, JsonDocument):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return 'sa.JSON().with_variant(postgresql.JSONB(), "postgresql")'
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place: autogenerate batch (copy-and-move) operations for it.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine() -> None:
    engine = create_async_engine(_url(), poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run(connection)
    else:
        asyncio.run(_run_with_own_engine())


if context.is_offline_mode():
    run_offline()
else:
    run_online()
