"""Faults injected into a running agent process, for resilience tests that need the agent in its own process.

Mounted only when AGENT_FAULT_INJECTION is true. A stall is what a long garbage collection, a blocking library
call or a starved CPU does to the one event loop every call shares: nothing runs, sockets fill up.
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Query

log = logging.getLogger("agent.faults")
router = APIRouter(prefix="/debug")


@router.post("/stall")
async def stall(ms: float = Query(gt=0, le=10_000)) -> dict[str, float]:
    """Block the event loop for `ms` milliseconds, on purpose (a synchronous sleep inside the loop)."""
    log.warning("fault injection: blocking the event loop for %.0f ms", ms)
    began = time.monotonic()
    time.sleep(ms / 1000)  # noqa: ASYNC251 - the fault being injected
    return {"began": began, "ended": time.monotonic()}
