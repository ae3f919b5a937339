"""The outbound schema: campaigns, their numbers, every dial attempt, and the do-not-call list.

Everything a dialler needs lives here rather than in one process, so any replica (or a restarted one) can carry a
campaign on: a number is claimed by a conditional UPDATE (state `pending` → `dialing`) under a lock on its
campaign's row, and every Vobiz callback finds its attempt by the id carried in the callback URL. Times are epoch
seconds (floats), as in `call_states`, so window and back-off arithmetic needs no time-zone handling in SQL.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from agent.storage.tables import metadata

campaigns = Table(
    "campaigns",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("prompt", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # running | paused | stopped | completed
    Column("from_number", String(32), nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("rate_per_min", Float, nullable=False),  # 0: no rate limit
    Column("window_start", String(5), nullable=False),  # HH:MM in the callee's local time
    Column("window_end", String(5), nullable=False),
    Column("timezone", String(64), nullable=False),  # for rows that name none
    Column("max_attempts", Integer, nullable=False),
    Column("retry_delay_s", Float, nullable=False),  # doubled after each further attempt
    Column("retry_on", JSON, nullable=False),  # results that are retried: busy, no_answer, failed
    Column("next_dial_at", Float, nullable=False),  # the rate limiter's next free slot, shared by every dialler
    Column("total", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

campaign_numbers = Table(
    "campaign_numbers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("campaign_id", String(64), ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
    Column("row_no", Integer, nullable=False),
    Column("number", String(32), nullable=False),
    Column("variables", JSON, nullable=False),
    Column("timezone", String(64), nullable=True),
    Column("state", String(16), nullable=False),  # pending | dialing | done
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("attempt_id", String(64), nullable=True),  # the attempt in flight (state dialing) or the last one
    Column("call_id", String(128), nullable=True),
    Column("last_result", String(16), nullable=True),
    Column("outcome", String(16), nullable=True),  # final: person | machine | busy | no_answer | failed | dnc
    Column("duration_s", Float, nullable=True),
    Column("hangup_cause", String(64), nullable=True),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("campaign_id", "number"),
    Index(None, "campaign_id", "state", "next_attempt_at"),
    Index(None, "state", "lease_until"),
)

outbound_calls = Table(
    "outbound_calls",
    metadata,
    Column("attempt_id", String(64), primary_key=True),
    Column("campaign_id", String(64), ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("number_id", Integer, ForeignKey("campaign_numbers.id", ondelete="CASCADE"), nullable=True),
    Column("attempt_no", Integer, nullable=False),
    Column("to_number", String(32), nullable=False),
    Column("prompt", String(64), nullable=False),
    # claimed (not sent yet) | placing (make-call sent, no reply yet) | placed | ringing | answered | ended
    Column("state", String(16), nullable=False),
    Column("call_id", String(128), nullable=True, index=True),
    Column("answered_by", String(16), nullable=True),  # machine | person, from Vobiz's machine detection
    Column("result", String(16), nullable=True),  # person | machine | busy | no_answer | failed
    Column("hangup_cause", String(64), nullable=True),
    Column("duration_s", Float, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("placed_at", Float, nullable=True),
    Column("ended_at", Float, nullable=True),
    UniqueConstraint("number_id", "attempt_no"),
)

do_not_call = Table(
    "do_not_call",
    metadata,
    Column("number", String(32), primary_key=True),
    Column("reason", String(128), nullable=False),
    Column("added_at", Float, nullable=False),
)
