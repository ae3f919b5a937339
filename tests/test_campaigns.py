"""Outbound calls and campaigns against the simulated Vobiz (agent.testkit.outbound)."""

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
from agent.engine import RealtimeSimConfig
from agent.storage import Database
from agent.testkit.outbound import Callee, OutboundSim
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
    async with (
        running_stack(FAST, vobiz=sim.client(), **(values | overrides)) as stack,
        httpx.AsyncClient(base_url=stack.base_url, headers=AUTH, timeout=10) as api,
    ):
        try:
            yield stack, api
        finally:
            await sim.aclose()


def campaign_store(stack: Stack) -> CampaignStore:
    return CampaignStore(stack.state.store.db)


async def wait_settled(stack: Stack, attempt_id: str, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
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
        "---\ngreeting: Hello, this is the clinic.\n"
        + QUIET
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
    kind = i % 10
    answer: Any = "person"
    if kind == 0:
        answer = "busy" if nth == 1 else "person"
    elif kind == 1:
        answer = "no_answer"
    elif kind == 2:
        answer = "failed" if nth == 1 else "busy"
    elif kind == 3:
        answer = "machine"
    return Callee(answer, ring_ms=20, talk_ms=400)


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
        await wait_campaign(stack, campaign_id, timeout=80)
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
    assert time.monotonic() - started < 90  # ~20 s on an idle 2-core machine


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


# --- rules, at the store ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sqlite_store(tmp_path: Path) -> AsyncIterator[CampaignStore]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/campaigns.db")
    await db.migrate()
    try:
        yield CampaignStore(db)
    finally:
        await db.aclose()


def spec(**changes: Any) -> CampaignSpec:
    values: dict[str, Any] = {"name": "c", "prompt": "default", "from_number": FROM, "window": "00:00-00:00"}
    return CampaignSpec(**(values | changes))


def rows(n: int, tz: str | None = None) -> list[NumberRow]:
    return [NumberRow(number(i), {"name": f"n{i}"}, tz) for i in range(n)]


async def test_calling_windows_follow_the_callees_local_time(tmp_path: Path) -> None:
    # 2026-03-02 10:00 UTC: 15:30 in Kolkata (inside 09:00-20:00), 05:00 in New York (before it).
    now = 1772445600.0
    assert next_opening(now, "09:00", "20:00", "Asia/Kolkata") == now
    ny_opens = next_opening(now, "09:00", "20:00", "America/New_York")
    assert ny_opens - now == 4 * 3600
    assert next_opening(now, "22:00", "06:00", "Asia/Kolkata") > now  # a window past midnight, not open now
    async with sqlite_store(tmp_path) as store:
        campaign = await store.create(
            spec(window="09:00-20:00", concurrency=10),
            [NumberRow(number(1), {}, "Asia/Kolkata"), NumberRow(number(2), {}, "America/New_York")],
            now=now,
        )
        claims = await store.claim(campaign, "d1", limit=10, lease_s=60, now=now)
        assert [c.number for c in claims] == [number(1)]
        waiting = {r["number"]: r for r in await store.numbers(campaign)}[number(2)]
        assert waiting["state"] == "pending" and waiting["next_attempt_at"] == ny_opens
        assert await store.claim(campaign, "d1", limit=10, lease_s=60, now=ny_opens - 1) == []
        assert [c.number for c in await store.claim(campaign, "d1", limit=10, lease_s=60, now=ny_opens)] == [number(2)]


async def test_retries_back_off_and_stop_at_the_limit(tmp_path: Path) -> None:
    assert [retry_delay(60, n) for n in (1, 2, 3)] == [60, 120, 240]
    async with sqlite_store(tmp_path) as store:
        campaign = await store.create(spec(max_attempts=3, retry_delay_s=60, retry_on=("busy", "no_answer")), rows(2))
        now = time.time()
        results = []
        for attempt in range(1, 4):
            claims = await store.claim(campaign, "d", limit=5, lease_s=60, now=now)
            assert [c.attempt_no for c in claims] == [attempt, attempt]
            settled = [await store.settle(c.attempt_id, "", "busy", now=now) for c in claims]
            results.append([s.retry_at - now if s and s.retry_at else None for s in settled])
            # A retried callback changes nothing.
            assert await store.settle(claims[0].attempt_id, "", "person", now=now) is None
            assert await store.claim(campaign, "d", limit=5, lease_s=60, now=now + 1) == []  # not due yet
            now += 1000
        assert results == [[60, 60], [120, 120], [None, None]]
        assert {r["outcome"] for r in await store.numbers(campaign)} == {"busy"}
        # A result that is not retried is final at once.
        other = await store.create(spec(name="d", retry_on=("busy",)), rows(1))
        claim = (await store.claim(other, "d", limit=5, lease_s=60))[0]
        once = await store.settle(claim.attempt_id, "", "failed")
        assert once is not None and once.final


async def test_do_not_call_numbers_are_never_dialled(tmp_path: Path) -> None:
    async with sqlite_store(tmp_path) as store:
        assert await store.dnc_add(["+91 98 0000 0001", number(1)], "asked") == 1
        campaign = await store.create(spec(concurrency=10), rows(3))
        claims = await store.claim(campaign, "d", limit=10, lease_s=60)
        assert sorted(c.number for c in claims) == [number(0), number(2)]
        assert {r["number"]: r["outcome"] for r in await store.numbers(campaign)}[number(1)] == "dnc"
        assert await store.single(number(1), "default", {}) == ("", False)
        assert await store.dnc_remove(number(1)) and (await store.single(number(1), "default", {}))[1]


async def test_pause_resume_stop(tmp_path: Path) -> None:
    async with sqlite_store(tmp_path) as store:
        campaign = await store.create(spec(concurrency=1), rows(3))
        first_claim = await store.claim(campaign, "d", limit=5, lease_s=60)
        assert len(first_claim) == 1
        assert await store.claim(campaign, "d", limit=5, lease_s=60) == []  # concurrency 1
        assert await store.set_state("c", "pause") == "paused"
        await store.settle(first_claim[0].attempt_id, "", "person")
        assert await store.claim(campaign, "d", limit=5, lease_s=60) == []  # paused: nothing new
        assert await store.set_state(campaign, "resume") == "running"
        assert len(await store.claim(campaign, "d", limit=5, lease_s=60)) == 1
        assert await store.set_state(campaign, "stop") == "stopped"
        assert await store.claim(campaign, "d", limit=5, lease_s=60) == []
        with pytest.raises(ValueError, match="cannot pause"):
            await store.set_state(campaign, "pause")
        assert not await store.complete_finished(campaign)  # stopped stays stopped, with numbers left


async def test_rate_limit_spaces_dials(tmp_path: Path) -> None:
    async with sqlite_store(tmp_path) as store:
        campaign = await store.create(spec(concurrency=10, rate_per_min=30), rows(5))
        now = time.time()
        assert len(await store.claim(campaign, "d", limit=10, lease_s=60, now=now)) == 1
        assert await store.claim(campaign, "d", limit=10, lease_s=60, now=now + 1.9) == []
        assert len(await store.claim(campaign, "d", limit=10, lease_s=60, now=now + 2.0)) == 1


async def test_expired_leases_release_unsent_claims_and_close_sent_ones_without_redialling(tmp_path: Path) -> None:
    async with sqlite_store(tmp_path) as store:
        campaign = await store.create(spec(concurrency=10), rows(2))
        unsent, sent = await store.claim(campaign, "crashed", limit=10, lease_s=60)
        assert await store.placing(sent.attempt_id, lease_s=600)
        assert await store.reconcile(now=time.time() + 120) == (1, 0)  # the unsent claim is free again
        assert await store.reconcile(now=time.time() + 700) == (0, 1)  # the sent one is closed, not retried
        by_number = {r["number"]: r for r in await store.numbers(campaign)}
        assert by_number[unsent.number]["state"] == "pending" and by_number[unsent.number]["attempts"] == 0
        assert (by_number[sent.number]["outcome"], by_number[sent.number]["hangup_cause"]) == ("failed", "no_callback")


def test_csv_rows_are_checked() -> None:
    parsed = parse_csv("number,name,timezone\n+91 98765 43210,Asha,Asia/Kolkata\n0091 98765 43211,Ravi,\n")
    assert [(r.number, r.variables, r.timezone) for r in parsed] == [
        ("+919876543210", {"name": "Asha"}, "Asia/Kolkata"),
        ("+919876543211", {"name": "Ravi"}, None),
    ]
    with pytest.raises(ValueError, match="already on line 2"):
        parse_csv("number\n+919876543210\n+91 9876543210\n")
    with pytest.raises(ValueError, match="not a phone number"):
        parse_csv("number\nhello\n")
    with pytest.raises(ValueError, match="'number' column"):
        parse_csv("name\nAsha\n")


async def claim_all(store: CampaignStore, campaign: str, owner: str) -> list[int]:
    got: list[int] = []
    while claims := await store.claim(campaign, owner, limit=7, lease_s=60):
        got += [c.number_id for c in claims if c.number_id is not None]
    return got


async def test_claims_are_exactly_once_under_concurrency_on_sqlite(tmp_path: Path) -> None:
    async with sqlite_store(tmp_path) as first:
        campaign = await first.create(spec(concurrency=1000), rows(300))
        others = [CampaignStore(Database(first.db.url)) for _ in range(3)]  # separate engines: like processes
        try:
            stores = [first, *others]
            claimed = await asyncio.gather(*(claim_all(s, campaign, f"d{i}") for i, s in enumerate(stores * 2)))
        finally:
            for store in others:
                await store.db.aclose()
        every = [n for got in claimed for n in got]
        assert len(every) == 300 and len(set(every)) == 300
        assert {r["attempts"] for r in await first.numbers(campaign)} == {1}


# --- stopping and restarting -----------------------------------------------------------------------------------


async def start_campaign(api: httpx.AsyncClient, n: int, concurrency: int, name: str = "restart") -> str:
    csv_text = "number,name\n" + "".join(f"{number(i)},N{i}\n" for i in range(n))
    body = {"name": name, "csv": csv_text, "concurrency": concurrency, "window": "00:00-00:00"}
    created = await api.post("/campaigns", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def test_sigterm_mid_campaign_then_restart_dials_nobody_twice(tmp_path: Path) -> None:
    sim = OutboundSim(Callee("person", ring_ms=20, talk_ms=300))
    async with outbound_stack(sim) as (stack, api):
        campaign = await start_campaign(api, 60, concurrency=8)
        await sim.wait_for(lambda: len(sim.dials) >= 15, timeout=20, what="15 dials")
        # SIGTERM: the service's shutdown stops its dialler (stop claiming, give back unsent claims, let sends
        # finish); calls already placed go on and their callbacks still settle them.
        first = stack.app.state.campaign_dialler
        await first.stop()
        dialled_before = len(sim.dials)
        await sim.wait_for(lambda: sim.idle, timeout=20, what="placed calls to end")
        assert len(sim.dials) == dialled_before  # a stopped dialler places nothing more
        # The restarted service: a new dialler over the same database carries on.
        from agent.campaigns.dialler import Dialler

        state = stack.state
        second = Dialler(campaign_store(stack), sim.client(), state.settings, state.prompts)
        second.start()
        try:
            await wait_campaign(stack, campaign, timeout=30)
        finally:
            await second.stop()
        assert sorted(d.to for d in sim.dials) == sorted(number(i) for i in range(60))  # each exactly once
        assert {r["outcome"] for r in await campaign_store(stack).numbers(campaign)} == {"person"}


async def test_a_crashed_dialler_is_reconciled_not_redialled(tmp_path: Path) -> None:
    sim = OutboundSim(Callee("person", ring_ms=20, talk_ms=300))
    from agent.campaigns.dialler import Dialler

    async with outbound_stack(sim, campaign_dialler=False) as (stack, api):
        campaign = await start_campaign(api, 40, concurrency=10, name="crash")
        # The dialler of a process that will die: its own database connections, as another process has.
        doomed_db = Database(stack.state.store.db.url)
        crashed = Dialler(CampaignStore(doomed_db), sim.client(), stack.settings, stack.state.prompts)
        crashed.start()
        await sim.wait_for(lambda: len(sim.dials) >= 5, timeout=20, what="5 dials")
        # A hard crash: the dialler's tasks die wherever they are, nothing is given back, its connections drop.
        assert crashed._task is not None
        for task in [crashed._task, *crashed._sends]:
            task.cancel()
        await asyncio.gather(crashed._task, *crashed._sends, return_exceptions=True)
        await doomed_db.aclose()
        await sim.wait_for(lambda: sim.idle, timeout=20, what="placed calls to end")
        # Time passes beyond every lease: unsent claims return to the queue, sends with no callback are closed.
        store = campaign_store(stack)
        await store.reconcile(now=time.time() + stack.settings.campaign_call_lease_s + 1)
        state = stack.state
        second = Dialler(store, sim.client(), state.settings, state.prompts)
        second.start()
        try:
            await wait_campaign(stack, campaign, timeout=30)
        finally:
            await second.stop()
        dialled = [d.to for d in sim.dials]
        assert len(dialled) == len(set(dialled))  # nobody twice
        for row in await store.numbers(campaign):
            expected = "person" if row["number"] in dialled else "failed"  # failed: sent, never confirmed
            assert row["outcome"] == expected, row


# --- command line -------------------------------------------------------------------------------------------


def test_campaign_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from agent.campaigns.cli import campaign, dial

    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("AGENT_PROMPTS_DIR", str(Path(__file__).resolve().parent.parent / "prompts"))
    monkeypatch.setenv("AGENT_OUTBOUND_FROM_NUMBER", FROM)
    monkeypatch.delenv("VOBIZ_AUTH_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    numbers_csv = tmp_path / "june.csv"
    numbers_csv.write_text("number,name\n+919800000001,Asha\n+919800000002,Ravi\n")
    runner = CliRunner()
    run = runner.invoke(campaign, ["run", str(numbers_csv), "--rate", "30/min", "--detach"])
    assert run.exit_code == 0, run.output
    assert "campaign 'june'" in run.output and "2 numbers" in run.output
    again = runner.invoke(campaign, ["run", str(numbers_csv), "--detach"])
    assert "resuming campaign 'june'" in again.output
    assert runner.invoke(campaign, ["pause", "june"]).output.strip() == "paused"
    assert "june" in runner.invoke(campaign, ["status"]).output
    assert runner.invoke(campaign, ["dnc", "+919800000009", "--reason", "asked"]).output.strip() == "added 1"
    assert "+919800000009" in runner.invoke(campaign, ["dnc"]).output
    export = runner.invoke(campaign, ["export", "june"])
    assert export.exit_code == 0 and export.output.count("\n") == 3
    no_vobiz = runner.invoke(dial, ["+919800000003"])
    assert no_vobiz.exit_code != 0 and "VOBIZ_AUTH_ID" in no_vobiz.output


# --- console ------------------------------------------------------------------------------------------------


async def test_console_form_starts_a_campaign_from_an_uploaded_csv(tmp_path: Path) -> None:
    sim = OutboundSim(Callee("person", ring_ms=20, talk_ms=300))
    async with outbound_stack(sim, prompts_dir=write_prompts(tmp_path / "prompts"), campaign_dialler=False) as (
        stack,
        api,
    ):
        form = {"name": "june reminders", "prompt": "reminder", "concurrency": "4", "window": "09:00-20:00"}
        form |= {"timezone": "Asia/Kolkata", "max_attempts": "2", "retry_delay_s": "60", "rate_per_min": "30"}
        csv_text = "number,name\n+91 98000 00001,Asha\n+919800000002,Ravi\n"
        listing = await api.get("/console/campaigns")
        assert 'enctype="multipart/form-data"' in listing.text and "reminder" in listing.text
        posted = await api.post("/console/campaigns", data=form, files={"numbers": ("june.csv", csv_text, "text/csv")})
        assert posted.status_code == 303, posted.text
        page = await api.get(posted.headers["location"])
        assert page.status_code == 200 and "june reminders" in page.text and "+919800000001" in page.text
        campaign = await campaign_store(stack).find("june reminders")
        assert (campaign["prompt"], campaign["concurrency"], campaign["max_attempts"]) == ("reminder", 4, 2)
        assert (campaign["rate_per_min"], campaign["state"], campaign["total"]) == (30.0, "running", 2)
        rows = await campaign_store(stack).numbers(campaign["id"])
        assert [r["variables"] for r in rows] == [{"name": "Asha"}, {"name": "Ravi"}]
        # Bad input is refused with the reason on the page, and nothing is stored.
        for changes, upload, reason in (
            ({"name": "bad rows"}, "number,name\n+919800000003,A\nhello,B\n+919800000003,C\n", "line 3"),
            ({"name": "no prompt", "prompt": "nonexistent"}, csv_text, "nonexistent"),
            ({"name": "june reminders"}, csv_text, "exists already"),
            ({"name": "bad window", "window": "25:00-26:00"}, csv_text, "25:00"),
        ):
            refused = await api.post(
                "/console/campaigns", data=form | changes, files={"numbers": ("x.csv", upload, "text/csv")}
            )
            assert refused.status_code == 400 and reason in refused.text, (changes, refused.text[-2000:])
            assert 'role="alert"' in refused.text
        assert [c["name"] for c in await campaign_store(stack).all_campaigns()] == ["june reminders"]
        # Without the operator token the form is not there at all.
        async with httpx.AsyncClient(base_url=stack.base_url) as anonymous:
            denied = await anonymous.post("/console/campaigns", data=form, files={"numbers": ("j.csv", csv_text)})
            assert denied.status_code in (303, 401, 403, 404)
            assert not (await campaign_store(stack).all_campaigns())[1:]


# --- a database outage --------------------------------------------------------------------------------------


async def test_a_result_that_arrives_during_a_database_outage_is_kept_and_settled_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy.exc import OperationalError

    from agent.campaigns.pending import PendingResults

    sim = OutboundSim(Callee("person", ring_ms=20, talk_ms=300))
    real_settle = CampaignStore.settle
    down = True

    async def flaky_settle(self: CampaignStore, *args: Any, **kwargs: Any) -> Any:
        if down:
            raise OperationalError("UPDATE outbound_calls", {}, Exception("connection refused"))
        return await real_settle(self, *args, **kwargs)

    monkeypatch.setattr(CampaignStore, "settle", flaky_settle)
    async with outbound_stack(sim) as (stack, api):
        reply = await api.post("/calls", json={"to": "+919800000077"})
        assert reply.status_code == 201, reply.text
        attempt_id = reply.json()["attempt_id"]
        await sim.wait_for(lambda: sim.idle, timeout=20, what="the call to end")
        # Vobiz got its 200: the result waits on this replica's disk, not in a retry Vobiz may give up on.
        assert all(status == 200 for d in sim.dials for _, _, status in d.webhooks) and not sim.errors
        pending = PendingResults(stack.settings.spool_dir)
        assert len(pending.waiting()) == 1
        store = campaign_store(stack)
        assert (await store.attempt(attempt_id) or {}).get("state") != "ended"
        down = False  # the database is back
        assert await pending.replay(store) == 1 and not pending.waiting()
        attempt = await store.attempt(attempt_id)
        assert attempt is not None and (attempt["state"], attempt["result"]) == ("ended", "person")
        assert await pending.replay(store) == 0
