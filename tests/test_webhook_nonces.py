"""Seen webhook nonces on SQLite and PostgreSQL: claimed atomically, retries of unanswered requests let through,
old ones expired, and a replay refused by another replica sharing the database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, inspect, select

from agent.protocol.vobiz.signature import signature_headers
from agent.storage.database import Database, head_revision
from agent.storage.nonces import NonceStore, NonceVerdict, webhook_nonces
from tests.harness import running_stack
from tests.postgres import scratch_database

TOKEN = "vobiz-auth-token-for-nonce-tests"
FORM = {"CallUUID": "call-nonce-1", "From": "+911", "To": "+912", "Direction": "inbound"}


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this module's own, dropped afterwards."""
    with scratch_database("agent_nonces") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/agent.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    await database.migrate()
    try:
        yield database
    finally:
        async with database.engine.begin() as conn:  # the PostgreSQL database is shared by this module's tests
            await conn.execute(webhook_nonces.delete())
        await database.aclose()


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_migration_0002_creates_the_nonce_table(db: Database) -> None:
    assert await db.revision() == head_revision()  # migrated to the head, which includes 0002
    async with db.engine.connect() as conn:
        tables = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    assert "webhook_nonces" in tables


async def test_fresh_then_retry_until_answered_then_replay(db: Database) -> None:
    clock = Clock()
    store = NonceStore(db, retry_window_s=600, clock=clock)
    assert await store.claim(["11111111111111111111"]) is NonceVerdict.FRESH
    clock.now += 5
    assert await store.claim(["11111111111111111111"]) is NonceVerdict.RETRY  # never answered 2xx
    await store.answered(["11111111111111111111"])
    assert await store.claim(["11111111111111111111"]) is NonceVerdict.REPLAY
    # An unanswered nonce is retryable only within the window Vobiz retries in.
    assert await store.claim(["22222222222222222222"]) is NonceVerdict.FRESH
    clock.now += 601
    assert await store.claim(["22222222222222222222"]) is NonceVerdict.REPLAY


async def test_every_nonce_of_a_request_counts_and_the_worst_verdict_wins(db: Database) -> None:
    store = NonceStore(db)
    assert await store.claim(["v3-nonce-a", "v2-nonce-b"]) is NonceVerdict.FRESH
    await store.answered(["v3-nonce-a", "v2-nonce-b"])
    assert await store.claim(["v2-nonce-b"]) is NonceVerdict.REPLAY
    assert await store.claim(["brand-new", "v3-nonce-a"]) is NonceVerdict.REPLAY
    assert await store.claim(["same", "same"]) is NonceVerdict.FRESH
    assert await store.claim(["x" * 129]) is NonceVerdict.REPLAY  # never a Vobiz nonce


async def test_old_nonces_expire(db: Database) -> None:
    clock = Clock()
    store = NonceStore(db, retention_s=3600, sweep_every_s=60, clock=clock)
    await store.claim(["old-nonce"])
    clock.now += 1800
    await store.claim(["newer-nonce"])
    clock.now += 1801  # old-nonce is past the retention, newer-nonce is not
    assert await store.expire() == 1
    async with db.engine.connect() as conn:
        left = (await conn.execute(select(webhook_nonces.c.nonce))).scalars().all()
    assert left == ["newer-nonce"]
    clock.now += 3600
    await store.claim(["trigger"])  # claims sweep by themselves once `sweep_every_s` has passed
    async with db.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(webhook_nonces))).scalar_one() == 1


async def test_two_replicas_claiming_at_once_insert_once(db_url: str) -> None:
    first, second = Database(db_url), Database(db_url)
    try:
        await first.migrate()
        await second.migrate()
        stores = [NonceStore(first), NonceStore(second)]
        for i in range(20):
            nonce = f"race-{i}"
            verdicts = await asyncio.gather(stores[0].claim([nonce]), stores[1].claim([nonce]))
            assert sorted(v.value for v in verdicts) == ["fresh", "retry"], verdicts
    finally:
        async with first.engine.begin() as conn:
            await conn.execute(webhook_nonces.delete())
        await first.aclose()
        await second.aclose()


async def test_a_webhook_replayed_to_another_replica_is_refused(pg_url: str) -> None:
    """Two agents on one PostgreSQL database behind the same public URL, as in a deployment."""
    public = "https://agent.example.test"
    url = f"{public}/vobiz/stream-status"
    common: dict[str, Any] = {"vobiz_auth_token": TOKEN, "database_url": pg_url, "public_url": public}
    async with running_stack(**common) as one, running_stack(**common) as two, httpx.AsyncClient() as http:
        headers = signature_headers(TOKEN, url)
        assert (await http.post(f"{one.base_url}/vobiz/stream-status", data=FORM, headers=headers)).status_code == 200
        replay = await http.post(f"{two.base_url}/vobiz/stream-status", data=FORM, headers=headers)
        assert replay.status_code == 403
        assert two.metric("agent_webhooks_total", route="stream_status", outcome="replay") == 1
        fresh = signature_headers(TOKEN, url)
        assert (await http.post(f"{two.base_url}/vobiz/stream-status", data=FORM, headers=fresh)).status_code == 200
