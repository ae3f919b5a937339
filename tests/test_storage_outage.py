"""Nothing is lost when the database is down or slow: the writer spools what it cannot save and replays it.

The outages are real ones on both databases. PostgreSQL is reached through a small TCP proxy on 127.0.0.1 that
can stall (connections accepted, nothing forwarded: a hung server or a network partition) or refuse (nothing
listening: the server is down), and later recover. SQLite stalls on a write lock another connection holds, and
refuses when its folder is gone. Waits are on the writer's own state changes, each with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from agent.records.record import CallRecord
from agent.storage import tables as t
from agent.storage.calls import CallStore
from agent.storage.database import Database
from agent.storage.spool import encode
from agent.storage.writer import RecordWriter
from tests.postgres import pg_admin
from tests.test_storage import H0, pg_database, simple_record

__all__ = ["pg_database"]  # the session's PostgreSQL database, shared with test_storage

DEADLINE_S = 60.0


# --- a TCP proxy that can stall or refuse ------------------------------------------------------------------------


@dataclass(eq=False)
class _Link:
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    dead: bool = False

    def abort(self) -> None:
        self.dead = True
        for writer in self.writers:
            writer.transport.abort()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to the real server, until told to stall or refuse.

    `stall`: new connections are accepted and never answered, bytes on open ones are held. `refuse`: nothing
    listens on the port. `recover`: connections from the outage are reset (the bytes held are never delivered,
    as after a partition) and the port forwards again.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def stall(self) -> None:
        self._flowing.clear()

    async def refuse(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        self._reset_links()

    async def recover(self) -> None:
        self._reset_links()
        if self._server is None:
            await self.start()  # the same port
        self._flowing.set()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_links()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _reset_links(self) -> None:
        for link in list(self._links):
            link.abort()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link([writer])
        self._links.add(link)
        try:
            await self._flowing.wait()  # a stalled server accepts, and never answers
            if link.dead:
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            link.writers.append(up_writer)
            if link.dead:
                link.abort()
                return
            for source, sink in ((reader, up_writer), (up_reader, writer)):
                task = asyncio.get_running_loop().create_task(self._pipe(link, source, sink))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except OSError:
            link.abort()

    async def _pipe(self, link: _Link, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                if link.dead:
                    return
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            link.abort()


# --- outages on both databases -------------------------------------------------------------------------------------


@dataclass
class Target:
    """A migrated database, the writer's way to it (which the outage breaks), and a direct way to check it."""

    name: str
    writer_db: Database
    check_db: Database
    begin: Callable[[], Awaitable[None]]
    end: Callable[[], Awaitable[None]]
    reconnect: Callable[[], Database]  # a fresh Database the way the writer reaches it: a "restarted" process


async def saves_abandoned_during_the_outage() -> None:
    """A save the writer gave up on goes on in the background until the database answers (or its connection is
    closed); wait for those to end before the engines are disposed under them, which could leave them hanging."""
    current = asyncio.current_task()
    leftovers = {
        task
        for task in asyncio.all_tasks()
        if task is not current
        and (task.get_name() == "record-save" or "_terminate_graceful_close" in repr(task.get_coro()))
    }
    if leftovers:
        await asyncio.wait(leftovers, timeout=15)


@contextlib.asynccontextmanager
async def postgres_target(url: str, outage: str) -> AsyncIterator[Target]:
    schema = f"t_{secrets.token_hex(6)}"
    await pg_admin(url, f'CREATE SCHEMA "{schema}"')
    options: dict[str, Any] = {"connect_args": {"server_settings": {"search_path": schema}}}
    direct = Database(url, engine_options=options)
    await direct.migrate()
    parsed = make_url(url)
    proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    await proxy.start()
    via_proxy = parsed.set(host="127.0.0.1", port=proxy.port)
    databases = [direct]

    def reconnect() -> Database:
        databases.append(Database(via_proxy, engine_options=options))
        return databases[-1]

    async def begin() -> None:
        if outage == "stall":
            proxy.stall()
        else:
            await proxy.refuse()

    try:
        yield Target(f"postgresql-{outage}", reconnect(), direct, begin, proxy.recover, reconnect)
    finally:
        await proxy.recover()
        await saves_abandoned_during_the_outage()
        await proxy.aclose()
        for db in databases:
            await db.aclose()
        await pg_admin(url, f'DROP SCHEMA "{schema}" CASCADE')


@contextlib.asynccontextmanager
async def sqlite_target(tmp_path: Path, outage: str) -> AsyncIterator[Target]:
    folder = tmp_path / "data"
    path = folder / "agent.db"
    url = f"sqlite+aiosqlite:///{path}"
    direct = Database(url)
    await direct.migrate()
    writer_db = Database(url)
    databases = [direct, writer_db]
    lock: list[sqlite3.Connection] = []

    def reconnect() -> Database:
        databases.append(Database(url))
        return databases[-1]

    async def begin() -> None:
        if outage == "stall":
            # Another connection holds the write lock: every save waits on it (busy_timeout), none fails fast.
            holder = sqlite3.connect(path, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            lock.append(holder)
        else:
            # The database file is gone (an unmounted volume): nothing can be opened.
            await writer_db.engine.dispose()
            folder.rename(tmp_path / "data-away")

    async def end() -> None:
        if lock:
            holder = lock.pop()
            holder.execute("ROLLBACK")
            holder.close()
        if not folder.exists():
            (tmp_path / "data-away").rename(folder)

    try:
        yield Target(f"sqlite-{outage}", writer_db, direct, begin, end, reconnect)
    finally:
        await end()
        await saves_abandoned_during_the_outage()
        for db in databases:
            await db.aclose()


@pytest.fixture(params=["sqlite-stall", "sqlite-refuse", "postgresql-stall", "postgresql-refuse"])
def outage_kind(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """(kind, PostgreSQL url): resolved outside the event loop, where the session database can be made."""
    kind: str = request.param
    return kind, request.getfixturevalue("pg_database") if kind.startswith("postgresql") else None


@pytest.fixture
async def target(outage_kind: tuple[str, str | None], tmp_path: Path) -> AsyncIterator[Target]:
    kind, url = outage_kind
    outage = kind.split("-")[1]
    if url is None:
        async with sqlite_target(tmp_path, outage) as t:
            yield t
    else:
        async with postgres_target(url, outage) as t:
            yield t


def writer_for(db: Database, spool_dir: Path, **options: Any) -> RecordWriter:
    """A writer with short deadlines, so an outage is noticed (and a recovery found) quickly."""
    values: dict[str, Any] = {"save_timeout_s": 0.5, "retry_delays": (0.05, 0.1, 0.2), "max_pending": 4}
    return RecordWriter(CallStore(db), spool_dir=spool_dir, **(values | options))


def spooled_ids(spool_dir: Path) -> set[str]:
    return {json.loads(p.read_text())["call_id"] for p in spool_dir.glob("*.json")}


async def stored(db: Database) -> tuple[dict[str, str | None], int, int, int]:
    """Every call's end reason, and the row counts of calls, turns and tags (duplicates would show there)."""
    async with db.engine.connect() as conn:
        reasons = dict((await conn.execute(select(t.calls.c.call_id, t.calls.c.end_reason))).all())
        calls = (await conn.execute(select(func.count()).select_from(t.calls))).scalar_one()
        turns = (await conn.execute(select(func.count()).select_from(t.turns))).scalar_one()
        tags = (await conn.execute(select(func.count()).select_from(t.call_tags))).scalar_one()
    return reasons, calls, turns, tags


def call(call_id: str, i: int, end_reason: str = "caller_hangup") -> CallRecord:
    return simple_record(call_id, H0 + i, said=f"hello from {call_id}", tags={"run": "outage"}, end_reason=end_reason)


# --- the tests --------------------------------------------------------------------------------------------------------


async def test_records_submitted_during_an_outage_are_all_in_the_database_after_it(
    target: Target, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    writer = writer_for(target.writer_db, spool_dir)
    writer.start()
    before = [call(f"before-{i}", i) for i in range(3)]
    for record in before:
        writer.submit(record)
    assert await writer.wait_until(lambda: writer.saved == 3, DEADLINE_S)

    await target.begin()
    during = [call(f"during-{i}", 100 + i) for i in range(30)]
    for record in during:
        assert writer.submit(record)
    # Refinements (a late hangup webhook) of a call still in memory, then of calls in the spool and one saved
    # before the outage: the newest version must win.
    refined = [call("during-29", 129, end_reason="refined")]
    assert writer.submit(refined[0])
    assert await writer.wait_until(lambda: writer.outage and writer.pending == 0, DEADLINE_S)
    refined += [call(f"during-{i}", 100 + i, end_reason="refined") for i in (0, 1)]
    refined.append(call("before-0", 0, end_reason="refined"))
    for record in refined[1:]:
        assert writer.submit(record)
    # The writer keeps probing, backing off, while the database stays out.
    assert await writer.wait_until(lambda: writer.pending == 0 and writer.retries >= 2, DEADLINE_S)
    # Everything from the outage is on disk; nothing was dropped or given up on.
    assert spooled_ids(spool_dir) == {r.call_id for r in during} | {"before-0"}
    assert writer.failed == 0 and writer.lost_on_close == 0
    why = ("queue_full", "outage", "timeout", "database_error")
    assert sum(writer.metrics.value("agent_records_spooled_total", reason=r) for r in why) == writer.spooled >= 33

    await target.end()
    assert await writer.wait_until(lambda: writer.spool_files == 0 and not writer.outage, DEADLINE_S)
    assert not list(spool_dir.glob("*.json"))
    assert writer.metrics.value("agent_records_replayed_total") == writer.replayed > 0
    reasons, calls, turns, tags = await stored(target.check_db)
    assert sorted(reasons) == sorted(r.call_id for r in before + during)
    assert (calls, turns, tags) == (33, 33, 33)  # one row each: no duplicates
    assert {k for k, v in reasons.items() if v == "refined"} == {r.call_id for r in refined}
    assert await writer.aclose()


async def test_spooled_records_are_replayed_by_the_next_process(target: Target, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    await target.begin()  # the database is out from the start
    first = writer_for(target.writer_db, spool_dir)
    first.start()
    records = [call(f"restart-{i}", i) for i in range(20)]
    for record in records:
        first.submit(record)
    assert await first.wait_until(lambda: first.outage and first.pending == 0, DEADLINE_S)
    assert await first.aclose()  # the process stops with the database still out
    assert spooled_ids(spool_dir) == {r.call_id for r in records}

    await target.end()
    second = writer_for(target.reconnect(), spool_dir)  # a new process: new engine, same spool
    second.start()
    assert await second.wait_until(lambda: second.replayed == 20, DEADLINE_S)
    assert second.spool_files == 0 and not list(spool_dir.glob("*.json"))
    reasons, calls, turns, tags = await stored(target.check_db)
    assert sorted(reasons) == sorted(r.call_id for r in records)
    assert (calls, turns, tags) == (20, 20, 20)

    # A replay that runs again (a crash between the save and removing the file) changes nothing.
    third = writer_for(target.reconnect(), spool_dir)
    third.spool.put(encode(records[0], None, seq=1))
    third.start()
    assert await third.wait_until(lambda: third.replayed == 1, DEADLINE_S)
    assert (await stored(target.check_db))[1:] == (20, 20, 20)
    for writer in (second, third):
        assert await writer.aclose()
