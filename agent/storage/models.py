"""The call-record schema as typed SQLAlchemy 2 ORM classes.

One row per call in `calls`, with the counts the call list and the summary need kept on it (so neither has to
scan child tables); turns, barge-ins, tool uses and events hang off it keyed by (call_id, seq), so a re-save
replaces them wholesale and order is explicit. Tags live in their own table so "calls of eval run X" is an
indexed lookup on SQLite and PostgreSQL alike. Prompt versions are keyed by (name, hash): stored once, the first
time a call uses them.

Timestamps are timezone-aware UTC in Python on both databases (SQLite keeps naive UTC text, PostgreSQL
`timestamptz`), so range filters and bucketing behave the same everywhere.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

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

JsonType = JSON().with_variant(JSONB(), "postgresql")


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


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UtcDateTime(), dict[str, Any]: JsonType}


class Call(Base):
    __tablename__ = "calls"

    call_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    from_number: Mapped[str] = mapped_column(String(NUMBER_LEN), default="", index=True)
    to_number: Mapped[str] = mapped_column(String(NUMBER_LEN), default="", index=True)
    direction: Mapped[str] = mapped_column(String(SHORT_LEN), default="")
    stream_id: Mapped[str] = mapped_column(String(ID_LEN), default="")
    prompt_name: Mapped[str] = mapped_column(String(SHORT_LEN), default="")
    prompt_hash: Mapped[str] = mapped_column(String(SHORT_LEN), default="")
    started_at: Mapped[dt.datetime] = mapped_column(index=True)
    ended_at: Mapped[dt.datetime | None]
    duration_s: Mapped[float | None] = mapped_column(Float)
    end_reason: Mapped[str | None] = mapped_column(String(SHORT_LEN), index=True)
    hung_up_by: Mapped[str | None] = mapped_column(String(SHORT_LEN))
    input_text_tokens: Mapped[int] = mapped_column(Integer, default=0)
    input_audio_tokens: Mapped[int] = mapped_column(Integer, default=0)
    input_cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_text_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_audio_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    recording_path: Mapped[str | None] = mapped_column(Text)
    # Denormalised counts, rewritten on every save: the call list and the summary read only this table.
    turn_count: Mapped[int] = mapped_column(Integer, default=0)
    assistant_turns: Mapped[int] = mapped_column(Integer, default=0)
    interrupted_turns: Mapped[int] = mapped_column(Integer, default=0)
    barge_in_count: Mapped[int] = mapped_column(Integer, default=0)
    tool_count: Mapped[int] = mapped_column(Integer, default=0)
    tool_failures: Mapped[int] = mapped_column(Integer, default=0)
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    first_saved_at: Mapped[dt.datetime]
    saved_at: Mapped[dt.datetime]
    saves: Mapped[int] = mapped_column(Integer, default=1)

    turns: Mapped[list[Turn]] = relationship(
        order_by="Turn.seq", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )
    barge_ins: Mapped[list[BargeIn]] = relationship(
        order_by="BargeIn.seq", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )
    tool_uses: Mapped[list[ToolUse]] = relationship(
        order_by="ToolUse.seq", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )
    events: Mapped[list[CallEvent]] = relationship(
        order_by="CallEvent.seq", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )
    tags: Mapped[list[CallTag]] = relationship(cascade="all, delete-orphan", passive_deletes=True, lazy="raise")

    __table_args__ = (Index(None, "prompt_name", "prompt_hash"),)


def _call_fk() -> Mapped[str]:
    return mapped_column(String(ID_LEN), ForeignKey("calls.call_id", ondelete="CASCADE"), primary_key=True)


class Turn(Base):
    __tablename__ = "turns"

    call_id: Mapped[str] = _call_fk()
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    speaker: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime | None]
    item_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    heard_ms: Mapped[float | None] = mapped_column(Float)
    audio_ms: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)


class BargeIn(Base):
    __tablename__ = "barge_ins"

    call_id: Mapped[str] = _call_fk()
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    t: Mapped[dt.datetime]
    item_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    heard_ms: Mapped[float] = mapped_column(Float)
    clear_ms: Mapped[float] = mapped_column(Float)


class ToolUse(Base):
    __tablename__ = "tool_uses"

    call_id: Mapped[str] = _call_fk()
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(ID_LEN))
    arguments: Mapped[dict[str, Any]]
    started_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime | None]
    ok: Mapped[bool | None] = mapped_column(Boolean)
    result: Mapped[str | None] = mapped_column(Text)


class CallEvent(Base):
    __tablename__ = "call_events"

    call_id: Mapped[str] = _call_fk()
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    t: Mapped[dt.datetime]
    kind: Mapped[str] = mapped_column(String(SHORT_LEN))
    detail: Mapped[dict[str, Any]]


class CallTag(Base):
    __tablename__ = "call_tags"

    call_id: Mapped[str] = _call_fk()
    key: Mapped[str] = mapped_column(String(SHORT_LEN), primary_key=True)
    value: Mapped[str] = mapped_column(String(TAG_VALUE_LEN))

    __table_args__ = (Index(None, "key", "value"),)


class PromptVersion(Base):
    """One version of a prompt as first seen on a call.

    `instructions` is the template from the prompt file when the file still matched the call's hash at save
    time (`from_source`), otherwise the instructions as the call used them (variables may be filled in).
    `meta` is the front matter with tool header values redacted: they are often credentials.
    """

    __tablename__ = "prompt_versions"

    name: Mapped[str] = mapped_column(String(SHORT_LEN), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(SHORT_LEN), primary_key=True)
    instructions: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]]
    from_source: Mapped[bool] = mapped_column(Boolean, default=False)
    first_seen: Mapped[dt.datetime]
