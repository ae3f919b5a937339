"""Campaigns on PostgreSQL: claims stay exactly-once under concurrent diallers, and two replicas behind a
round-robin balancer share one campaign without dialling any number twice."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from agent.campaigns.store import CampaignSpec, CampaignStore, NumberRow
from agent.engine import RealtimeServer, RealtimeSimConfig
from agent.storage import Database
from agent.testkit.local_server import serve_app
from agent.testkit.outbound import Callee, OutboundSim
from agent.web.app import create_app
from tests.harness import replica_settings
from tests.postgres import scratch_database
from tests.test_replicas import RoundRobin

TOKEN = "vobiz-token-for-the-campaign-replica-tests"
OPERATOR = "operator-token-for-the-campaign-replica-tests-0123"


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with scratch_database("agent_campaigns") as url:
        yield url


def number(i: int) -> str:
    return f"+9197{i:08d}"


async def test_claims_are_exactly_once_under_concurrent_diallers(pg_url: str) -> None:
    db = Database(pg_url)
    await db.migrate()
    store = CampaignStore(db)
    others = [CampaignStore(Database(pg_url)) for _ in range(3)]
    try:
        spec = CampaignSpec("stress", "default", "+918000000001", concurrency=1000, window="00:00-00:00")
        campaign = await store.create(spec, [NumberRow(number(i)) for i in range(400)])

        async def claim_all(s: CampaignStore, owner: str) -> list[int]:
            got: list[int] = []
            while claims := await s.claim(campaign, owner, limit=9, lease_s=60):
                got += [c.number_id for c in claims if c.number_id is not None]
            return got

        stores = [store, *others] * 2
        claimed = await asyncio.gather(*(claim_all(s, f"d{i}") for i, s in enumerate(stores)))
        every = [n for got in claimed for n in got]
        assert len(every) == 400 and len(set(every)) == 400
        assert sum(1 for got in claimed if got) > 1  # the diallers really competed
        # Concurrency is global too: with a limit of 5 only five rows are ever in flight, however many claim.
        limited = await store.create(
            CampaignSpec("limited", "default", "+918000000001", concurrency=5, window="00:00-00:00"),
            [NumberRow(number(1000 + i)) for i in range(50)],
        )
        grabs = await asyncio.gather(*(s.claim(limited, "x", limit=5, lease_s=60) for s in stores))
        assert sum(len(g) for g in grabs) == 5
    finally:
        for other in others:
            await other.db.aclose()
        await db.aclose()


async def test_two_replicas_share_a_campaign_without_a_duplicate_dial(pg_url: str, tmp_path: Path) -> None:
    started = time.monotonic()
    sim = OutboundSim(
        lambda to, nth: Callee("busy" if int(to[-2:]) % 7 == 0 and nth == 1 else "person", ring_ms=20, talk_ms=300),
        auth_token=TOKEN,
    )
    balancer = RoundRobin()
    public_url = await balancer.start()
    engine = RealtimeServer(RealtimeSimConfig(reply_ms=300, speed=0))
    await engine.start()
    apps: list[FastAPI] = []

    def make_app(index: int) -> Any:
        def make(base_url: str) -> FastAPI:
            settings = replica_settings(
                engine.http_base_url,
                public_url,
                pg_url,
                tmp_path,
                index,
                TOKEN,
                operator_token=OPERATOR,
                outbound_from_number="+918000000001",
                campaign_poll_s=0.05,
                record_calls=False,
            )
            app = create_app(settings, vobiz=sim.client())
            apps.append(app)
            return app

        return make

    try:
        async with serve_app(make_app(0)) as first, serve_app(make_app(1)) as second:
            balancer.backends = [int(first.rsplit(":", 1)[1]), int(second.rsplit(":", 1)[1])]
            csv_text = "number,name\n" + "".join(f"{number(i)},N{i}\n" for i in range(80))
            body = {
                "name": "shared",
                "csv": csv_text,
                "concurrency": 12,
                "window": "00:00-00:00",
                "retry_delay_s": 0.05,
            }
            headers = {"Authorization": f"Bearer {OPERATOR}"}
            async with httpx.AsyncClient(base_url=public_url, headers=headers, timeout=10) as api:
                created = await api.post("/campaigns", json=body)
                assert created.status_code == 201, created.text
                campaign = created.json()["id"]
                deadline = time.monotonic() + 45
                while (progress := (await api.get(f"/campaigns/{campaign}")).json())["campaign"][
                    "state"
                ] != "completed":
                    assert time.monotonic() < deadline, progress
                    await asyncio.sleep(0.1)
                page = await api.get(f"/console/campaigns/{campaign}")
                assert page.status_code == 200 and "shared" in page.text
            dialled = [d.to for d in sim.dials]
            busy_once = {number(i) for i in range(80) if i % 7 == 0}
            assert sorted(dialled) == sorted([number(i) for i in range(80)] + list(busy_once))
            assert progress["outcomes"] == {"person": 80}
            assert sim.max_live <= 12 and not sim.errors
            diallers = [app.state.campaign_dialler for app in apps]
            assert sum(d.dialled for d in diallers) == len(dialled)
            assert all(d.dialled > 0 for d in diallers), [d.dialled for d in diallers]  # both really dialled
    finally:
        with contextlib.suppress(Exception):
            await sim.aclose()
        await balancer.aclose()
        await engine.stop()
    assert time.monotonic() - started < 60
