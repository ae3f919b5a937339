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


# --- prompts for outbound tests -----------------------------------------------------------------------------

QUIET = "idle: {reminder_after_s: null, hangup_after_s: null}\n"


def write_prompts(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "default.md").write_text((Path(__file__).resolve().parent.parent / "prompts" / "default.md").read_text())
    (folder / "outreach.md").write_text(
        "---\ngreeting: Hello, this is the clinic.\n" + QUIET + "answering_machine:\n  action: hangup\n---\n"
        "You call {{name}} for the clinic.\n"
    )
    for name, detection in (("reminder", "sync"), ("reminder-async", "async")):
        (folder / f"{name}.md").write_text(
            f"---\ngreeting: Hello, this is the clinic.\n{QUIET}answering_machine:\n  detection: {detection}\n"
            "  action: voicemail\n  message: Hi {{name}}, your appointment is tomorrow at nine. Goodbye.\n"
            "  silence_ms: 1500\n---\nYou remind {{name}} of an appointment.\n"
        )
    (folder / "screen-async.md").write_text(
        "---\ngreeting: Hello, this is the clinic.\n" + QUIET
        + "answering_machine:\n  detection: async\n  action: hangup\n---\nYou call {{name}}.\n"
    )
    return folder


def number(i: int) -> str:
    return f"+9198{i:08d}"


async def wait_campaign(stack: Stack, campaign_id: str, timeout: float) -> None:  # noqa: ASYNC109
    store = campaign_store(stack)
    deadline = time.monotonic() + timeout
    while (await store.find(campaign_id))["state"] != "completed":
        progress = await store.progress(campaign_id)
        assert time.monotonic() < deadline, f"campaign not completed: {progress.states} {progress.outcomes}"
        await asyncio.sleep(0.05)


# --- the whole campaign -------------------------------------------------------------------------------------


def mixed(to: str, nth: int) -> Callee:
    """Every 10th number busy once then answers; then: never answers; fails, then busy twice; a machine;
    the rest answer at once."""
    i = int(to[-8:])
    fast = {"ring_ms": 20, "talk_ms": 400}
    kind = i % 10
    if kind == 0:
        return Callee("busy" if nth == 1 else "person", **fast)
    if kind == 1:
        return Callee("no_answer", **fast)
    if kind == 2:
        return Callee("failed" if nth == 1 else "busy", **fast)
    if kind == 3:
        return Callee("machine", **fast)
    return Callee("person", **fast)


EXPECTED = {0: ("person", 2), 1: ("no_answer", 3), 2: ("busy", 3), 3: ("machine", 1)}


async def test_campaign_of_200_numbers_at_concurrency_20(tmp_path: Path) -> None:
    started = time.monotonic()
    sim = OutboundSim(mixed)
    dnc = {number(i) for i in range(4, 200, 40)}
    async with outbound_stack(sim, prompts_dir=write_prompts(tmp_path / "prompts")) as (stack, api):
        assert (await api.post("/dnc", json={"numbers": sorted(dnc), "reason": "asked"})).json() == {"added": 5}
        csv_text = "number,name\n" + "".join(f"{number(i)},Caller {i}\n" for i in range(200))
        body = {
            "name": "spring reminders",
            "prompt": "outreach",
            "csv": csv_text,
            "concurrency": 20,
            "window": "00:00-00:00",
            "max_attempts": 3,
            "retry_delay_s": 0.05,
        }
        created = await api.post("/campaigns", json=body)
        assert created.status_code == 201, created.text
        campaign_id = created.json()["id"]
        await wait_campaign(stack, campaign_id, timeout=45)
        # Every number reached exactly one final outcome, by the rules, and was dialled as often as they allow.
        store = campaign_store(stack)
        rows = await store.numbers(campaign_id)
        assert len(rows) == 200 and all(r["state"] == "done" for r in rows)
        for i, row in enumerate(rows):
            outcome, dials = ("dnc", 0) if number(i) in dnc else EXPECTED.get(i % 10, ("person", 1))
            assert (row["outcome"], len(sim.dials_to(number(i)))) == (outcome, dials), (i, row)
            assert row["attempts"] == dials
        assert sim.max_live <= 20 and not sim.errors
        # Machines were hung up on at the answer: no model session for them, one for each person.
        persons = sum(1 for r in rows if r["outcome"] == "person")
        assert len(stack.engine.sessions) == persons
        # The console shows it, and the export has a line per number.
        page = await api.get(f"/console/campaigns/{campaign_id}")
        assert page.status_code == 200 and "spring reminders" in page.text
        assert f'data-outcome="person">{persons}<' in page.text and "completed" in page.text
        listing = await api.get("/console/campaigns")
        assert "spring reminders" in listing.text
        export = await api.get(f"/console/campaigns/{campaign_id}/export.csv")
        assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
        lines = export.text.strip().splitlines()
        assert len(lines) == 201 and lines[0].startswith("row,number,state,outcome")
        assert sum(1 for line in lines if ",person," in line) == persons
        assert "/console/calls/" in lines[6]  # row 5: a person
        progress = (await api.get(f"/campaigns/{campaign_id}")).json()
        assert progress["outcomes"]["dnc"] == 5 and sum(progress["outcomes"].values()) == 200
    assert time.monotonic() - started < 60


# --- machine detection and voicemail -----------------------------------------------------------------------


async def run_one(api: httpx.AsyncClient, stack: Stack, prompt: str) -> dict[str, Any]:
    reply = await api.post("/calls", json={"to": "+919800000042", "prompt": prompt, "variables": {"name": "Asha"}})
    assert reply.status_code == 201, reply.text
    return await wait_settled(stack, reply.json()["attempt_id"], timeout=20)


def first(call: Any, kind: str) -> float:
    return float(call.events(kind)[0].t)


@pytest.mark.parametrize("prompt", ["reminder", "reminder-async"])
async def test_voicemail_is_left_after_the_greeting_and_beep(tmp_path: Path, prompt: str) -> None:
    greeting_ms = 1400.0
    sim = OutboundSim(Callee("machine", ring_ms=20, greeting_ms=greeting_ms, detect_ms=500))
    async with outbound_stack(sim, prompts_dir=write_prompts(tmp_path / "prompts")) as (stack, _api):
        async with httpx.AsyncClient(base_url=stack.base_url, headers=AUTH, timeout=10) as api:
            attempt = await run_one(api, stack, prompt)
        assert attempt["result"] == "machine" and attempt["answered_by"] == "machine"
        dial = sim.dials[0]
        assert dial.call is not None
        call = dial.call
        detection = dial.body.get("machine_detection_url")
        assert (detection is not None) == (prompt == "reminder-async")
        # The message went out once the greeting and its beep had ended, not over them ...
        beep_end = first(call, "start_sent") + (greeting_ms + 400) / 1000
        record = stack.state.registry.records[call.call_uuid]
        kinds = [e.kind for e in record.events]
        assert "voicemail_greeting_end" in kinds and "voicemail_left" in kinds
        greeting_end = next(e for e in record.events if e.kind == "voicemail_greeting_end")
        assert greeting_end.detail["reason"] == "beep"
        played = [e.t for e in call.events("play_audio_received")]
        message_audio = [t for t in played if t >= beep_end]
        assert message_audio, "the voicemail message was never played"
        if prompt == "reminder":  # synchronous: nothing at all was played before the beep ended
            assert all(t >= beep_end for t in played)
        # ... it is the prompt's message, with the callee's variables, and the call hung up once it was heard.
        session = stack.engine.sessions[0]
        asked = [e for e in session.client_events if e.get("type") == "response.create"]
        assert any("Hi Asha, your appointment is tomorrow at nine" in str(e) for e in asked)
        assert [a.verb for a in call.after_stream][-1] == "Hangup"
        assert record.end_reason == "voicemail_left"


@pytest.mark.parametrize("prompt", ["outreach", "screen-async"])
async def test_machine_is_hung_up_on_when_the_prompt_says_so(tmp_path: Path, prompt: str) -> None:
    sim = OutboundSim(Callee("machine", ring_ms=20, greeting_ms=3000, detect_ms=300))
    async with outbound_stack(sim, prompts_dir=write_prompts(tmp_path / "prompts")) as (stack, api):
        attempt = await run_one(api, stack, prompt)
        assert attempt["result"] == "machine"
        if prompt == "outreach":  # synchronous: answered with <Hangup/>, no stream, no model session
            assert sim.dials[0].call is None and not stack.engine.sessions
        else:  # asynchronous: the call had started; the verdict hung it up through the REST API
            assert sim.dials[0].call is not None and sim.dials[0].call.end_reason == "caller_hangup"


async def test_a_person_is_not_taken_for_a_machine(tmp_path: Path) -> None:
    sim = OutboundSim(Callee("person", ring_ms=20, talk_ms=600))
    async with outbound_stack(sim, prompts_dir=write_prompts(tmp_path / "prompts")) as (stack, api):
        attempt = await run_one(api, stack, "reminder")
        assert attempt["result"] == "person" and attempt["answered_by"] == "person"
        assert sim.dials[0].body["machine_detection"] == "true"
