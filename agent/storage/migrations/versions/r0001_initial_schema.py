"""Initial call-record schema: calls, turns, barge-ins, tool uses, events, tags and prompt versions.

Revision ID: 0001
Revises:
Create Date: 2026-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from the models: a revision must keep meaning what it meant when written.
TIME = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _call_id() -> sa.Column[str]:
    return sa.Column("call_id", sa.String(length=128), nullable=False)


def _call_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["call_id"], ["calls.call_id"], name=op.f(f"fk_{table}_call_id_calls"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "calls",
        _call_id(),
        sa.Column("from_number", sa.String(length=64), nullable=False),
        sa.Column("to_number", sa.String(length=64), nullable=False),
        sa.Column("direction", sa.String(length=64), nullable=False),
        sa.Column("stream_id", sa.String(length=128), nullable=False),
        sa.Column("prompt_name", sa.String(length=64), nullable=False),
        sa.Column("prompt_hash", sa.String(length=64), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("ended_at", TIME, nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("end_reason", sa.String(length=64), nullable=True),
        sa.Column("hung_up_by", sa.String(length=64), nullable=True),
        sa.Column("input_text_tokens", sa.Integer(), nullable=False),
        sa.Column("input_audio_tokens", sa.Integer(), nullable=False),
        sa.Column("input_cached_tokens", sa.Integer(), nullable=False),
        sa.Column("output_text_tokens", sa.Integer(), nullable=False),
        sa.Column("output_audio_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("recording_path", sa.Text(), nullable=True),
        sa.Column("turn_count", sa.Integer(), nullable=False),
        sa.Column("assistant_turns", sa.Integer(), nullable=False),
        sa.Column("interrupted_turns", sa.Integer(), nullable=False),
        sa.Column("barge_in_count", sa.Integer(), nullable=False),
        sa.Column("tool_count", sa.Integer(), nullable=False),
        sa.Column("tool_failures", sa.Integer(), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("first_saved_at", TIME, nullable=False),
        sa.Column("saved_at", TIME, nullable=False),
        sa.Column("saves", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("call_id", name=op.f("pk_calls")),
    )
    op.create_index(op.f("ix_calls_started_at"), "calls", ["started_at"])
    op.create_index(op.f("ix_calls_end_reason"), "calls", ["end_reason"])
    op.create_index(op.f("ix_calls_from_number"), "calls", ["from_number"])
    op.create_index(op.f("ix_calls_to_number"), "calls", ["to_number"])
    op.create_index(op.f("ix_calls_prompt_name_prompt_hash"), "calls", ["prompt_name", "prompt_hash"])

    op.create_table(
        "turns",
        _call_id(),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("speaker", sa.String(length=16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("ended_at", TIME, nullable=True),
        sa.Column("item_id", sa.String(length=128), nullable=True),
        sa.Column("interrupted", sa.Boolean(), nullable=False),
        sa.Column("heard_ms", sa.Float(), nullable=True),
        sa.Column("audio_ms", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        _call_fk("turns"),
        sa.PrimaryKeyConstraint("call_id", "seq", name=op.f("pk_turns")),
    )
    op.create_table(
        "barge_ins",
        _call_id(),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("t", TIME, nullable=False),
        sa.Column("item_id", sa.String(length=128), nullable=True),
        sa.Column("heard_ms", sa.Float(), nullable=False),
        sa.Column("clear_ms", sa.Float(), nullable=False),
        _call_fk("barge_ins"),
        sa.PrimaryKeyConstraint("call_id", "seq", name=op.f("pk_barge_ins")),
    )
    op.create_table(
        "tool_uses",
        _call_id(),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("arguments", JSON, nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("ended_at", TIME, nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        _call_fk("tool_uses"),
        sa.PrimaryKeyConstraint("call_id", "seq", name=op.f("pk_tool_uses")),
    )
    op.create_table(
        "call_events",
        _call_id(),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("t", TIME, nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("detail", JSON, nullable=False),
        _call_fk("call_events"),
        sa.PrimaryKeyConstraint("call_id", "seq", name=op.f("pk_call_events")),
    )
    op.create_table(
        "call_tags",
        _call_id(),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        _call_fk("call_tags"),
        sa.PrimaryKeyConstraint("call_id", "key", name=op.f("pk_call_tags")),
    )
    op.create_index(op.f("ix_call_tags_key_value"), "call_tags", ["key", "value"])

    op.create_table(
        "prompt_versions",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("instructions", sa.Text(), nullable=False),
        sa.Column("meta", JSON, nullable=False),
        sa.Column("from_source", sa.Boolean(), nullable=False),
        sa.Column("first_seen", TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", "content_hash", name=op.f("pk_prompt_versions")),
    )


def downgrade() -> None:
    op.drop_table("prompt_versions")
    op.drop_index(op.f("ix_call_tags_key_value"), table_name="call_tags")
    for table in ("call_tags", "call_events", "tool_uses", "barge_ins", "turns"):
        op.drop_table(table)
    for index in ("prompt_name_prompt_hash", "to_number", "from_number", "end_reason", "started_at"):
        op.drop_index(op.f(f"ix_calls_{index}"), table_name="calls")
    op.drop_table("calls")
