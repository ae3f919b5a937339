"""Attempt results the database could not take: kept on this replica's disk and replayed until it does.

A hangup callback carries an attempt's only result. When the database is down, the callback handler writes the
result here (one small JSON file, written atomically) and still answers Vobiz 200, then a background task on the
same replica settles it once the database is back. Settling is idempotent, so a result both spooled and settled
by a retried callback counts once. The call lease (`AGENT_CAMPAIGN_CALL_LEASE_S`, 2 h by default) is how long an
outage may last before another replica's reconciliation closes the attempt as `no_callback`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from agent.campaigns.store import CampaignStore

log = logging.getLogger("agent.campaigns")


class PendingResults:
    def __init__(self, spool_dir: Path) -> None:
        self.directory = spool_dir / "outbound-results"

    def put(self, attempt_id: str | None, call_id: str, result: str, cause: str, duration_s: float | None) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        item: dict[str, Any] = {"attempt_id": attempt_id, "call_id": call_id, "result": result, "cause": cause}
        item |= {"duration_s": duration_s, "at": time.time()}
        safe = "".join(ch for ch in (attempt_id or call_id) if ch.isalnum() or ch in "-_")[:80]
        path = self.directory / f"{time.time_ns()}-{safe}.json"
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(item, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def waiting(self) -> list[Path]:
        return sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []

    async def replay(self, store: CampaignStore) -> int:
        """Settle what waits here, oldest first; stops at the first database error (tried again later)."""
        settled = 0
        for path in self.waiting():
            try:
                item: dict[str, Any] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                log.error("unreadable spooled attempt result %s: %r", path, exc)
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".bad"))
                continue
            await store.settle(
                item["attempt_id"],
                item["call_id"],
                item["result"],
                cause=item["cause"],
                duration_s=item["duration_s"],
                now=float(item["at"]),
            )
            path.unlink(missing_ok=True)
            settled += 1
        return settled
