"""Seen webhook signature nonces, in the database so every replica refuses a replay another one accepted.

Vobiz signs only the URL and a random nonce, with no timestamp (protocol doc §6), so a captured signed request
verifies forever; remembering its nonce is the only way to refuse it again. Each nonce is claimed atomically
(insert-if-absent, on SQLite and PostgreSQL alike) when a signed webhook arrives and marked answered once the
agent replied 2xx.

Retries: Vobiz retries a webhook that did not get a 200 within 3 s (§5.3), and it is not documented whether a
retry carries a fresh signature or the same nonce. So a nonce that was claimed but never answered 2xx is
accepted again for a short retry window (a crash, a timeout or a 5xx must not make Vobiz's own retry fail);
one that was answered, or that is older than the window, is a replay.

Nonces are kept for a retention period (default 30 days) and then deleted; a request captured before that can
be replayed only after it, which the retention should make longer than any call's interest.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Collection

from sqlalchemy import Boolean, Column, Float, String, Table, delete, select, update

from agent.storage.aio import AsyncConnection
from agent.storage.database import Database
from agent.storage.inserts import dialect_insert
from agent.storage.tables import metadata

NONCE_LEN = 128

# On the schema's metadata so Alembic's autogenerate knows the table (revision 0002 creates it).
webhook_nonces = Table(
    "webhook_nonces",
    metadata,
    Column("nonce", String(NONCE_LEN), primary_key=True),
    Column("seen_at", Float, nullable=False, index=True),
    Column("answered", Boolean, nullable=False, default=False),
)


class NonceVerdict(enum.Enum):
    """What a claim found: never seen, a retry of a request not yet answered 2xx, or a replay."""

    FRESH = "fresh"
    RETRY = "retry"
    REPLAY = "replay"


class NonceStore:
    """Claims and expires webhook nonces; `clock` is wall time (seconds) so replicas agree on ages."""

    def __init__(
        self,
        db: Database,
        *,
        retention_s: float = 30 * 86400.0,
        retry_window_s: float = 600.0,
        sweep_every_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.retention_s = retention_s
        self.retry_window_s = retry_window_s
        self.sweep_every_s = sweep_every_s
        self.clock = clock
        self._next_sweep = 0.0

    async def claim(self, nonces: Collection[str]) -> NonceVerdict:
        """Record `nonces` (every nonce header of one request) and say whether the request was seen before.

        All of a request's nonces are claimed, not only the one whose signature matched: otherwise a replay
        could drop the V3 headers and pass on the V2 ones. The worst verdict of them wins.
        """
        wanted = sorted({n for n in nonces if n})
        if any(len(n) > NONCE_LEN for n in wanted):
            return NonceVerdict.REPLAY  # never a Vobiz nonce (20 digits); refuse rather than truncate
        now = self.clock()
        verdict = NonceVerdict.FRESH
        async with self.db.engine.begin() as conn:
            for nonce in wanted:
                if await self._insert_if_absent(conn, nonce, now):
                    continue
                row = (
                    await conn.execute(
                        select(webhook_nonces.c.seen_at, webhook_nonces.c.answered).where(
                            webhook_nonces.c.nonce == nonce
                        )
                    )
                ).one_or_none()
                if row is None:  # swept between the insert and the select: it was ancient, treat it as seen
                    return NonceVerdict.REPLAY
                if row.answered or now - row.seen_at > self.retry_window_s:
                    verdict = NonceVerdict.REPLAY
                elif verdict is NonceVerdict.FRESH:
                    verdict = NonceVerdict.RETRY
        if now >= self._next_sweep:
            self._next_sweep = now + self.sweep_every_s
            await self.expire(now)
        return verdict

    async def answered(self, nonces: Collection[str]) -> None:
        """The request with these nonces got a 2xx: from now on the same nonces are a replay."""
        wanted = sorted({n for n in nonces if n and len(n) <= NONCE_LEN})
        if not wanted:
            return
        async with self.db.engine.begin() as conn:
            await conn.execute(update(webhook_nonces).where(webhook_nonces.c.nonce.in_(wanted)).values(answered=True))

    async def expire(self, now: float | None = None) -> int:
        """Delete nonces older than the retention; returns how many went."""
        cutoff = (self.clock() if now is None else now) - self.retention_s
        async with self.db.engine.begin() as conn:
            result = await conn.execute(delete(webhook_nonces).where(webhook_nonces.c.seen_at < cutoff))
        return int(result.rowcount or 0)

    async def _insert_if_absent(self, conn: AsyncConnection, nonce: str, now: float) -> bool:
        """True when this call inserted the nonce; atomic on both databases (ON CONFLICT DO NOTHING)."""
        values = {"nonce": nonce, "seen_at": now, "answered": False}
        statement = dialect_insert(self.db.dialect, webhook_nonces).values(values).on_conflict_do_nothing()
        result = await conn.execute(statement.returning(webhook_nonces.c.nonce))
        return result.first() is not None
