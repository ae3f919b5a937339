"""Retention: what is older than `AGENT_RECORDING_RETENTION_DAYS` goes, from disk and from the database.

The sweep runs whether or not calls are being recorded (recordings made before recording was switched off
expire too, and call records always do). The two halves are independent: a database that is down does not
stop old recordings from being deleted, and the next hourly pass catches up on the rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from agent.storage.call_state import CallStates
from agent.storage.calls import CallStore
from agent.storage.recordings import run_periodically, sweep_recordings

log = logging.getLogger("agent.storage")
# What replicas share about a call is needed while it runs and for its late webhooks, never for days: the numbers
# and variables in it go sooner than the call records.
CALL_STATE_KEEP_S = 2 * 86400.0


@dataclass(frozen=True)
class SweepResult:
    recordings: int
    calls: int | None  # None: the database could not be swept this time


async def sweep_expired(
    store: CallStore,
    recordings_dir: Path,
    retention_days: float,
    *,
    now: float | None = None,
    states: CallStates | None = None,
) -> SweepResult:
    """Delete recordings (in a worker thread) and call records past the retention period, and the state replicas
    shared about calls after two days."""
    now = time.time() if now is None else now
    if states is not None:
        try:
            await states.expire(now - CALL_STATE_KEEP_S)
        except Exception as exc:
            log.warning("retention: could not delete old shared call state (%s)", type(exc).__name__)
    recordings = await asyncio.to_thread(sweep_recordings, recordings_dir, retention_days, now=now)
    cutoff = dt.datetime.fromtimestamp(now - retention_days * 86400, dt.UTC)
    calls: int | None = None
    try:
        calls = await store.delete_calls_before(cutoff)
    except Exception as exc:
        log.warning("retention: could not delete old call records (%s); next pass retries", type(exc).__name__)
    log.info(
        "retention: deleted %s call record(s) and %d recording(s) older than %g days",
        "no" if calls is None else calls,
        recordings,
        retention_days,
    )
    return SweepResult(recordings, calls)


def start_retention_sweeper(
    store: CallStore,
    recordings_dir: Path,
    retention_days: float,
    interval_s: float = 3600.0,
    states: CallStates | None = None,
) -> asyncio.Task[None]:
    """The retention sweeper for the lifespan: a pass at start-up, then hourly, until cancelled."""
    return run_periodically(
        interval_s,
        lambda: sweep_expired(store, recordings_dir, retention_days, states=states),
        name="retention-sweeper",
    )
