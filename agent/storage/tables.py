"""The call-record schema as SQLAlchemy Core tables.

One row per call in `calls`, with the counts the call list and the summary need kept on it (so neither has to
scan child tables); turns, barge-ins, tool uses and events hang off it keyed by (call_id, seq), so a re-save
replaces them wholesale and order is explicit. Tags live in their own table so "calls of eval run X" is an
indexed lookup on SQLite and PostgreSQL alike. Prompt versions are keyed by (name, hash): stored once, the first
time a call uses them.

Core, not ORM classes: the store writes and reads plain rows, and the ORM (~6 MB) would sit in every replica's
memory for nothing. JSON columns are JSONB on PostgreSQL, chosen when the dialect is known, so SQLite never loads
the PostgreSQL dialect (~2 MB). Every other table (call states, nonces, campaigns) joins `metadata`.

Timestamps are timezone-aware UTC in Python on both databases (SQLite keeps naive UTC text, PostgreSQL
`timestamptz`), so range filters and bucketing behave the same everywhere.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.types import TypeEngine

# Constraint names are fixed so later migrations can drop or alter them by name on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Column sizes; the store cuts values to these before writing so an odd value can never fail a save.
ID_LEN = 128
NUMBER_LEN = 64
SHORT_LEN = 64
TAG_VALUE_LEN = 256

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in and out, whatever the database does with time zones."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware (UTC) datetime")
        value = value.astimezone(dt.UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class JsonDocument(TypeDecorator[Any]):
    """JSON, stored as JSONB on PostgreSQL (what the migrations create there)."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


def _call_fk() -> Column[str]:
    return Column(
        "call_id", String(ID_LEN), ForeignKey("calls.call_id", ondelete="CASCADE"), primary_key=True, nullable=False
    )


calls = Table(
    "calls",
    metadata,
    Column("call_id", String(ID_LEN), primary_key=True),
    Column("from_number", String(NUMBER_LEN), nullable=False, index=True),
    Column("to_number", String(NUMBER_LEN), nullable=False, index=True),
    Column("direction", String(SHORT_LEN), nullable=False),
    Column("stream_id", String(ID_LEN), nullable=False),
    Column("prompt_name", String(SHORT_LEN), nullable=False),
    Column("prompt_hash", String(SHORT_LEN), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False, index=True),
    Column("ended_at", UtcDateTime(), nullable=True),
    Column("duration_s", Float, nullable=True),
    Column("end_reason", String(SHORT_LEN), nullable=True, index=True),
    Column("hung_up_by", String(SHORT_LEN), nullable=True),
    Column("input_text_tokens", Integer, nullable=False),
    Column("input_audio_tokens", Integer, nullable=False),
    Column("input_cached_tokens", Integer, nullable=False),
    Column("output_text_tokens", Integer, nullable=False),
    Column("output_audio_tokens", Integer, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("recording_path", Text, nullable=True),
    # Denormalised counts, rewritten on every save: the call list and the summary read only this table.
    Column("turn_count", Integer, nullable=False),
    Column("assistant_turns", Integer, nullable=False),
    Column("interrupted_turns", Integer, nullable=False),
    Column("barge_in_count", Integer, nullable=False),
    Column("tool_count", Integer, nullable=False),
    Column("tool_failures", Integer, nullable=False),
    Column("event_count", Integer, nullable=False),
    Column("first_saved_at", UtcDateTime(), nullable=False),
    Column("saved_at", UtcDateTime(), nullable=False),
    Column("saves", Integer, nullable=False),
    Index(None, "prompt_name", "prompt_hash"),
)

turns = Table(
    "turns",
    metadata,
    _call_fk(),
    Column("seq", Integer, primary_key=True),
    Column("speaker", String(16), nullable=False),
    Column("text", Text, nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("ended_at", UtcDateTime(), nullable=True),
    Column("item_id", String(ID_LEN), nullable=True),
    Column("interrupted", Boolean, nullable=False),
    Column("heard_ms", Float, nullable=True),
    Column("audio_ms", Float, nullable=True),
    Column("latency_ms", Float, nullable=True),
)

barge_ins = Table(
    "barge_ins",
    metadata,
    _call_fk(),
    Column("seq", Integer, primary_key=True),
    Column("t", UtcDateTime(), nullable=False),
    Column("item_id", String(ID_LEN), nullable=True),
    Column("heard_ms", Float, nullable=False),
    Column("clear_ms", Float, nullable=False),
)

tool_uses = Table(
    "tool_uses",
    metadata,
    _call_fk(),
    Column("seq", Integer, primary_key=True),
    Column("name", String(ID_LEN), nullable=False),
    Column("arguments", JsonDocument(), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("ended_at", UtcDateTime(), nullable=True),
    Column("ok", Boolean, nullable=True),
    Column("result", Text, nullable=True),
)

call_events = Table(
    "call_events",
    metadata,
    _call_fk(),
    Column("seq", Integer, primary_key=True),
    Column("t", UtcDateTime(), nullable=False),
    Column("kind", String(SHORT_LEN), nullable=False),
    Column("detail", JsonDocument(), nullable=False),
)

call_tags = Table(
    "call_tags",
    metadata,
    _call_fk(),
    Column("key", String(SHORT_LEN), primary_key=True),
    Column("value", String(TAG_VALUE_LEN), nullable=False),
    Index(None, "key", "value"),
)

# One version of a prompt as first seen on a call. `instructions` is the template from the prompt file when the
# file still matched the call's hash at save time (`from_source`), otherwise the instructions as the call used
# them (variables may be filled in). `meta` is the front matter with tool header values redacted: they are often
# credentials.
prompt_versions = Table(
    "prompt_versions",
    metadata,
    Column("name", String(SHORT_LEN), primary_key=True),
    Column("content_hash", String(SHORT_LEN), primary_key=True),
    Column("instructions", Text, nullable=False),
    Column("meta", JsonDocument(), nullable=False),
    Column("from_source", Boolean, nullable=False),
    Column("first_seen", UtcDateTime(), nullable=False),
)

CHILD_TABLES = (turns, barge_ins, tool_uses, call_events, call_tags)
"""What hangs off a call, replaced whenever the call is saved again."""
