"""Outbound calls and campaigns: campaigns, their numbers, each dial attempt, the do-not-call list.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("prompt", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("from_number", sa.String(length=32), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("rate_per_min", sa.Float(), nullable=False),
        sa.Column("window_start", sa.String(length=5), nullable=False),
        sa.Column("window_end", sa.String(length=5), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("retry_delay_s", sa.Float(), nullable=False),
        sa.Column("retry_on", sa.JSON(), nullable=False),
        sa.Column("next_dial_at", sa.Float(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
        sa.UniqueConstraint("name", name=op.f("uq_campaigns_name")),
    )
    op.create_table(
        "campaign_numbers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.String(length=64), nullable=False),
        sa.Column("row_no", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(length=32), nullable=False),
        sa.Column("variables", sa.JSON(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("attempt_id", sa.String(length=64), nullable=True),
        sa.Column("call_id", sa.String(length=128), nullable=True),
        sa.Column("last_result", sa.String(length=16), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("hangup_cause", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_numbers_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_numbers")),
        sa.UniqueConstraint("campaign_id", "number", name=op.f("uq_campaign_numbers_campaign_id_number")),
    )
    op.create_index(
        op.f("ix_campaign_numbers_campaign_id_state_next_attempt_at"),
        "campaign_numbers",
        ["campaign_id", "state", "next_attempt_at"],
    )
    op.create_index(op.f("ix_campaign_numbers_state_lease_until"), "campaign_numbers", ["state", "lease_until"])
    op.create_table(
        "outbound_calls",
        sa.Column("attempt_id", sa.String(length=64), nullable=False),
        sa.Column("campaign_id", sa.String(length=64), nullable=True),
        sa.Column("number_id", sa.Integer(), nullable=True),
        sa.Column("attempt_no", sa.Integer(), nullable=False),
        sa.Column("to_number", sa.String(length=32), nullable=False),
        sa.Column("prompt", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("call_id", sa.String(length=128), nullable=True),
        sa.Column("answered_by", sa.String(length=16), nullable=True),
        sa.Column("result", sa.String(length=16), nullable=True),
        sa.Column("hangup_cause", sa.String(length=64), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("placed_at", sa.Float(), nullable=True),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_outbound_calls_campaign_id_campaigns"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["number_id"],
            ["campaign_numbers.id"],
            name=op.f("fk_outbound_calls_number_id_campaign_numbers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("attempt_id", name=op.f("pk_outbound_calls")),
        sa.UniqueConstraint("number_id", "attempt_no", name=op.f("uq_outbound_calls_number_id_attempt_no")),
    )
    op.create_index(op.f("ix_outbound_calls_campaign_id"), "outbound_calls", ["campaign_id"])
    op.create_index(op.f("ix_outbound_calls_call_id"), "outbound_calls", ["call_id"])
    op.create_table(
        "do_not_call",
        sa.Column("number", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=128), nullable=False),
        sa.Column("added_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_do_not_call")),
    )


def downgrade() -> None:
    op.drop_table("do_not_call")
    op.drop_index(op.f("ix_outbound_calls_call_id"), table_name="outbound_calls")
    op.drop_index(op.f("ix_outbound_calls_campaign_id"), table_name="outbound_calls")
    op.drop_table("outbound_calls")
    op.drop_index(op.f("ix_campaign_numbers_state_lease_until"), table_name="campaign_numbers")
    op.drop_index(op.f("ix_campaign_numbers_campaign_id_state_next_attempt_at"), table_name="campaign_numbers")
    op.drop_table("campaign_numbers")
    op.drop_table("campaigns")
