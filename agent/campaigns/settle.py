"""Campaign results: each attempt settled once from Vobiz's callbacks (whichever replica receives them), retries
scheduled by the rules, leases that ran out reconciled, finished campaigns closed (see `store` for the claims)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy import and_, case, delete, func, literal, select, update
from sqlalchemy.exc import OperationalError

from agent.campaigns.reads import CampaignReads
from agent.campaigns.spec import (
    Settled,
)
from agent.campaigns.tables import campaign_numbers, campaigns, outbound_calls
from agent.storage.aio import AsyncConnection

_T = TypeVar("_T")
_LOCKED_RETRIES = 6


class CampaignSettlement(CampaignReads):
    @property
    def _pg(self) -> bool:
        return self.db.dialect == "postgresql"

    # --- claims given back --------------------------------------------------------------------------------

    async def release(self, attempt_ids: Iterable[str], retry_at: float | None = None, *, sent: bool = False) -> int:
        """Give back claims that were never placed: a dialler stopping before sending, or (`sent`) a make-call
        Vobiz refused outright (429, 401, 402). The attempt is forgotten and the number is pending again."""
        states = ("claimed", "placing") if sent else ("claimed",)
        released = 0
        async with self.db.engine.begin() as conn:
            for attempt_id in attempt_ids:
                gone = await conn.execute(
                    delete(outbound_calls).where(
                        outbound_calls.c.attempt_id == attempt_id, outbound_calls.c.state.in_(states)
                    )
                )
                if not gone.rowcount:
                    continue
                values: dict[str, Any] = {
                    "state": "pending",
                    "attempts": campaign_numbers.c.attempts - 1,
                    "lease_owner": None,
                    "lease_until": None,
                    "updated_at": time.time(),
                }
                if retry_at is not None:
                    values["next_attempt_at"] = retry_at
                await conn.execute(
                    update(campaign_numbers)
                    .where(campaign_numbers.c.attempt_id == attempt_id, campaign_numbers.c.state == "dialing")
                    .values(**values)
                )
                released += 1
        return released

    async def note(
        self,
        attempt_id: str | None,
        call_id: str,
        *,
        state: str | None = None,
        answered_by: str | None = None,
    ) -> None:
        """A non-final callback (ringing, answered, a machine-detection result); never moves an ended attempt."""
        values: dict[str, Any] = {"call_id": func.coalesce(outbound_calls.c.call_id, call_id)}
        if answered_by is not None:
            values["answered_by"] = answered_by
        if state is not None:
            values["state"] = case_state(outbound_calls.c.state, "ended", None, otherwise=state)
        async with self.db.engine.begin() as conn:
            await conn.execute(update(outbound_calls).where(_attempt_match(attempt_id, call_id)).values(**values))

    async def settle(
        self,
        attempt_id: str | None,
        call_id: str,
        result: str,
        *,
        cause: str = "",
        duration_s: float | None = None,
        error: str | None = None,
        retry: bool = True,
        now: float | None = None,
    ) -> Settled | None:
        """A final result for an attempt (hangup callback, a refused make-call, a lost lease); idempotent: the
        first one counts, a retried callback finds the attempt ended and changes nothing."""
        return await self._again_if_locked(
            lambda: self._settle_once(attempt_id, call_id, result, cause, duration_s, error, retry, now)
        )

    async def _again_if_locked(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        """SQLite has one writer: past its busy timeout (a long save elsewhere, a starved host) a write fails
        with "database is locked". The transaction was rolled back whole, so it is simply tried again."""
        for attempt in range(_LOCKED_RETRIES):
            try:
                return await operation()
            except OperationalError as exc:
                if self._pg or "locked" not in str(exc) or attempt == _LOCKED_RETRIES - 1:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    async def _settle_once(
        self,
        attempt_id: str | None,
        call_id: str,
        result: str,
        cause: str,
        duration_s: float | None,
        error: str | None,
        retry: bool,
        now: float | None,
    ) -> Settled | None:
        now = time.time() if now is None else now
        async with self.db.engine.begin() as conn:
            row = (
                await conn.execute(select(outbound_calls).where(_attempt_match(attempt_id, call_id)).limit(1))
            ).first()
            if row is None or row.state == "ended":
                return None
            if result == "person" and row.answered_by == "machine":
                result = "machine"
            ended = await conn.execute(
                update(outbound_calls)
                .where(outbound_calls.c.attempt_id == row.attempt_id, outbound_calls.c.state != "ended")
                .values(
                    state="ended",
                    result=result,
                    hangup_cause=cause[:64] or None,
                    duration_s=duration_s,
                    error=error,
                    ended_at=now,
                    call_id=func.coalesce(outbound_calls.c.call_id, call_id or None),
                )
            )
            if not ended.rowcount:
                return None
            if row.number_id is None:
                return Settled(row.attempt_id, result, None, None, True)
            return await self._settle_number(conn, row, result, cause, duration_s, call_id, now, retry)

    async def _settle_number(
        self,
        conn: AsyncConnection,
        attempt: Any,
        result: str,
        cause: str,
        duration_s: float | None,
        call_id: str,
        now: float,
        retry: bool,
    ) -> Settled:
        joined = (
            await conn.execute(
                select(campaign_numbers.c.attempts, campaigns.c.max_attempts, campaigns.c.retry_on)
                .add_columns(campaigns.c.retry_delay_s, campaigns.c.state)
                .select_from(campaign_numbers.join(campaigns, campaigns.c.id == campaign_numbers.c.campaign_id))
                .where(campaign_numbers.c.id == attempt.number_id)
            )
        ).first()
        common: dict[str, Any] = {
            "last_result": result,
            "duration_s": duration_s,
            "hangup_cause": cause[:64] or None,
            "lease_owner": None,
            "lease_until": None,
            "updated_at": now,
        }
        if call_id:
            common["call_id"] = call_id
        retry_at = None
        retryable = retry and joined is not None and result in (joined.retry_on or [])
        if joined is not None and retryable and joined.attempts < joined.max_attempts:
            retry_at = now + retry_delay(float(joined.retry_delay_s), int(joined.attempts))
            values = common | {"state": "pending", "next_attempt_at": retry_at}
        else:
            values = common | {"state": "done", "outcome": result}
        changed = await conn.execute(
            update(campaign_numbers)
            .where(
                campaign_numbers.c.id == attempt.number_id,
                campaign_numbers.c.attempt_id == attempt.attempt_id,
                campaign_numbers.c.state == "dialing",
            )
            .values(**values)
        )
        final = bool(changed.rowcount) and retry_at is None
        return Settled(attempt.attempt_id, result, attempt.campaign_id, retry_at if changed.rowcount else None, final)

    # --- leases -------------------------------------------------------------------------------------------

    async def reconcile(self, now: float | None = None) -> tuple[int, int]:
        """Rows whose lease ran out: never-sent claims go back to pending, the rest close as `failed`
        (no_callback). Returns (released, closed)."""
        now = time.time() if now is None else now
        async with self.db.engine.connect() as conn:
            expired = (
                await conn.execute(
                    select(campaign_numbers.c.attempt_id, outbound_calls.c.state, outbound_calls.c.call_id)
                    .select_from(
                        campaign_numbers.join(
                            outbound_calls, outbound_calls.c.attempt_id == campaign_numbers.c.attempt_id
                        )
                    )
                    .where(campaign_numbers.c.state == "dialing", campaign_numbers.c.lease_until < now)
                    .limit(500)
                )
            ).all()
        never_sent = [r.attempt_id for r in expired if r.state == "claimed"]
        released = await self.release(never_sent) if never_sent else 0
        closed = 0
        for row in expired:
            if row.state != "claimed":
                # Vobiz may have placed it: closed for good, a retry could ring the callee a second time.
                settled = await self.settle(
                    row.attempt_id, row.call_id or "", "failed", cause="no_callback", retry=False, now=now
                )
                closed += settled is not None
        return released, closed

    async def complete_finished(self, campaign_id: str, now: float | None = None) -> bool:
        """Mark a running campaign completed once no number is pending or dialing."""
        now = time.time() if now is None else now
        open_rows = (
            select(campaign_numbers.c.id)
            .where(campaign_numbers.c.campaign_id == campaign_id, campaign_numbers.c.state != "done")
            .exists()
        )
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(campaigns)
                .where(campaigns.c.id == campaign_id, campaigns.c.state == "running", ~open_rows)
                .values(state="completed", updated_at=now)
            )
        return bool(result.rowcount)


def retry_delay(base_s: float, attempts: int) -> float:
    """Exponential back-off: the base after the first attempt, doubled after each further one (capped at a day)."""
    return min(base_s * math.pow(2, max(attempts - 1, 0)), 86400.0)


def _attempt_match(attempt_id: str | None, call_id: str) -> Any:
    if attempt_id:
        return outbound_calls.c.attempt_id == attempt_id
    return and_(outbound_calls.c.call_id == call_id, outbound_calls.c.call_id.is_not(None))


def case_state(column: Any, when: str, then: str | None, *, otherwise: str | None = None) -> Any:
    """CASE column WHEN `when` THEN `then` ELSE `otherwise` (None keeps the column's value)."""
    return case(
        (column == when, column if then is None else literal(then)),
        else_=column if otherwise is None else literal(otherwise),
    )
