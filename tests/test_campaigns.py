"""Outbound calls and campaigns against the simulated Vobiz (agent.simulation.outbound)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.campaigns.store import CampaignSpec, CampaignStore, NumberRow, parse_csv, retry_delay
from agent.campaigns.windows import next_opening
from agent.simulation.outbound import Callee, OutboundSim
from agent.simulation.realtime_server import RealtimeSimConfig
from agent.storage import Database
from tests.harness import Stack, running_stack

OPERATOR = "operator-token-for-the-campaign-tests-0123456789"
AUTH = {"Authorization": f"Bearer {OPERATOR}"}
FROM = "+918000000001"
FAST = RealtimeSimConfig(reply_ms=300, speed=0)


@contextlib.asynccontextmanager
async def outbound_stack(sim: OutboundSim, **overrides: Any) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    values: dict[str, Any] = {
        "operator_token": OPERATOR,
        "outbound_from_number": FROM,
        "campaign_poll_s": 0.05,
        "record_calls": False,
    }
    async with running_stack(FAST, vobiz=sim.client(), **(values | overrides)) as stack:
        async with httpx.AsyncClient(base_url=stack.base_url, headers=AUTH, timeout=10) as api:
            try:
                yield stack, api
            finally:
                await sim.aclose()


def campaign_store(stack: Stack) -> CampaignStore:
    return CampaignStore(stack.state.store.db)


async def wait_settled(stack: Stack, attempt_id: str, timeout: float = 10.0) -> dict[str, Any]:
    store = campaign_store(stack)
    deadline = time.monotonic() + timeout
    while True:
        attempt = await store.attempt(attempt_id)
        if attempt is not None and attempt["state"] == "ended":
            return attempt
        assert time.monotonic() < deadline, f"attempt {attempt_id} not settled: {attempt}"
        await asyncio.sleep(0.02)


async def test_one_call_rings_then_talks_and_is_recorded() -> None:
    sim = OutboundSim(Callee("person", ring_ms=200, talk_ms=800))
    async with outbound_stack(sim) as (stack, api):
        refused = await api.post("/calls", json={"to": "+919812345678"}, headers={"Authorization": "Bearer nope"})
        assert refused.status_code == 401
        reply = await api.post("/calls", json={"to": "+91 98123 45678", "variables": {"name": "Asha"}})
        assert reply.status_code == 201, reply.text
        attempt_id, call_id = reply.json()["attempt_id"], reply.json()["call_id"]
        dial = sim.by_uuid[call_id]
        assert dial.to == "+919812345678" and dial.from_ == FROM
        assert "var_name=Asha" in str(dial.body["answer_url"])
        attempt = await wait_settled(stack, attempt_id)
        assert attempt["result"] == "person" and attempt["call_id"] == call_id
        # The Ring came first and opened no model session; the one session is the answered call's.
        assert [w[0] for w in dial.webhooks] == ["Ring"]
        assert len(stack.engine.sessions) == 1
