"""Campaign diallers as real processes: a SIGTERM mid-campaign, then a restart, against the simulated Vobiz on
loopback HTTP (the processes reach it through `VOBIZ_API_URL`, as they would reach api.vobiz.ai)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import httpx

from agent.campaigns.store import CampaignStore
from agent.engine import RealtimeSimConfig
from agent.testkit import procs
from agent.testkit.outbound import Callee, OutboundSim
from tests.harness import ROOT, running_stack

TOKEN = "vobiz-token-for-the-campaign-process-tests"
AUTH_ID = "MA_PROCESS_TEST"
FROM = "+918000000001"
NUMBERS = 60


def number(i: int) -> str:
    return f"+9196{i:08d}"


async def wait_exit(child: procs.Child, timeout: float) -> int:  # noqa: ASYNC109
    try:
        return await asyncio.to_thread(child.popen.wait, timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{child.name} still running after {timeout:g} s:\n{child.log_tail()}") from None


async def test_campaign_run_survives_a_sigterm_and_a_restart_without_a_duplicate_dial(tmp_path: Path) -> None:
    """`voice-agent campaign run` dials against Vobiz, the service answers the calls and settles them from the
    callbacks; SIGTERM stops the dialler cleanly mid-campaign, the same command carries on, nobody is called twice."""
    started = time.monotonic()
    database_url = f"sqlite+aiosqlite:///{tmp_path}/campaigns.db"
    sim = OutboundSim(Callee("person", ring_ms=20, talk_ms=700), auth_token=TOKEN)
    numbers_csv = tmp_path / "spring.csv"
    numbers_csv.write_text("number,name\n" + "".join(f"{number(i)},N{i}\n" for i in range(NUMBERS)))
    async with (
        sim.serve() as api_url,
        running_stack(
            RealtimeSimConfig(reply_ms=300, speed=0),
            database_url=database_url,
            vobiz_auth_id=AUTH_ID,
            vobiz_auth_token=TOKEN,  # webhooks are signed and checked
            vobiz_api_url=api_url,
            campaign_dialler=False,  # the service only answers; the command line dials
            record_calls=False,
        ) as stack,
    ):
        env = procs.clean_env(
            {
                "DATABASE_URL": database_url,
                "VOBIZ_AUTH_ID": AUTH_ID,
                "VOBIZ_AUTH_TOKEN": TOKEN,
                "VOBIZ_API_URL": api_url,
                "PUBLIC_URL": stack.base_url,
                "AGENT_OUTBOUND_FROM_NUMBER": FROM,
                "AGENT_PROMPTS_DIR": str(ROOT / "prompts"),
                "AGENT_CAMPAIGN_POLL_S": "0.05",
            }
        )
        args = ["-m", "agent", "campaign", "run", str(numbers_csv), "--concurrency", "6", "--window", "00:00-00:00"]
        first = procs.start("campaign-run-1", args, env, tmp_path / "run-1.log")
        try:
            await sim.wait_for(lambda: len(sim.dials) >= 15, timeout=40, what="15 dials")
            first.popen.send_signal(signal.SIGTERM)
            assert await wait_exit(first, 30) == 0, first.log_tail()
        finally:
            procs.stop(first)
        log = first.log_path.read_text()
        assert "campaign 'spring'" in log and "run again to carry on" in log, log
        dialled = len(sim.dials)
        assert dialled < NUMBERS
        # The calls it had placed go on and are settled by their callbacks; the stopped process dials no more.
        await sim.wait_for(lambda: sim.idle, timeout=20, what="placed calls to end")
        assert len(sim.dials) == dialled
        store = CampaignStore(stack.state.store.db)
        progress = await store.progress("spring")
        assert progress.states == {"done": dialled, "pending": NUMBERS - dialled}, progress.states
        assert progress.outcomes == {"person": dialled}

        second = procs.start("campaign-run-2", args, env, tmp_path / "run-2.log")
        try:
            assert await wait_exit(second, 60) == 0, second.log_tail()
        finally:
            procs.stop(second)
        log = second.log_path.read_text()
        assert "resuming campaign 'spring'" in log and "campaign completed" in log, log
        await sim.wait_for(lambda: sim.idle, timeout=20, what="the last calls to end")

        assert sorted(sim.per_number) == [number(i) for i in range(NUMBERS)]
        assert set(sim.per_number.values()) == {1}  # every number dialled exactly once
        rows = await store.numbers("spring")
        assert [(r["state"], r["outcome"], r["attempts"]) for r in rows] == [("done", "person", 1)] * NUMBERS
        attempts = await store.attempts(campaign_id=rows[0]["campaign_id"])
        assert len(attempts) == NUMBERS and {a["result"] for a in attempts} == {"person"}
        assert not sim.errors and sim.refused == 0
        # Every hangup callback was signed, checked and accepted.
        assert all(status == 200 for d in sim.dials for _, _, status in d.webhooks)
        async with httpx.AsyncClient(base_url=stack.base_url) as http:
            assert (await http.get("/campaigns")).status_code in (401, 404)  # the API is closed without a token
    assert time.monotonic() - started < 60
