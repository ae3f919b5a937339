"""Call-record storage against both databases it supports, the background writer, and call recordings.

Every database test runs twice: on a SQLite file and on the real PostgreSQL server (a database made for this
test session, with a fresh schema per test). PostgreSQL being down is a failure, not a skip: the multi-replica
deployment runs on it, so its half of the suite must never silently disappear.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, inspect, select

from agent.audio.codecs import mulaw_to_pcm16
from agent.config import Settings
from agent.prompts.loader import Prompt, load_prompt, parse_prompt
from agent.records.record import BargeIn, CallEvent, CallRecord, ToolUse, Turn, Usage
from agent.storage import tables as t
from agent.storage.calls import CallStore
from agent.storage.database import Database, head_revision, normalise_url
from agent.storage.recordings import CallRecorder, recording_path, run_periodically, sweep_recordings
from agent.storage.retention import sweep_expired
from agent.storage.writer import RecordWriter
from agent.waiting import wait_event, within
from agent.web.app import create_app
from tests.postgres import pg_admin, scratch_database

H0 = dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC).timestamp()  # an hour boundary: buckets are easy to predict
TABLES = {"calls", "turns", "barge_ins", "tool_uses", "call_events", "call_tags", "prompt_versions"}
ROOT = Path(__file__).resolve().parent.parent


# --- databases -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of its own for this test session, dropped afterwards."""
    with scratch_database("agent_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(url, PostgreSQL schema): resolved outside the event loop, where the session database can be made."""
    if request.param == "sqlite":
        # A folder that does not exist yet: migrate() must create it.
        return f"sqlite+aiosqlite:///{tmp_path}/var/data/agent.db", None
    url: str = request.getfixturevalue("pg_database")
    return url, f"t_{secrets.token_hex(6)}"


@pytest.fixture
async def empty_db(db_target: tuple[str, str | None]) -> AsyncIterator[Database]:
    """An empty database: a new SQLite file, or a new PostgreSQL schema (first on the search path)."""
    url, schema = db_target
    options: dict[str, Any] = {}
    if schema is not None:
        await pg_admin(url, f'CREATE SCHEMA "{schema}"')
        options = {"connect_args": {"server_settings": {"search_path": schema}}}
    db = Database(url, engine_options=options)
    try:
        yield db
    finally:
        await db.aclose()
        if schema is not None:
            await pg_admin(url, f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
async def db(empty_db: Database) -> Database:
    await empty_db.migrate()
    return empty_db


@pytest.fixture
def store(db: Database) -> CallStore:
    return CallStore(db)


# --- building records ------------------------------------------------------------------------------------------


def realistic_record(call_id: str = "CA-1001", start: float = H0 + 125.0) -> CallRecord:
    """A call with everything a real one has: greeting, an interrupted answer, a tool, barge-in, usage, tags."""
    t = start
    record = CallRecord(
        call_id,
        from_number="+15551234567",
        to_number="+18005550100",
        direction="inbound",
        prompt_name="default",
        prompt_hash="0123456789abcdef",
        stream_id="ST-77",
        started_at=t,
    )
    record.turns = [
        Turn("assistant", "Hello! Thanks for calling. How can I help?", t + 0.4, t + 3.1, "item_a1", audio_ms=2700.0),
        Turn("caller", "Hi, I want to check my order status.", t + 3.5, t + 5.25, "item_c1"),
        Turn("assistant", "Sure, let me look that", t + 5.8, t + 7.1, "item_a2", True, 1300.0, 4200.0, 550.0),
        Turn("caller", "It is order 4471.", t + 7.0, t + 8.5, "item_c2"),
        Turn("system", "[keypad: 4471#]", t + 8.6, t + 8.6),
        Turn(
            "assistant", "Order 4471 ships tomorrow.", t + 9.2, t + 11.0, "item_a3", audio_ms=1800.0, latency_ms=700.0
        ),
    ]
    record.barge_ins = [BargeIn(t + 7.05, "item_a2", 1300.0, 2.75)]
    record.tools = [
        ToolUse("lookup_order", {"order": "4471", "nested": {"ok": [1, 2.5]}}, t + 8.7, t + 9.1, True, '{"eta":"1d"}'),
        ToolUse("transfer_call", {}, t + 12.0, None, None, None),
    ]
    record.usage = Usage(input_text=1200, input_audio=800, input_cached=300, output_text=150, output_audio=900)
    record.cost_usd = record.usage.cost_usd({"input_text": 4, "input_audio": 32, "output_audio": 64})
    record.events = [
        CallEvent(t + 0.001, "answer_webhook", {"status": "ringing", "prompt": "default"}),
        CallEvent(t + 0.25, "stream_started", {"stream_id": "ST-77", "format": "audio/x-mulaw;rate=8000"}),
        CallEvent(t + 7.05, "barge_in", {"heard": {"item_a2": 1300}}),
        CallEvent(t + 7.06, "truncate", {"item_id": "item_a2", "audio_end_ms": 1300, "received_ms": 4200}),
    ]
    record.tags = {"eval_run": "run-7", "scenario": "order-status"}
    record.recording_path = "var/recordings/2024-05-01/CA-1001.wav"
    record.finish("agent_end_call")
    record.ended_at = t + 14.5
    record.events[-1].t = t + 14.5
    return record


def simple_record(
    call_id: str,
    start: float,
    *,
    latencies: tuple[float, ...] = (),
    barge_ins: int = 0,
    cost: float = 0.0,
    end_reason: str = "caller_hangup",
    tags: dict[str, str] | None = None,
    said: str = "",
    caller: str = "+15550000000",
    extra_answers: int = 0,
) -> CallRecord:
    record = CallRecord(call_id, from_number=caller, to_number="+18005550100", started_at=start)
    if said:
        record.turns.append(Turn("caller", said, start + 1, start + 2, f"{call_id}-c"))
    for i in range(extra_answers):
        record.turns.append(Turn("assistant", "Hello!", start + 0.5 + i, start + 1 + i, f"{call_id}-g{i}"))
    for i, latency in enumerate(latencies):
        record.turns.append(
            Turn("assistant", f"answer {i}", start + 3 + i, start + 4 + i, f"{call_id}-a{i}", latency_ms=latency)
        )
    record.barge_ins = [BargeIn(start + 3 + i, None, 100.0, 1.0) for i in range(barge_ins)]
    record.cost_usd = cost
    record.tags = dict(tags or {})
    record.finish(end_reason)
    record.ended_at = start + 30
    return record


def assert_same_record(stored: CallRecord, original: CallRecord) -> None:
    assert stored.to_dict() == original.to_dict()


# --- migrations --------------------------------------------------------------------------------------------------


async def test_migrations_create_schema_from_empty_and_are_idempotent(empty_db: Database) -> None:
    assert await empty_db.revision() is None

    await empty_db.migrate()
    head = head_revision()
    assert head is not None and await empty_db.revision() == head
    async with empty_db.engine.connect() as conn:
        tables = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    assert tables >= TABLES | {"alembic_version"}

    await empty_db.migrate()  # every start runs it: a second run must change nothing
    assert await empty_db.revision() == head
    store = CallStore(empty_db)
    await store.save(realistic_record())
    await empty_db.migrate()
    assert (await store.list_calls()).total == 1


async def test_the_migrated_schema_is_the_one_the_code_declares(db: Database) -> None:
    """Migrations and the table declarations the code queries (Core tables, JSONB on PostgreSQL, constraint
    names) must not drift apart: Alembic's autogenerate comparison finds nothing to change after `upgrade head`."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from agent.storage.migrations.metadata import declared_metadata

    def differences(sync: Any) -> list[Any]:
        context = MigrationContext.configure(sync, opts={"compare_type": True})
        return list(compare_metadata(context, declared_metadata()))

    async with db.engine.connect() as conn:
        assert await conn.run_sync(differences) == []


def test_head_revision_read_from_the_files_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    from agent.storage.migrator import alembic_config

    assert head_revision() == ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_a_current_schema_starts_without_loading_alembic(tmp_path: Path) -> None:
    """Alembic costs every replica ~10 MB; it is loaded only when the schema is behind."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    script = (
        "import asyncio, sys\n"
        "from agent.storage.database import Database\n"
        "async def main():\n"
        f"    db = Database({url!r})\n"
        "    await db.migrate()\n"
        "    await db.aclose()\n"
        "asyncio.run(main())\n"
        "print(any(m == 'alembic' or m.startswith('alembic.') for m in sys.modules))\n"
    )
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert first.stdout.strip() == "True"  # an empty database: Alembic creates the schema
    assert again.stdout.strip() == "False"  # at the head already: nothing to load


def test_database_urls_map_onto_the_bundled_async_drivers() -> None:
    assert normalise_url("postgres://u:p@db:5432/calls").drivername == "postgresql+asyncpg"
    assert normalise_url("postgresql+psycopg://db/calls").drivername == "postgresql+asyncpg"
    assert normalise_url("sqlite:///var/agent.db").drivername == "sqlite+aiosqlite"
    with pytest.raises(ValueError, match="unsupported"):
        normalise_url("mysql://db/calls")


# --- saving and reading -----------------------------------------------------------------------------------------


async def test_realistic_record_round_trips(store: CallStore) -> None:
    record = realistic_record()
    await store.save(record)

    detail = await store.get_call(record.call_id)
    assert detail is not None
    assert_same_record(detail.record, record)
    interrupted = detail.record.turns[2]
    assert interrupted.interrupted and interrupted.heard_ms == 1300.0 and interrupted.latency_ms == 550.0
    summary = detail.summary
    assert summary.started_at == dt.datetime.fromtimestamp(record.started_at, dt.UTC)
    assert summary.duration_s == 14.5
    assert (summary.turn_count, summary.assistant_turns, summary.interrupted_turns) == (6, 3, 1)
    assert (summary.barge_in_count, summary.tool_count, summary.tool_failures) == (1, 2, 0)
    assert summary.cost_usd == pytest.approx(record.cost_usd) and summary.cost_usd > 0
    assert summary.hung_up_by == "agent" and summary.end_reason == "agent_end_call"
    assert summary.tags == {"eval_run": "run-7", "scenario": "order-status"}
    assert detail.saves == 1
    assert await store.get_call("no-such-call") is None


async def test_odd_values_never_fail_a_save(store: CallStore) -> None:
    record = simple_record("CA-odd", H0, latencies=(float("nan"),), said="nul \x00 inside")
    record.events.append(CallEvent(H0 + 1, "weird", {"nan": float("inf"), "obj": object(), "set": {1}}))
    record.tags = {"k" * 100: "v" * 1000}
    await store.save(record)
    detail = await store.get_call("CA-odd")
    assert detail is not None
    assert detail.record.turns[0].text == "nul  inside"
    assert detail.record.turns[1].latency_ms is None
    assert detail.record.events[-1].detail["nan"] is None
    assert detail.record.events[-1].detail["set"] == [1]


async def test_saving_twice_keeps_one_call_with_the_refined_details(store: CallStore, db: Database) -> None:
    record = realistic_record()
    await store.save(record)
    # The late hangup webhook refines the record, and the writer saves it again.
    record.events.append(CallEvent(record.started_at + 20.5, "hangup_webhook", {"CallStatus": "completed"}))
    record.end_reason, record.hung_up_by = "caller_hangup", "caller"
    record.tags["eval_run"] = "run-8"
    await store.save(record)
    await store.save(record)

    page = await store.list_calls()
    assert page.total == 1 and len(page.calls) == 1
    detail = await store.get_call(record.call_id)
    assert detail is not None
    assert_same_record(detail.record, record)
    assert detail.saves == 3 and detail.first_saved_at <= detail.saved_at
    assert detail.summary.end_reason == "caller_hangup"
    async with db.engine.connect() as conn:
        turns = (await conn.execute(select(func.count()).select_from(t.turns))).scalar_one()
        events = (await conn.execute(select(func.count()).select_from(t.call_events))).scalar_one()
        tags = (await conn.execute(select(func.count()).select_from(t.call_tags))).scalar_one()
    assert (turns, events, tags) == (len(record.turns), len(record.events), 2)
    assert (await store.list_calls(tag=("eval_run", "run-7"))).total == 0
    assert (await store.list_calls(tag=("eval_run", "run-8"))).total == 1


# --- the call list ------------------------------------------------------------------------------------------------


async def test_search_and_filters(store: CallStore) -> None:
    await store.save(simple_record("CA-pizza", H0, said="I'd like a LARGE Pizza please", caller="+15551234567"))
    await store.save(
        simple_record("CA-hours", H0 + 60, said="What are your opening hours?", caller="+442071234567", end_reason="x")
    )
    await store.save(simple_record("abc-XYZ-42", H0 + 120, said="I am 100% sure", tags={"eval_run": "r1"}))

    async def ids(search: str | None = None, **filters: Any) -> list[str]:
        return [c.call_id for c in (await store.list_calls(search, **filters)).calls]

    assert await ids("555123") == ["CA-pizza"]
    assert await ids("(555) 123-4567") == ["CA-pizza"]
    assert await ids("+4420") == ["CA-hours"]
    assert await ids("pizza") == ["CA-pizza"]
    assert await ids("OPENING HOURS") == ["CA-hours"]
    assert await ids("xyz-4") == ["abc-XYZ-42"]
    assert await ids("100%") == ["abc-XYZ-42"]
    assert await ids("%") == ["abc-XYZ-42"]  # a literal %, not a wildcard
    assert await ids("_") == []
    assert await ids("nobody said this") == []
    assert await ids() == ["abc-XYZ-42", "CA-hours", "CA-pizza"]  # newest first
    assert await ids("   ") == ["abc-XYZ-42", "CA-hours", "CA-pizza"]

    since = dt.datetime.fromtimestamp(H0 + 60, dt.UTC)
    assert await ids(since=since) == ["abc-XYZ-42", "CA-hours"]
    assert await ids(until=since) == ["CA-pizza"]
    assert await ids(tag=("eval_run", "r1")) == ["abc-XYZ-42"]
    assert await ids(end_reason="x") == ["CA-hours"]
    assert await ids("a", end_reason="caller_hangup") == ["abc-XYZ-42", "CA-pizza"]

    page = await store.list_calls(limit=2, offset=1)
    assert page.total == 3 and [c.call_id for c in page.calls] == ["CA-hours", "CA-pizza"]
    assert page.calls[0].tags == {}
    assert (await store.list_calls(tag=("eval_run", "r1"))).calls[0].tags == {"eval_run": "r1"}


# --- aggregates ---------------------------------------------------------------------------------------------------


async def test_summary_on_known_data(store: CallStore) -> None:
    hour = 3600.0
    await store.save(simple_record("c1", H0 + 60, latencies=(100, 200), barge_ins=1, cost=0.01))
    await store.save(
        simple_record("c2", H0 + 1800, latencies=(300,), cost=0.02, end_reason="agent_end_call", extra_answers=1)
    )
    await store.save(simple_record("c3", H0 + 2 * hour + 5, latencies=(400, 500, 1000), barge_ins=2, cost=0.03))
    await store.save(simple_record("late", H0 + 3 * hour + 1, latencies=(5000,), barge_ins=9, cost=9.0))

    since = dt.datetime.fromtimestamp(H0, dt.UTC)
    summary = await store.summary(since, since + dt.timedelta(hours=3), bucket="hour")

    stats = summary.stats
    assert stats.calls == 3
    # [100, 200, 300, 400, 500, 1000], linear interpolation (percentile_cont): p50 at rank 2.5, p90 at 4.5, p99 at 4.95
    assert (stats.latency_ms.count, stats.latency_ms.p50, stats.latency_ms.p90, stats.latency_ms.p99) == (
        6,
        350.0,
        750.0,
        975.0,
    )
    assert stats.assistant_turns == 7 and stats.barge_ins == 3 and stats.calls_with_barge_in == 2
    assert stats.barge_in_rate == pytest.approx(3 / 7)
    assert stats.total_cost_usd == pytest.approx(0.06)
    assert stats.mean_cost_usd == pytest.approx(0.02)
    assert stats.mean_duration_s == pytest.approx(30.0)
    assert stats.end_reasons == {"caller_hangup": 2, "agent_end_call": 1}
    assert stats.hung_up_by == {"caller": 2, "agent": 1}

    starts = [b.start for b in summary.buckets]
    assert starts == [since + dt.timedelta(hours=h) for h in range(3)]
    assert [b.calls for b in summary.buckets] == [2, 0, 1]
    assert [b.cost_usd for b in summary.buckets] == pytest.approx([0.03, 0.0, 0.03])
    assert [b.barge_ins for b in summary.buckets] == [1, 0, 2]
    assert [b.barge_in_rate for b in summary.buckets] == [pytest.approx(1 / 4), None, pytest.approx(2 / 3)]
    assert [b.latency_ms.p50 for b in summary.buckets] == [200.0, None, 500.0]
    assert summary.buckets[2].latency_ms.p90 == 900.0

    everything = await store.summary(bucket="day")
    assert everything.stats.calls == 4 and len(everything.buckets) == 1
    assert everything.buckets[0].start == since.replace(hour=0)
    by_minute = await store.summary(since, since + dt.timedelta(minutes=2), bucket="minute")
    assert [b.calls for b in by_minute.buckets] == [0, 1]
    empty = await store.summary(since - dt.timedelta(days=1), since - dt.timedelta(hours=23))
    assert empty.stats.calls == 0 and empty.stats.latency_ms.p50 is None and empty.stats.barge_in_rate is None
    with pytest.raises(ValueError):
        await store.summary(bucket="week")  # type: ignore[arg-type]


async def test_compare_runs(store: CallStore) -> None:
    await store.save(simple_record("a1", H0, latencies=(100, 300), barge_ins=1, cost=0.01, tags={"eval_run": "A"}))
    await store.save(
        simple_record("a2", H0 + 60, latencies=(200,), cost=0.03, end_reason="agent_end_call", tags={"eval_run": "A"})
    )
    await store.save(simple_record("b1", H0 + 120, latencies=(900,), cost=0.05, tags={"eval_run": "B", "x": "y"}))
    await store.save(simple_record("untagged", H0 + 180, latencies=(1,), barge_ins=5))

    result = await store.compare_runs("eval_run", "A", "B")
    a, b = result.a, result.b
    assert (a.calls, b.calls) == (2, 1)
    assert (a.latency_ms.count, a.latency_ms.p50, b.latency_ms.p50) == (3, 200.0, 900.0)
    assert a.barge_in_rate == pytest.approx(1 / 3) and b.barge_in_rate == 0.0
    assert a.mean_cost_usd == pytest.approx(0.02) and b.total_cost_usd == pytest.approx(0.05)
    assert a.end_reasons == {"agent_end_call": 1, "caller_hangup": 1} and b.end_reasons == {"caller_hangup": 1}
    assert await store.tag_values("eval_run") == [("A", 2), ("B", 1)]
    missing = await store.compare_runs("eval_run", "A", "nope")
    assert missing.b.calls == 0 and missing.b.latency_ms.count == 0


# --- prompt versions ---------------------------------------------------------------------------------------------

PROMPT_V1 = """---
description: Sales line
tools:
  - name: lookup_order
    description: Look up an order
    url: https://example.com/orders
    headers:
      Authorization: Bearer s3cret-token
---
You sell things. The caller's number is {{caller}}.
Always be brief.
"""


async def test_prompt_versions_are_stored_once_per_hash_and_diffable(
    store: CallStore, db: Database, tmp_path: Path
) -> None:
    folder = tmp_path / "prompts"
    folder.mkdir()
    path = folder / "sales.md"
    path.write_text(PROMPT_V1)
    v1 = load_prompt(folder, "sales")
    # What a call holds: the rendered prompt (caller's number filled in), with the file's hash.
    v1_call = v1.render({"caller": "+15551234567"})
    assert "+15551234567" in v1_call.instructions and v1_call.content_hash == v1.content_hash

    def with_prompt(call_id: str, start: float, prompt: Prompt) -> CallRecord:
        record = simple_record(call_id, start)
        record.prompt_name, record.prompt_hash = prompt.name, prompt.content_hash
        return record

    await store.save(with_prompt("p1", H0, v1_call), v1_call)
    await store.save(with_prompt("p2", H0 + 60, v1_call), v1_call)
    await CallStore(db).save(with_prompt("p3", H0 + 90, v1_call), v1_call)  # another replica: no cache
    path.write_text(PROMPT_V1.replace("Always be brief.", "Always be brief and polite.\nNever promise refunds."))
    v2 = load_prompt(folder, "sales")
    await store.save(with_prompt("p4", H0 + 120, v2), v2.render({"caller": "+15550000000"}))
    # A prompt whose file is gone: stored as the call used it.
    v3 = parse_prompt("sales", PROMPT_V1.replace("sell things", "sell {{caller}} things"), "<inline>")
    await store.save(with_prompt("p5", H0 + 180, v3), v3.render({"caller": "+1999"}))

    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(func.count()).select_from(t.prompt_versions))).scalar_one()
    assert rows == 3

    versions = await store.prompt_versions("sales")
    assert [v.content_hash for v in versions] == [v1.content_hash, v2.content_hash, v3.content_hash]
    first, second, third = versions
    assert (first.calls, second.calls, third.calls) == (3, 1, 1)
    assert first.first_seen == dt.datetime.fromtimestamp(H0, dt.UTC)
    assert first.last_seen == dt.datetime.fromtimestamp(H0 + 90, dt.UTC)
    assert first.from_source and "{{caller}}" in (first.instructions or "")  # the template, not one caller's number
    assert not third.from_source and "+1999" in (third.instructions or "")
    assert first.meta is not None
    assert first.meta["tools"][0]["headers"] == {"Authorization": "<redacted>"}
    assert "s3cret" not in (first.text or "")

    diff = await store.diff_prompt_versions("sales", v1.content_hash, v2.content_hash)
    assert "-Always be brief.\n" in diff
    assert "+Always be brief and polite.\n+Never promise refunds.\n" in diff
    assert diff.startswith(f"--- sales@{v1.content_hash}\n+++ sales@{v2.content_hash}\n")
    assert await store.diff_prompt_versions("sales", v1.content_hash, v1.content_hash) == ""
    with pytest.raises(KeyError):
        await store.diff_prompt_versions("sales", v1.content_hash, "ffffffffffffffff")
    one = await store.prompt_version("sales", v2.content_hash)
    assert one is not None and one.calls == 1
    assert await store.prompt_versions("nobody") == []


# --- the background writer ------------------------------------------------------------------------------------------


async def test_writer_never_blocks_never_drops_and_spools_what_it_cannot_save(store: CallStore, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    writer = RecordWriter(store, spool_dir=spool_dir, max_pending=8)
    writer.start()
    started = time.perf_counter()
    accepted = [writer.submit(simple_record(f"w{i}", H0 + i)) for i in range(300)]
    elapsed = time.perf_counter() - started

    assert elapsed < 1.0, f"300 submits took {elapsed:.3f}s"
    assert all(accepted) and writer.pending == 300  # 8 queued for the database, the rest for the spool
    # A record already waiting is refined in place: no extra slot.
    refined = simple_record("w3", H0 + 3, end_reason="refined")
    assert writer.submit(refined) and writer.pending == 300

    assert await writer.aclose()
    assert writer.pending == 0 and writer.lost_on_close == 0
    assert writer.saved + writer.spooled == 300 and writer.spooled >= 300 - 8
    assert writer.metrics.value("agent_records_spooled_total", reason="queue_full") == writer.spooled
    assert writer.submit(simple_record("after-close", H0))  # spooled at once: a late webhook loses nothing
    assert writer.submit(None) is False  # type: ignore[arg-type]  # never raises into a call's teardown

    # The next process replays the spool.
    on_disk = len(list(spool_dir.glob("*.json")))
    assert on_disk == writer.spooled and writer.lost_on_close == 0
    again = RecordWriter(store, spool_dir=spool_dir)
    again.start()
    assert await again.wait_until(lambda: again.replayed == on_disk, 60)
    page = await store.list_calls(limit=1_000)
    assert sorted(c.call_id for c in page.calls) == sorted([*(f"w{i}" for i in range(300)), "after-close"])
    detail = await store.get_call("w3")
    assert detail is not None and detail.summary.end_reason == "refined"
    assert await again.aclose() and not list(spool_dir.glob("*.json"))


class FlakyStore:
    """Fails the first `failures` saves with `error`, then succeeds; `gate` holds saves until it is set."""

    def __init__(self, failures: int = 0, error: Exception | None = None, gate: asyncio.Event | None = None) -> None:
        self.failures = failures
        self.error = error
        self.gate = gate
        self.calls = 0
        self.saved: list[str] = []

    async def save(self, record: CallRecord, prompt: Prompt | None = None) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.calls <= self.failures and self.error is not None:
            raise self.error
        self.saved.append(record.call_id)


async def test_writer_spools_transient_failures_and_keeps_refused_records_aside(tmp_path: Path) -> None:
    down = sa_exc.OperationalError("INSERT INTO calls", {}, ConnectionRefusedError("database restarting"))
    flaky = FlakyStore(failures=2, error=down)
    writer = RecordWriter(flaky, spool_dir=tmp_path / "a", retry_delays=(0, 0, 0))
    writer.start()
    writer.submit(simple_record("t1", H0))
    assert await writer.wait_until(lambda: writer.replayed == 1, 10)
    assert flaky.saved == ["t1"] and flaky.calls == 3  # the save, a failed replay, the replay
    assert (writer.spooled, writer.saved, writer.failed) == (1, 0, 0)
    assert not list((tmp_path / "a").glob("*.json"))

    broken = FlakyStore(failures=1, error=sa_exc.IntegrityError("INSERT", {}, ValueError("bad row")))
    writer2 = RecordWriter(broken, spool_dir=tmp_path / "b", retry_delays=(0, 0, 0))
    writer2.start()
    writer2.submit(simple_record("t2", H0))
    writer2.submit(simple_record("t3", H0))
    await writer2.flush()
    assert broken.calls == 2 and broken.saved == ["t3"] and writer2.failed == 1 and writer2.spooled == 0
    kept = list((tmp_path / "b" / "failed").glob("*.json"))  # not retried in a loop, not lost either
    assert len(kept) == 1 and '"call_id":"t2"' in kept[0].read_text()
    assert writer2.metrics.value("agent_records_failed_total", reason="rejected") == 1

    always_down = FlakyStore(failures=99, error=down)
    writer3 = RecordWriter(always_down, spool_dir=tmp_path / "c", retry_delays=(0, 0))
    writer3.start()
    writer3.submit(simple_record("t4", H0))
    assert await writer3.wait_until(lambda: always_down.calls >= 3 and writer3.spool_files == 1, 10)
    assert writer3.outage and writer3.failed == 0
    for w in (writer, writer2, writer3):
        assert await w.aclose()
    assert len(list((tmp_path / "c").glob("*.json"))) == 1


async def test_writer_close_spools_at_its_deadline(tmp_path: Path) -> None:
    stuck = FlakyStore(gate=asyncio.Event())  # a database that never answers
    writer = RecordWriter(stuck, spool_dir=tmp_path / "spool")
    writer.start()
    writer.submit(simple_record("s1", H0))
    writer.submit(simple_record("s2", H0))
    started = time.perf_counter()
    assert await writer.aclose(timeout=0.05)
    assert time.perf_counter() - started < 1.0
    assert writer.lost_on_close == 0 and writer.pending == 0 and writer.spooled == 2
    assert len(list((tmp_path / "spool").glob("*.json"))) == 2
    assert writer.metrics.value("agent_records_spooled_total", reason="shutdown") == 2


async def test_spool_keeps_no_credentials_and_sets_unreadable_files_aside(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    down = sa_exc.OperationalError("INSERT INTO calls", {}, ConnectionRefusedError("database restarting"))
    store = FlakyStore(failures=1, error=down)
    prompt = parse_prompt("sales", PROMPT_V1, "<inline>")
    writer = RecordWriter(store, spool_dir=spool_dir, retry_delays=(60,))
    writer.start()
    writer.submit(simple_record("with-prompt", H0), prompt)
    assert await writer.wait_until(lambda: writer.spool_files == 1, 10)
    (written,) = spool_dir.glob("*.json")
    text = written.read_text()
    assert "s3cret" not in text and '"Authorization":"<redacted>"' in text
    assert await writer.aclose()

    # A file cut short (a disk that lied about fsync) and one from somewhere else: set aside, not retried.
    written.write_text(text[: len(text) // 2])
    (spool_dir / f"{1:020d}_other-{'0' * 16}.json").write_text('{"format": 99}')
    ok = FlakyStore()
    again = RecordWriter(ok, spool_dir=spool_dir)
    again.start()
    assert await again.wait_until(lambda: again.failed == 2, 10)
    assert ok.calls == 0 and again.spool_files == 0 and not list(spool_dir.glob("*.json"))
    assert len(list((spool_dir / "failed").glob("*.json"))) == 2
    assert again.metrics.value("agent_records_failed_total", reason="unreadable") == 2
    assert await again.aclose()


# --- recordings ------------------------------------------------------------------------------------------------------

FloatArray = npt.NDArray[np.float64]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tone(freq: float, rate: int, start_s: float, seconds: float, level: float = 0.4) -> npt.NDArray[np.int16]:
    t = start_s + np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * level * 32767).astype(np.int16)


def dominant_hz(samples: FloatArray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def band_energy(samples: FloatArray, rate: int, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(spectrum[np.abs(freqs - hz) < 20].sum())


@pytest.mark.parametrize("memory", [4 << 20, 8 << 10], ids=["in-memory", "spilled"])
async def test_recording_excludes_audio_cut_by_barge_in(tmp_path: Path, memory: int) -> None:
    """3 s call at 8 kHz: caller 440 Hz at 16 kHz the whole time (resampled), bot 1 kHz scheduled 0.5-2.5 s but
    barged in on at 1.5 s, then a 1.5 kHz answer at 2.6-2.9 s. Bot chunks are fed 200 ms ahead, like the playout."""
    clock = FakeClock()
    origin = clock.now
    recorder = CallRecorder(8000, clock=clock, max_memory_bytes=memory)
    frame, lead = 0.02, 0.2
    answers = [(0.5, 2.5, 1000.0), (2.6, 2.9, 1500.0)]
    bot_chunks = [(s, hz) for start, end, hz in answers for s in np.arange(start, end - 1e-9, frame).round(3).tolist()]
    for i in range(150):
        clock.now = origin + (i + 1) * frame
        recorder.caller(tone(440, 16000, i * frame, frame), 16000)
        while bot_chunks and bot_chunks[0][0] <= (i + 1) * frame + lead + 1e-9:
            start, hz = bot_chunks.pop(0)
            recorder.bot(tone(hz, 8000, start, frame), 8000, origin + start)
        if abs((i + 1) * frame - 1.5) < 1e-9:
            recorder.cut(origin + 1.5)  # speech_started -> clearAudio: 200 ms queued at the carrier never played
            bot_chunks = [c for c in bot_chunks if c[1] != 1000.0]  # the playout drops the rest of the answer
    assert recorder.spilled == (memory < 64 << 10)

    path = await recorder.write(tmp_path / "rec" / "call.wav", end_at=origin + 3.0)
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2).astype(np.float64)
    assert abs(len(frames) / 8000 - 3.0) < 0.01
    assert not (tmp_path / "rec" / "call.wav.part").exists()
    left, right = frames[:, 0], frames[:, 1]

    def span(channel: FloatArray, a: float, b: float) -> FloatArray:
        return channel[round(a * 8000) : round(b * 8000)]

    # Left: the caller's tone throughout, none of the bot's.
    assert dominant_hz(span(left, 0.1, 2.9), 8000) == pytest.approx(440, abs=3)
    assert band_energy(span(left, 0.6, 1.4), 8000, 1000) < 0.001 * band_energy(span(left, 0.6, 1.4), 8000, 440)
    # Right: silent before the answer, the answer until the cut, silent after it until the next answer.
    assert not span(right, 0.0, 0.5).any()
    assert dominant_hz(span(right, 0.55, 1.45), 8000) == pytest.approx(1000, abs=3)
    assert np.sqrt(np.mean(span(right, 1.45, 1.5) ** 2)) > 5000
    assert not span(right, 1.5, 2.6).any(), "audio queued but cleared by the barge-in was recorded"
    assert dominant_hz(span(right, 2.62, 2.88), 8000) == pytest.approx(1500, abs=3)
    assert not span(right, 2.9, 3.0).any()
    assert band_energy(span(right, 0.6, 1.4), 8000, 440) < 0.001 * band_energy(span(right, 0.6, 1.4), 8000, 1000)


@pytest.mark.parametrize("memory", [256 << 10, 2 << 10], ids=["in-memory", "spilled"])
async def test_mulaw_recording_keeps_the_wire_bytes_and_decodes_them_off_the_loop(tmp_path: Path, memory: int) -> None:
    """A μ-law call is recorded from the bytes that crossed the wire (no numpy per frame): the WAV holds exactly
    their decoding, silence where nothing played, and nothing of what a barge-in cleared."""
    clock = FakeClock()
    origin = clock.now
    recorder = CallRecorder(8000, clock=clock, max_memory_bytes=memory, mulaw=True)
    rng = np.random.default_rng(7)
    caller = rng.integers(0, 255, 8000, dtype=np.uint8).tobytes()  # 1 s, every byte a code other than silence
    bot = rng.integers(0, 255, 8000, dtype=np.uint8).tobytes()
    for i in range(50):  # caller frames, 20 ms each, from 0 to 1 s
        clock.now = origin + (i + 1) * 0.02
        recorder.caller_mulaw(caller[i * 160 : (i + 1) * 160])
        if i % 5 == 0 and i < 40:  # bot audio in 100 ms messages from 0.3 s on, sent 200 ms ahead
            k = i // 5
            recorder.bot_mulaw(bot[k * 800 : (k + 1) * 800], origin + 0.3 + k * 0.1)
    recorder.cut(origin + 0.75)  # barge-in: the caller heard the bot from 0.3 s to 0.75 s
    assert recorder.spilled == (memory < 16 << 10)
    path = await recorder.write(tmp_path / "mulaw.wav", end_at=origin + 1.0)
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    assert len(frames) == 8000
    assert np.array_equal(frames[:, 0], mulaw_to_pcm16(caller))
    assert not frames[:2400, 1].any() and not frames[6000:, 1].any()
    assert np.array_equal(frames[2400:6000, 1], mulaw_to_pcm16(bot[:3600]))


async def test_recording_of_a_call_that_ends_mid_answer(tmp_path: Path) -> None:
    clock = FakeClock()
    origin = clock.now
    recorder = CallRecorder(16000, clock=clock)
    recorder.caller(tone(300, 8000, 0, 1.0), 8000, at=origin + 1.0)
    recorder.bot(tone(700, 16000, 0, 2.0), 16000, origin + 0.5)  # scheduled to play until 2.5 s
    clock.now = origin + 1.2
    path = await recorder.write_in_background(tmp_path / "short.wav", end_at=origin + 1.2)  # hung up at 1.2 s
    assert path is not None
    with wave.open(str(path), "rb") as wav:
        assert wav.getframerate() == 16000
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    assert abs(len(frames) / 16000 - 1.2) < 0.01
    assert frames[round(0.6 * 16000) :, 1].any() and not frames[round(1.2 * 16000) :, 1].any()


async def test_recording_follows_a_late_carrier(tmp_path: Path) -> None:
    """A checkpoint acknowledged late moves the rest of the schedule, in the playout and in the recording."""
    clock = FakeClock()
    origin = clock.now
    recorder = CallRecorder(8000, clock=clock)
    recorder.bot(tone(1000, 8000, 0, 0.2), 8000, origin + 0.3)
    recorder.bot(tone(1000, 8000, 0.2, 0.2), 8000, origin + 0.5)
    recorder.shift(origin + 0.5, 0.1)  # the second chunk actually started at 0.6 s
    path = await recorder.write(tmp_path / "late.wav", end_at=origin + 1.0)
    with wave.open(str(path), "rb") as wav:
        right = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)[:, 1]
    assert right[2400:4000].any() and not right[4000:4800].any() and right[4800:6400].any()
    assert not right[6400:].any() and recorder.late_cuts == 0


def test_sweep_deletes_only_expired_recordings(tmp_path: Path) -> None:
    now = time.time()
    directory = tmp_path / "recordings"
    old = recording_path(directory, "CA/../old call", now - 40 * 86400)
    new = recording_path(directory, "CA-new", now - 86400)
    partial = directory / "2024-01-01" / "abandoned.wav.part"
    notes = directory / "README.txt"
    outside = tmp_path / "elsewhere" / "old.wav"
    assert old.parent.parent == directory and "/" not in old.name
    for path, age_days in ((old, 40), (new, 1), (partial, 40), (notes, 400), (outside, 400)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF")
        os.utime(path, (now - age_days * 86400,) * 2)
    (directory / "link").symlink_to(outside.parent, target_is_directory=True)

    assert sweep_recordings(directory, 30, now=now) == 2
    assert not old.exists() and not partial.exists()
    assert new.exists() and notes.exists() and outside.exists()
    assert not old.parent.exists() and not partial.parent.exists()  # emptied day folders go too
    assert sweep_recordings(directory, 30, now=now) == 0
    assert sweep_recordings(tmp_path / "missing", 30) == 0


async def test_recordings_of_one_call_never_share_or_overwrite_a_file(tmp_path: Path) -> None:
    """A call resumed on a new stream, or a second stream with the same call id, gets a file of its own; a file
    already there is never replaced."""
    directory = tmp_path / "recordings"
    first, second = (recording_path(directory, "CA-same", H0) for _ in range(2))
    assert first != second and first.parent == second.parent and first.name.startswith("CA-same")

    def recorder(hz: float) -> CallRecorder:
        clock = FakeClock()
        made = CallRecorder(8000, clock=clock)
        made.caller(tone(hz, 8000, 0, 0.5), 8000, at=clock.now + 0.5)
        return made

    await asyncio.gather(recorder(440).write(first), recorder(880).write(second))  # both streams at once

    def loudest(path: Path) -> float:
        with wave.open(str(path), "rb") as wav:
            frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
        return dominant_hz(frames[:, 0].astype(np.float64), 8000)

    assert loudest(first) == pytest.approx(440, abs=3) and loudest(second) == pytest.approx(880, abs=3)
    kept = first.read_bytes()
    late = recorder(1200)
    with pytest.raises(FileExistsError):
        await late.write(first)
    assert first.read_bytes() == kept
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, second.name])  # no partials


async def test_retention_deletes_old_calls_with_their_rows_and_old_recordings(
    store: CallStore, db: Database, tmp_path: Path
) -> None:
    now = float(int(time.time()))  # whole seconds: stored times round to microseconds
    old, new = realistic_record("CA-old", now - 40 * 86400), realistic_record("CA-new", now - 86400)
    await store.save(old)
    await store.save(new)
    recordings = tmp_path / "recordings"
    old_file = recording_path(recordings, "CA-old", now - 40 * 86400)
    old_file.parent.mkdir(parents=True)
    old_file.write_bytes(b"RIFF")
    os.utime(old_file, (now - 40 * 86400,) * 2)

    result = await sweep_expired(store, recordings, 30, now=now)

    assert (result.calls, result.recordings) == (1, 1)
    assert await store.get_call("CA-old") is None and not old_file.exists()
    detail = await store.get_call("CA-new")
    assert detail is not None
    assert_same_record(detail.record, new)
    async with db.engine.connect() as conn:
        for table in t.CHILD_TABLES:
            left = select(table.c.call_id, func.count()).group_by(table.c.call_id)
            assert dict((await conn.execute(left)).all()).keys() == {"CA-new"}, table.name
    assert (await sweep_expired(store, recordings, 30, now=now)).calls == 0


async def test_retention_runs_with_recording_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The app's sweeper deletes expired call records (and recordings made earlier) with AGENT_RECORD_CALLS off."""
    now = time.time()
    settings = Settings(
        openai_api_key="sk-test-not-a-real-key",
        prompts_dir=ROOT / "prompts",
        database_url=f"sqlite+aiosqlite:///{tmp_path}/agent.db",
        recordings_dir=tmp_path / "recordings",
        spool_dir=tmp_path / "spool",
        record_calls=False,
        recording_retention_days=30,
        insecure_webhooks=True,
    )
    seeded = Database(settings.database_url)
    await seeded.migrate()
    store = CallStore(seeded)
    await store.save(simple_record("CA-expired", now - 31 * 86400, said="long ago"))
    await store.save(simple_record("CA-recent", now - 3600, said="just now"))
    old_file = recording_path(settings.recordings_dir, "CA-expired", now - 31 * 86400)
    old_file.parent.mkdir(parents=True)
    old_file.write_bytes(b"RIFF")
    os.utime(old_file, (now - 31 * 86400,) * 2)

    swept = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("retention: deleted"):
                swept.set()

    caplog.set_level(logging.INFO, logger="agent.storage")
    watch = Watch()
    logging.getLogger("agent.storage").addHandler(watch)
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            assert await wait_event(swept, 30), "no retention pass with recording off"
    finally:
        logging.getLogger("agent.storage").removeHandler(watch)
    assert await store.get_call("CA-expired") is None and not old_file.exists()
    assert await store.get_call("CA-recent") is not None
    await seeded.aclose()


async def test_periodic_helper_runs_at_once_and_survives_failures() -> None:
    runs: list[int] = []
    second = asyncio.Event()

    async def job() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        second.set()

    task = run_periodically(0, job, name="test-job")
    await within(5, second.wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runs[:2] == [0, 1]


async def test_per_version_eval_and_experiment_queries(store: CallStore) -> None:
    """The Prompts and Experiments pages' queries, the same on SQLite and PostgreSQL."""
    for i in range(3):
        record = simple_record(f"CA-v1-{i}", H0 + i, latencies=(100.0 * (i + 1),), tags={"eval_run": "r1"})
        record.prompt_name, record.prompt_hash = "default", "v1"
        await store.save(record)
        await store.add_tags(record.call_id, {"eval_verdict": "fail" if i == 2 else "pass"})
    other = simple_record("CA-v2", H0 + 10, latencies=(50.0,), barge_ins=1, end_reason="agent_end_call")
    other.prompt_name, other.prompt_hash = "default", "v2"
    await store.save(other)
    await store.add_tags("CA-v2", {"eval_verdict": "pass"})
    await store.add_tags("CA-v2", {"eval_verdict": "fail"})  # replaced, not added
    stats = await store.version_stats("default")
    assert set(stats) == {"v1", "v2"}
    assert stats["v1"].calls == 3 and stats["v1"].latency_ms.p50 == 200.0 and stats["v1"].latency_ms.p95 == 290.0
    assert stats["v2"].end_reasons == {"agent_end_call": 1} and stats["v2"].barge_in_rate == 1.0
    evals = await store.eval_results("default")
    assert [(r.run, r.calls, r.passed, r.failed) for r in evals["v1"]] == [("r1", 3, 2, 1)]
    assert "v2" not in evals  # not part of an eval run
    for i, arm in enumerate(("control", "control", "candidate")):
        tagged = simple_record(f"CA-x-{i}", H0 + 20 + i, latencies=(300.0 + i,), tags={"experiment": "x", "arm": arm})
        await store.save(tagged)
    arms = await store.experiment_arms("x")
    assert arms["control"].stats.calls == 2 and sorted(arms["control"].latencies_ms) == [[300.0], [301.0]]
    assert arms["candidate"].stats.calls == 1 and arms["candidate"].latencies_ms == [[302.0]]


def test_serve_migrates_a_schema_that_is_behind_in_a_child_process(tmp_path: Path) -> None:
    """`serve` hands a first start's (or an upgrade's) migration to a child: the server never loads Alembic."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}"
    script = (
        "import asyncio, sys\n"
        "from agent.storage.database import Database, head_revision, migrate_in_child\n"
        "async def main():\n"
        f"    assert await migrate_in_child({url!r})\n"
        f"    db = Database({url!r})\n"
        "    await db.migrate()\n"
        "    print(await db.revision() == head_revision())\n"
        "    await db.aclose()\n"
        "asyncio.run(main())\n"
        "print(any(m == 'alembic' or m.startswith('alembic.') for m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "False"]  # at the head, and Alembic never loaded in this process


def test_a_recording_holds_at_most_a_few_seconds_in_memory_by_default() -> None:
    """Every concurrent call records: a call's memory must not grow with its recording (moved to a file)."""
    clock = FakeClock()
    origin = clock.now
    recorder = CallRecorder(8000, clock=clock, mulaw=True)
    frame = bytes(range(1, 161))
    for i in range(150):  # 3 s of caller audio
        clock.now = origin + (i + 1) * 0.02
        recorder.caller_mulaw(frame)
    assert recorder.spilled
    recorder.discard()


async def test_a_long_spilled_mulaw_recording_is_byte_identical_to_one_kept_in_memory(tmp_path: Path) -> None:
    """20 s of caller and bot audio: the spilled channels go through several flushes of the file's write buffer
    (32 KB) and must give the very same WAV as channels that never left memory."""
    rng = np.random.default_rng(11)
    caller = rng.integers(0, 255, 8000 * 20, dtype=np.uint8).tobytes()
    bot = rng.integers(0, 255, 8000 * 20, dtype=np.uint8).tobytes()
    files = []
    for memory in (8 << 20, 2 << 10):
        clock = FakeClock()
        origin = clock.now
        recorder = CallRecorder(8000, clock=clock, max_memory_bytes=memory, mulaw=True)
        for i in range(1000):
            clock.now = origin + (i + 1) * 0.02
            recorder.caller_mulaw(caller[i * 160 : (i + 1) * 160])
            if i % 5 == 0:
                k = i // 5
                recorder.bot_mulaw(bot[k * 800 : (k + 1) * 800], origin + 0.2 + k * 0.1)
        assert recorder.spilled == (memory < 64 << 10)
        files.append((await recorder.write(tmp_path / f"{memory}.wav", end_at=origin + 20.0)).read_bytes())
    assert len(files[0]) > 2 * 2 * 8000 * 19 and files[0] == files[1]
