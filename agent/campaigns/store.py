"""Campaign state in the database: import, atomic claims with leases, results from Vobiz callbacks, progress.

The claim protocol (any number of diallers, on any replica):

1. Lock the campaign's row (`UPDATE campaigns … WHERE state='running'`: a row lock on PostgreSQL, the write lock
   on SQLite), so claims for one campaign are serialised and its concurrency and rate limits hold globally.
2. Count its rows in `dialing`; take the free slots (and, with a rate, one slot per `60/R` seconds).
3. Pick due `pending` rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL), drop do-not-call numbers (final outcome
   `dnc`) and push rows outside their calling window to its next opening.
4. Flip each picked row with `UPDATE … SET state='dialing' WHERE id=… AND state='pending'` and insert its attempt
   (`state='claimed'`, unique per number and attempt number), all in the same transaction.

Before sending make-call the dialler marks the attempt `placing` and extends the lease to cover a whole call.
From then on the attempt is settled only by Vobiz's callbacks (hangup_url carries the attempt id), whichever
replica receives them. A lease that runs out is reconciled, never blindly re-dialled: an attempt still `claimed`
was provably never sent and goes back to `pending`; one `placing` or later with no final callback is closed as
`failed` (`no_callback`), since Vobiz may have placed it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import and_, case, delete, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from agent.campaigns.reads import CampaignReads
from agent.campaigns.spec import (
    CAMPAIGN_STATES,
    OUTCOMES,
    RESULTS,
    RETRYABLE,
    CampaignError,
    CampaignSpec,
    Claim,
    NumberRow,
    Progress,
    Settled,
    new_id,
    parse_csv,
)
from agent.campaigns.tables import campaign_numbers, campaigns, do_not_call, outbound_calls
from agent.campaigns.windows import next_opening, normalise_number, parse_window

__all__ = [
    "CAMPAIGN_STATES",
    "OUTCOMES",
    "RESULTS",
    "RETRYABLE",
    "CampaignError",
    "CampaignSpec",
    "CampaignStore",
    "Claim",
    "NumberRow",
    "Progress",
    "Settled",
    "new_id",
    "parse_csv",
    "retry_delay",
]

_T = TypeVar("_T")
_LOCKED_RETRIES = 6
_SCAN_FACTOR = 4  # due rows looked at per slot: some may be outside their window or on the do-not-call list


class CampaignStore(CampaignReads):
    @property
    def _pg(self) -> bool:
        return self.db.dialect == "postgresql"

    # --- campaigns ----------------------------------------------------------------------------------------

    async def create(self, spec: CampaignSpec, rows: Sequence[NumberRow], now: float | None = None) -> str:
        """A new running campaign; the rows are inserted with it, in one transaction."""
        spec.check()
        now = time.time() if now is None else now
        start, end = parse_window(spec.window)
        campaign_id = new_id("c_")
        async with self.db.engine.begin() as conn:
            exists = await conn.scalar(select(campaigns.c.id).where(campaigns.c.name == spec.name))
            if exists is not None:
                raise CampaignError(f"a campaign named {spec.name!r} exists already")
            await conn.execute(
                insert(campaigns).values(
                    id=campaign_id,
                    name=spec.name,
                    prompt=spec.prompt,
                    state="running",
                    from_number=normalise_number(spec.from_number),
                    concurrency=spec.concurrency,
                    rate_per_min=spec.rate_per_min,
                    window_start=start,
                    window_end=end,
                    timezone=spec.timezone,
                    max_attempts=spec.max_attempts,
                    retry_delay_s=spec.retry_delay_s,
                    retry_on=list(spec.retry_on),
                    next_dial_at=0.0,
                    total=len(rows),
                    created_at=now,
                    updated_at=now,
                )
            )
            values = [
                {
                    "campaign_id": campaign_id,
                    "row_no": index,
                    "number": row.number,
                    "variables": row.variables,
                    "timezone": row.timezone,
                    "state": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "updated_at": now,
                }
                for index, row in enumerate(rows, start=1)
            ]
            for chunk in range(0, len(values), 500):
                await conn.execute(insert(campaign_numbers), values[chunk : chunk + 500])
        return campaign_id

    async def set_state(self, ref: str, action: str, now: float | None = None) -> str:
        """pause (from running), resume (from paused or stopped), stop (from running or paused)."""
        campaign = await self.find(ref)
        allowed = {"pause": ("running",), "resume": ("paused", "stopped"), "stop": ("running", "paused")}
        target = {"pause": "paused", "resume": "running", "stop": "stopped"}
        if action not in allowed:
            raise CampaignError(f"unknown action {action!r}")
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(campaigns)
                .where(campaigns.c.id == campaign["id"], campaigns.c.state.in_(allowed[action]))
                .values(state=target[action], updated_at=time.time() if now is None else now)
            )
        if not result.rowcount:
            raise CampaignError(f"cannot {action} campaign {campaign['name']!r}: it is {campaign['state']}")
        return target[action]

    # --- claims -------------------------------------------------------------------------------------------

    async def claim(
        self, campaign_id: str, owner: str, *, limit: int, lease_s: float, now: float | None = None
    ) -> list[Claim]:
        """Claim up to `limit` numbers of a running campaign for dialling (see the module docstring)."""
        return await self._again_if_locked(lambda: self._claim_once(campaign_id, owner, limit, lease_s, now))

    async def _claim_once(
        self, campaign_id: str, owner: str, limit: int, lease_s: float, now: float | None
    ) -> list[Claim]:
        now = time.time() if now is None else now
        async with self.db.engine.begin() as conn:
            locked = (
                await conn.execute(
                    update(campaigns)
                    .where(campaigns.c.id == campaign_id, campaigns.c.state == "running")
                    .values(updated_at=campaigns.c.updated_at)
                    .returning(*campaigns.c)
                )
            ).first()
            if locked is None:
                return []
            campaign = dict(locked._mapping)
            in_flight = await conn.scalar(
                select(func.count())
                .select_from(campaign_numbers)
                .where(campaign_numbers.c.campaign_id == campaign_id, campaign_numbers.c.state == "dialing")
            )
            slots = min(limit, campaign["concurrency"] - int(in_flight or 0))
            rate = float(campaign["rate_per_min"])
            if rate > 0:
                slots = min(slots, 1) if now >= campaign["next_dial_at"] else 0
            if slots <= 0:
                return []
            due = select(
                campaign_numbers.c.id,
                campaign_numbers.c.number,
                campaign_numbers.c.timezone,
                campaign_numbers.c.variables,
            ).where(
                campaign_numbers.c.campaign_id == campaign_id,
                campaign_numbers.c.state == "pending",
                campaign_numbers.c.next_attempt_at <= now,
            )
            due = due.order_by(campaign_numbers.c.next_attempt_at, campaign_numbers.c.row_no)
            due = due.limit(slots * _SCAN_FACTOR)
            if self._pg:
                due = due.with_for_update(skip_locked=True)
            candidates = (await conn.execute(due)).all()
            blocked = await self._dnc_among(conn, [c.number for c in candidates])
            claims: list[Claim] = []
            for cand in candidates:
                if len(claims) >= slots:
                    break
                if cand.number in blocked:
                    await conn.execute(
                        update(campaign_numbers)
                        .where(campaign_numbers.c.id == cand.id, campaign_numbers.c.state == "pending")
                        .values(state="done", outcome="dnc", updated_at=now)
                    )
                    continue
                opens = next_opening(
                    now, campaign["window_start"], campaign["window_end"], cand.timezone or campaign["timezone"]
                )
                if opens > now:
                    await conn.execute(
                        update(campaign_numbers)
                        .where(campaign_numbers.c.id == cand.id, campaign_numbers.c.state == "pending")
                        .values(next_attempt_at=opens, updated_at=now)
                    )
                    continue
                attempt_id = new_id("a_")
                flipped = (
                    await conn.execute(
                        update(campaign_numbers)
                        .where(campaign_numbers.c.id == cand.id, campaign_numbers.c.state == "pending")
                        .values(
                            state="dialing",
                            attempts=campaign_numbers.c.attempts + 1,
                            lease_owner=owner[:64],
                            lease_until=now + lease_s,
                            attempt_id=attempt_id,
                            updated_at=now,
                        )
                        .returning(campaign_numbers.c.attempts)
                    )
                ).first()
                if flipped is None:
                    continue  # another dialler took it between our read and our write
                await conn.execute(
                    insert(outbound_calls).values(
                        attempt_id=attempt_id,
                        campaign_id=campaign_id,
                        number_id=cand.id,
                        attempt_no=flipped.attempts,
                        to_number=cand.number,
                        prompt=campaign["prompt"],
                        state="claimed",
                        created_at=now,
                    )
                )
                claims.append(
                    Claim(
                        attempt_id,
                        campaign_id,
                        cand.id,
                        cand.number,
                        flipped.attempts,
                        campaign["prompt"],
                        campaign["from_number"],
                        dict(cand.variables or {}),
                    )
                )
            if claims and rate > 0:
                next_at = max(float(campaign["next_dial_at"]), now) + 60.0 / rate * len(claims)
                await conn.execute(update(campaigns).where(campaigns.c.id == campaign_id).values(next_dial_at=next_at))
        return claims

    async def single(
        self, number: str, prompt: str, variables: Mapping[str, str], now: float | None = None
    ) -> tuple[str, bool]:
        """An attempt for one call outside any campaign; (attempt id, True) or (“”, False) when on the DNC list."""
        now = time.time() if now is None else now
        number = normalise_number(number)
        async with self.db.engine.begin() as conn:
            if await self._dnc_among(conn, [number]):
                return "", False
            attempt_id = new_id("a_")
            await conn.execute(
                insert(outbound_calls).values(
                    attempt_id=attempt_id,
                    attempt_no=1,
                    to_number=number,
                    prompt=prompt,
                    state="claimed",
                    created_at=now,
                )
            )
        return attempt_id, True

    async def placing(self, attempt_id: str, lease_s: float, now: float | None = None) -> bool:
        """The point of no return: from here the attempt may exist at Vobiz, so it is never re-dialled blindly."""
        now = time.time() if now is None else now
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(outbound_calls)
                .where(outbound_calls.c.attempt_id == attempt_id, outbound_calls.c.state == "claimed")
                .values(state="placing")
            )
            await conn.execute(
                update(campaign_numbers)
                .where(campaign_numbers.c.attempt_id == attempt_id, campaign_numbers.c.state == "dialing")
                .values(lease_until=now + lease_s, updated_at=now)
            )
        return bool(result.rowcount)

    async def placed(self, attempt_id: str, call_id: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        async with self.db.engine.begin() as conn:
            # A fast callback may have moved the attempt on already: only `placing` becomes `placed`.
            await conn.execute(
                update(outbound_calls)
                .where(outbound_calls.c.attempt_id == attempt_id)
                .values(
                    call_id=func.coalesce(outbound_calls.c.call_id, call_id),
                    placed_at=now,
                    state=_case_state(outbound_calls.c.state, "placing", "placed"),
                )
            )
            await conn.execute(
                update(campaign_numbers)
                .where(campaign_numbers.c.attempt_id == attempt_id)
                .values(call_id=call_id, updated_at=now)
            )

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

    # --- callbacks ----------------------------------------------------------------------------------------

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
            values["state"] = _case_state(outbound_calls.c.state, "ended", None, otherwise=state)
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

    # --- do not call --------------------------------------------------------------------------------------

    async def dnc_add(self, numbers: Iterable[str], reason: str = "", now: float | None = None) -> int:
        now = time.time() if now is None else now
        values = [{"number": normalise_number(n), "reason": reason[:128], "added_at": now} for n in numbers]
        if not values:
            return 0
        make = postgresql.insert if self._pg else sqlite.insert
        async with self.db.engine.begin() as conn:
            result = await conn.execute(make(do_not_call).values(values).on_conflict_do_nothing())
        return int(result.rowcount or 0)

    async def dnc_remove(self, number: str) -> bool:
        async with self.db.engine.begin() as conn:
            result = await conn.execute(delete(do_not_call).where(do_not_call.c.number == normalise_number(number)))
        return bool(result.rowcount)


def retry_delay(base_s: float, attempts: int) -> float:
    """Exponential back-off: the base after the first attempt, doubled after each further one (capped at a day)."""
    return min(base_s * math.pow(2, max(attempts - 1, 0)), 86400.0)


def _attempt_match(attempt_id: str | None, call_id: str) -> Any:
    if attempt_id:
        return outbound_calls.c.attempt_id == attempt_id
    return and_(outbound_calls.c.call_id == call_id, outbound_calls.c.call_id.is_not(None))


def _case_state(column: Any, when: str, then: str | None, *, otherwise: str | None = None) -> Any:
    """CASE column WHEN `when` THEN `then` ELSE `otherwise` (None keeps the column's value)."""
    return case(
        (column == when, column if then is None else literal(then)),
        else_=column if otherwise is None else literal(otherwise),
    )
