"""What a call needs across requests (answer context, outcome, end), shared by every replica.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "call_states",
        sa.Column("call_id", sa.String(length=128), nullable=False),
        sa.Column("answered_at", sa.Float(), nullable=False),
        sa.Column("prompt", sa.String(length=128), nullable=True),
        sa.Column("caller", sa.String(length=64), nullable=True),
        sa.Column("called", sa.String(length=64), nullable=True),
        sa.Column("direction", sa.String(length=16), nullable=True),
        sa.Column("variables", sa.JSON(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=True),
        sa.Column("outcome_action", sa.String(length=16), nullable=True),
        sa.Column("outcome_reason", sa.String(length=64), nullable=True),
        sa.Column("transfer_number", sa.String(length=32), nullable=True),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("call_id", name=op.f("pk_call_states")),
    )
    op.create_index(op.f("ix_call_states_answered_at"), "call_states", ["answered_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_call_states_answered_at"), table_name="call_states")
    op.drop_table("call_states")
