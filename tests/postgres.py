"""The test suite's PostgreSQL (scripts/ensure-postgres starts it): a database of a test's own, dropped after."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

PG_ADMIN_URL = os.environ.get("AGENT_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")


async def pg_admin(url: str, *statements: str) -> None:
    """Run statements outside a transaction (CREATE/DROP DATABASE need that) on a short-lived connection."""
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"timeout": 5})
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    except (OSError, TimeoutError, sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {url} ({exc!r}); start it with scripts/ensure-postgres", pytrace=False
        )
    finally:
        await engine.dispose()


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A fresh database's URL (made outside any event loop), dropped when the block ends."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(pg_admin(PG_ADMIN_URL, f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(pg_admin(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
