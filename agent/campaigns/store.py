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

import time
from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import delete, func, insert, select, update

from agent.campaigns.settle import CampaignSettlement, case_state, retry_delay
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
from agent.storage.inserts import dialect_insert

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

_SCAN_FACTOR = 4  # due rows looked at per slot: some may be outside their window or on the do-not-call list


class CampaignStore(CampaignSettlement):
    """Import, claims with leases, states and the do-not-call list; results are settled by the base."""

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
                    state=case_state(outbound_calls.c.state, "placing", "placed"),
                )
            )
            await conn.execute(
                update(campaign_numbers)
                .where(campaign_numbers.c.attempt_id == attempt_id)
                .values(call_id=call_id, updated_at=now)
            )

    # --- do not call ----------------------------------------------------------------------------------------

    async def dnc_add(self, numbers: Iterable[str], reason: str = "", now: float | None = None) -> int:
        now = time.time() if now is None else now
        values = [{"number": normalise_number(n), "reason": reason[:128], "added_at": now} for n in numbers]
        if not values:
            return 0
        async with self.db.engine.begin() as conn:
            insert = dialect_insert(self.db.dialect, do_not_call)
            result = await conn.execute(insert.values(values).on_conflict_do_nothing())
        return int(result.rowcount or 0)

    async def dnc_remove(self, number: str) -> bool:
        async with self.db.engine.begin() as conn:
            result = await conn.execute(delete(do_not_call).where(do_not_call.c.number == normalise_number(number)))
        return bool(result.rowcount)
