"""What a call needs across requests, shared by every replica: how it was answered, how it must end, whether it did.

Vobiz sends a call's answer webhook, its stream socket, its status callbacks, the after-stream redirect, the
transfer fetch and the hangup as separate requests, and behind a load balancer each may reach another replica.
So the answer context (numbers, prompt, outbound variables, tags), the outcome a call decided on (hang up,
transfer to whom, apologise) and its end are kept here, in the database, not in one process's memory. Each write
is one small upsert keyed by the call id; webhook retries are harmless.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, Column, Float, String, Table, delete, select

from agent.storage.database import Database
from agent.storage.inserts import dialect_insert
from agent.storage.tables import metadata

call_states = Table(
    "call_states",
    metadata,
    Column("call_id", String(128), primary_key=True),
    Column("answered_at", Float, nullable=False, index=True),
    Column("prompt", String(128), nullable=True),
    Column("caller", String(64), nullable=True),
    Column("called", String(64), nullable=True),
    Column("direction", String(16), nullable=True),
    Column("variables", JSON, nullable=True),
    Column("tags", JSON, nullable=True),
    Column("outcome_action", String(16), nullable=True),
    Column("outcome_reason", String(64), nullable=True),
    Column("transfer_number", String(32), nullable=True),
    Column("ended_at", Float, nullable=True),
)


@dataclass(frozen=True)
class AnswerContext:
    """How a call was answered: enough for any replica to run its stream with the same prompt and labels."""

    call_id: str
    prompt: str
    caller: str = ""
    called: str = ""
    direction: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredOutcome:
    action: str
    reason: str
    transfer_number: str | None


@dataclass(frozen=True)
class StoredCall:
    answer: AnswerContext | None
    outcome: StoredOutcome | None
    ended: bool


class CallStates:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def answered(self, context: AnswerContext) -> None:
        values = {
            "call_id": context.call_id,
            "answered_at": time.time(),
            "prompt": context.prompt,
            "caller": context.caller[:64],
            "called": context.called[:64],
            "direction": context.direction[:16],
            "variables": context.variables,
            "tags": context.tags,
        }
        keep = {"call_id", "answered_at"}
        await self._upsert(values, {k: v for k, v in values.items() if k not in keep})

    async def set_outcome(self, call_id: str, action: str, reason: str, transfer_number: str | None) -> None:
        values = {"outcome_action": action, "outcome_reason": reason[:64], "transfer_number": transfer_number}
        await self._upsert({"call_id": call_id, "answered_at": time.time(), **values}, values)

    async def ended(self, call_id: str) -> None:
        now = time.time()
        await self._upsert({"call_id": call_id, "answered_at": now, "ended_at": now}, {"ended_at": now})

    async def get(self, call_id: str) -> StoredCall | None:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(call_states).where(call_states.c.call_id == call_id))).one_or_none()
        if row is None:
            return None
        answer = None
        if row.prompt is not None:
            answer = AnswerContext(
                call_id,
                row.prompt,
                row.caller or "",
                row.called or "",
                row.direction or "",
                dict(row.variables or {}),
                dict(row.tags or {}),
            )
        outcome = None
        if row.outcome_action is not None:
            outcome = StoredOutcome(row.outcome_action, row.outcome_reason or "", row.transfer_number)
        return StoredCall(answer, outcome, row.ended_at is not None)

    async def expire(self, before: float) -> int:
        """Forget calls answered before `before` (wall time); returns how many went."""
        async with self.db.engine.begin() as conn:
            result = await conn.execute(delete(call_states).where(call_states.c.answered_at < before))
        return int(result.rowcount or 0)

    async def _upsert(self, values: dict[str, Any], updates: dict[str, Any]) -> None:
        statement = dialect_insert(self.db.dialect, call_states).values(values)
        statement = statement.on_conflict_do_update(index_elements=[call_states.c.call_id], set_=updates)
        async with self.db.engine.begin() as conn:
            await conn.execute(statement)
