"""Reading campaign state: campaigns, their progress and numbers, attempts, the do-not-call list.

The base of `CampaignStore`; every read goes to the database, so any replica answers the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from agent.campaigns.spec import CampaignError, Progress
from agent.campaigns.tables import campaign_numbers, campaigns, do_not_call, outbound_calls
from agent.storage.aio import AsyncConnection
from agent.storage.database import Database


class CampaignReads:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def find(self, ref: str) -> dict[str, Any]:
        """A campaign by id or name."""
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(select(campaigns).where((campaigns.c.id == ref) | (campaigns.c.name == ref)))
            ).first()
        if row is None:
            raise CampaignError(f"no campaign {ref!r}")
        return dict(row._mapping)

    async def all_campaigns(self) -> list[dict[str, Any]]:
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(select(campaigns).order_by(campaigns.c.created_at.desc()))).all()
        return [dict(r._mapping) for r in rows]

    async def running(self) -> list[str]:
        async with self.db.engine.connect() as conn:
            return list((await conn.scalars(select(campaigns.c.id).where(campaigns.c.state == "running"))).all())

    async def dnc_list(self) -> list[dict[str, Any]]:
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(select(do_not_call).order_by(do_not_call.c.number))).all()
        return [dict(r._mapping) for r in rows]

    @staticmethod
    async def _dnc_among(conn: AsyncConnection, numbers: Sequence[str]) -> set[str]:
        if not numbers:
            return set()
        found = await conn.scalars(select(do_not_call.c.number).where(do_not_call.c.number.in_(list(numbers))))
        return set(found.all())

    # --- results ------------------------------------------------------------------------------------------

    async def progress(self, ref: str) -> Progress:
        campaign = await self.find(ref)
        async with self.db.engine.connect() as conn:
            by_state = (
                await conn.execute(
                    select(campaign_numbers.c.state, func.count())
                    .where(campaign_numbers.c.campaign_id == campaign["id"])
                    .group_by(campaign_numbers.c.state)
                )
            ).all()
            by_outcome = (
                await conn.execute(
                    select(campaign_numbers.c.outcome, func.count())
                    .where(campaign_numbers.c.campaign_id == campaign["id"], campaign_numbers.c.outcome.is_not(None))
                    .group_by(campaign_numbers.c.outcome)
                )
            ).all()
            attempts = await conn.scalar(
                select(func.count()).select_from(outbound_calls).where(outbound_calls.c.campaign_id == campaign["id"])
            )
        return Progress(
            campaign,
            {str(s): int(n) for s, n in by_state},
            {str(o): int(n) for o, n in by_outcome},
            int(attempts or 0),
        )

    async def numbers(self, ref: str, *, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        campaign = await self.find(ref)
        query = (
            select(campaign_numbers)
            .where(campaign_numbers.c.campaign_id == campaign["id"])
            .order_by(campaign_numbers.c.row_no)
            .offset(offset)
        )
        if limit is not None:
            query = query.limit(limit)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [dict(r._mapping) for r in rows]

    async def attempts(self, *, campaign_id: str | None = None, number_id: int | None = None) -> list[dict[str, Any]]:
        query = select(outbound_calls).order_by(outbound_calls.c.created_at)
        if campaign_id is not None:
            query = query.where(outbound_calls.c.campaign_id == campaign_id)
        if number_id is not None:
            query = query.where(outbound_calls.c.number_id == number_id)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [dict(r._mapping) for r in rows]

    async def attempt(self, attempt_id: str) -> dict[str, Any] | None:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(outbound_calls).where(outbound_calls.c.attempt_id == attempt_id))).first()
        return dict(row._mapping) if row is not None else None
