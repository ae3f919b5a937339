"""The database connection: one async engine per process, and schema migrations run at start-up.

`DATABASE_URL` may be written the way other tools write it (`postgres://…`, `sqlite:///…`); it is mapped onto
the async drivers this service ships with. Migrations run Alembic's `upgrade head` on a connection of the
service's own engine (through `run_sync`), so no alembic.ini and no second driver are needed; on PostgreSQL they
hold an advisory lock, so replicas starting together do not race to create the same tables. A schema already at
the newest revision (every start but the first after an upgrade) is recognised without loading Alembic at all,
which keeps ~10 MB of it out of every replica's memory (`agent.storage.migrator` has the Alembic side); `serve`
runs a schema that is behind (a first start, an upgrade) through `migrate_in_child`, so even then the serving
process never loads Alembic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from agent.storage.aio import AsyncEngine, create_async_engine
from agent.storage.migrations import MIGRATIONS_DIR

log = logging.getLogger("agent.storage")

# Any constant will do: it only has to be the same for every replica of this service.
_MIGRATION_LOCK_ID = 0x766F_627A_6D69_6772 & 0x7FFF_FFFF_FFFF_FFFF


def normalise_url(url: str | URL) -> URL:
    """Map common spellings onto the bundled async drivers: asyncpg for PostgreSQL, aiosqlite for SQLite."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgres", "postgresql"):
        return parsed.set(drivername="postgresql+asyncpg")
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    raise ValueError(f"unsupported DATABASE_URL backend {backend!r}: use sqlite+aiosqlite:// or postgresql://")


def _is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


_ASSIGNMENT = re.compile(r"""^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(?:None|(["'])([^"'\n]*)\2)\s*$""", re.M)


def head_revision() -> str | None:
    """The newest migration, read from the revision files' own `revision = …` / `down_revision = …` lines.

    Alembic would tell the same (a test checks that it does), but only after loading ~10 MB of itself; a regular
    expression over the lines, not a parse of the files, so checking leaves no parser garbage behind either.
    """
    parents: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        values = {match[1]: match[3] for match in _ASSIGNMENT.finditer(path.read_text())}
        revision = values.get("revision")
        if revision:
            parents[revision] = values.get("down_revision") or None
    heads = set(parents) - {p for p in parents.values() if p is not None}
    if len(heads) > 1:
        raise RuntimeError(f"migrations have several heads: {sorted(heads)}")
    return next(iter(heads), None)


def _current_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


class Database:
    """The async engine of the call-record database: every query is a Core statement on one of its connections."""

    def __init__(self, url: str | URL, *, engine_options: Mapping[str, Any] | None = None) -> None:
        self.url = normalise_url(url)
        # hide_parameters: a logged database error must never carry a call's numbers or transcript.
        options: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
        if _is_memory(self.url):
            # One shared connection, or every session would see its own empty in-memory database.
            options = {
                "poolclass": StaticPool,
                "connect_args": {"check_same_thread": False},
                "hide_parameters": True,
            }
        options.update(engine_options or {})
        self.engine: AsyncEngine = create_async_engine(self.url, **options)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_on_connect)

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    async def migrate(self) -> None:
        """Bring the schema to the latest revision (`alembic upgrade head`); safe to run on every start."""
        self._ensure_sqlite_folder()
        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            if await conn.run_sync(_current_revision) != head_revision():
                from agent.storage import migrator

                await conn.run_sync(migrator.upgrade, self.url.render_as_string(hide_password=False))
        log.info("database schema at revision %s (%s)", await self.revision(), self.dialect)

    async def revision(self) -> str | None:
        """The schema revision the database is at; None before the first migration."""
        self._ensure_sqlite_folder()
        async with self.engine.connect() as conn:
            return await conn.run_sync(_current_revision)

    async def aclose(self) -> None:
        await self.engine.dispose()

    def _ensure_sqlite_folder(self) -> None:
        if self.dialect == "sqlite" and not _is_memory(self.url) and self.url.database:
            Path(self.url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Foreign keys on (cascading deletes), WAL so readers never wait for the writer, and a busy timeout so a
    second process writing briefly is waited for rather than an error."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


_CHILD_URL_ENV = "VOICE_AGENT_MIGRATE_URL"
_CHILD_CODE = "from agent.storage.database import child_migrate; child_migrate()"


async def migrate_in_child(url: str | URL) -> bool:
    """Bring a schema that is behind to the newest revision in a child process (`child_migrate`), so Alembic
    (~10 MB that would stay in memory for the life of the process) is never loaded here; True when the schema is
    now at the head. A schema already there costs one query, no child. False
    for an in-memory SQLite (a child cannot see it) and when the child failed: the app's own `migrate()` then runs
    in-process and reports the error as it always did. The URL reaches the child in its environment, not argv."""
    database = Database(url)
    if _is_memory(database.url):
        await database.aclose()
        return False
    try:
        if await database.revision() == head_revision():
            return True
    except Exception:  # unreachable database and friends: the app's migrate() reports them
        return False
    finally:
        await database.aclose()
    env = {**os.environ, _CHILD_URL_ENV: database.url.render_as_string(hide_password=False)}
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", _CHILD_CODE, env=env)
    if await child.wait() != 0:
        log.warning("migrating in a child process failed (exit %s); migrating in-process", child.returncode)
        return False
    return True


def child_migrate() -> None:
    """The child of `migrate_in_child`: `Database.migrate()` on the URL handed over in the environment."""

    async def run() -> None:
        database = Database(os.environ[_CHILD_URL_ENV])
        try:
            await database.migrate()
        finally:
            await database.aclose()

    asyncio.run(run())


async def startup_problem(url: str, timeout_s: float = 10.0) -> str | None:
    """Why the service could not use this database, in one line, or None; checked before serving.

    Without it, an unsupported scheme or an unreachable PostgreSQL only shows up as a traceback out of the
    application's start-up. SQLite is not probed: its file (and folder) is created by the first migration.
    """
    try:
        parsed = normalise_url(url)
    except ValueError as exc:
        return f"invalid setting DATABASE_URL: {exc}"
    except Exception as exc:  # sqlalchemy's ArgumentError and friends for a URL it cannot parse at all
        return f"invalid setting DATABASE_URL: cannot parse it ({type(exc).__name__})"
    if parsed.get_backend_name() != "postgresql":
        return None
    from agent.waiting import within

    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"
    engine = create_async_engine(parsed, hide_parameters=True)

    async def probe() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    try:
        await within(timeout_s, probe())
    except TimeoutError:
        return f"cannot reach the database at {where}: no answer within {timeout_s:g} s (DATABASE_URL)"
    except Exception as exc:  # refused, unknown host, bad password, no such database: all one line
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"cannot reach the database at {where}: {reason or type(exc).__name__} (DATABASE_URL)"
    finally:
        await engine.dispose()
    return None
