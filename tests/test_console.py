"""The operator console over HTTP: who gets in, and that every page shows the real data of real calls.

One agent stack serves the whole module: two calls are placed through the simulated carrier (one with a
barge-in and an answer to the caller, so it has a latency, an interrupted turn and a recording), and older
history is saved straight into the store (hours of calls for the summary, two eval runs, two versions of a
prompt, recordings pointing outside the recordings folder). The helpers here are shared with the browser tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from starlette.routing import NoMatchFound

from agent.config import ConfigError, Settings, load_settings
from agent.console import auth
from agent.console.routes import console_router
from agent.engine import RealtimeSimConfig
from agent.prompts.loader import Prompt, parse_prompt
from agent.records.record import BargeIn, CallRecord, ToolUse, Turn, Usage
from agent.storage import CallStore, recordings
from agent.testkit.carrier import CallerAudio, SimCall, SimCallOptions
from agent.web.app import create_app
from tests.agent_process import agent_process
from tests.harness import ROOT, Stack, running_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "operator-token-for-tests-7f3a9c-5e1d08"  # at least 32 characters, as the config requires
SALES_V1 = """---
description: Sales line <plans & prices>
greeting: "Hi, this is sales."
---
You sell the basic plan. Mention the price once.
"""
SALES_V2 = """---
description: Sales line <plans & prices>
greeting: "Hello from sales!"
---
You sell the basic plan and the premium plan. Mention both prices once.
"""
BROKEN = """---
description: Broken on purpose
speed: 9
---
Hello.
"""
HOSTILE = "<script>alert('owned')</script>"
SALES_NUMBER = "+918000000055"


# --- shared helpers (also used by tests/test_console_browser.py) -------------------------------------------------


def mount_console(app: FastAPI) -> None:
    """Add the console to an app unless `create_app` already does."""
    try:
        app.url_path_for("console_login")
    except NoMatchFound:
        app.include_router(console_router())


def write_prompts(directory: Path) -> Path:
    """A prompt folder with the default prompt, a valid `sales` prompt, a broken one and a number mapping."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "default.md").write_text((ROOT / "prompts" / "default.md").read_text(encoding="utf-8"))
    (directory / "sales.md").write_text(SALES_V2, encoding="utf-8")
    (directory / "broken.md").write_text(BROKEN, encoding="utf-8")
    (directory / "numbers.yaml").write_text(f'"{SALES_NUMBER}": sales\n', encoding="utf-8")
    return directory


def make_record(
    call_id: str,
    started: float,
    *,
    prompt: Prompt | None = None,
    latencies: tuple[float, ...] = (),
    barge_in: bool = False,
    cost: float = 0.0,
    tags: dict[str, str] | None = None,
    end_reason: str = "caller_hangup",
    from_number: str = "+919000000001",
    caller_text: str = "What does the basic plan cost?",
    recording_path: str | None = None,
) -> CallRecord:
    """A finished call: a greeting, then one caller turn and one answer (with its latency) per latency given."""
    record = CallRecord(
        call_id,
        from_number=from_number,
        to_number=SALES_NUMBER if prompt is not None else "+918000000002",
        direction="inbound",
        prompt_name=prompt.name if prompt is not None else "default",
        prompt_hash=prompt.content_hash if prompt is not None else "seeded0000000000",
        stream_id=f"ST-{call_id}",
        started_at=started,
        tags=dict(tags or {}),
        recording_path=recording_path,
    )
    t = started + 0.3
    record.turns.append(Turn("assistant", "Hello! How can I help?", t, t + 1.5, f"{call_id}-a0", audio_ms=1500))
    t += 2.0
    for i, latency in enumerate(latencies):
        record.turns.append(Turn("caller", caller_text, t, t + 1.2, f"{call_id}-c{i}"))
        t += 1.2 + latency / 1000
        cut = barge_in and i == 0
        record.turns.append(
            Turn(
                "assistant",
                "The basic plan is ten dollars" if cut else "The basic plan is ten dollars a month.",
                t,
                t + (0.9 if cut else 2.5),
                f"{call_id}-a{i + 1}",
                interrupted=cut,
                heard_ms=900.0 if cut else None,
                audio_ms=2500.0,
                latency_ms=latency,
            )
        )
        if cut:
            record.barge_ins.append(BargeIn(t + 0.9, f"{call_id}-a{i + 1}", 900.0, 3.2))
        t += 3.0
    record.tools.append(ToolUse("lookup_plan", {"plan": "basic"}, t, t + 0.2, True, '{"price": 10}'))
    record.usage = Usage(input_text=300, input_audio=500, output_text=80, output_audio=700)
    record.cost_usd = cost
    record.event("seeded", note="saved by the console tests")
    record.finish(end_reason)
    record.ended_at = t + 1.0
    return record


@dataclasses.dataclass
class History:
    """What `seed_history` saved, for assertions."""

    sales_v1: Prompt
    sales_v2: Prompt
    in_24h: int
    older: int
    outside_id: str
    missing_id: str
    absolute_id: str
    symlink_id: str
    hostile_id: str


async def seed_history(store: CallStore, recordings_dir: Path, now: float | None = None) -> History:
    """Hours of calls, two eval runs of four calls each, two versions of `sales`, and hostile records."""
    now = time.time() if now is None else now
    v1 = parse_prompt("sales", SALES_V1, "<seed>")
    v2 = parse_prompt("sales", SALES_V2, "<seed>")
    hour = 3600.0
    saved = 0
    for i in range(4):
        a = make_record(
            f"CA-run-a-{i}",
            now - 6 * hour + i * 60,
            prompt=v1,
            latencies=(600.0 + 40 * i, 900.0),
            barge_in=i % 2 == 0,
            cost=0.012,
            tags={"eval_run": "run-a", "scenario": f"s{i}"},
            end_reason="agent_end_call" if i else "caller_hangup",
        )
        b = make_record(
            f"CA-run-b-{i}",
            now - 2 * hour + i * 60,
            prompt=v2,
            latencies=(400.0 + 20 * i, 500.0),
            cost=0.009,
            tags={"eval_run": "run-b", "scenario": f"s{i}"},
            end_reason="agent_end_call",
        )
        await store.save(a, v1)
        await store.save(b, v2)
        saved += 2
    for h in range(1, 19):  # one ordinary call an hour, for the charts and the second page of the list
        await store.save(make_record(f"CA-hour-{h:02d}", now - h * hour - 120, latencies=(700.0 + 10 * h,), cost=0.01))
        saved += 1
    hostile = make_record(
        "CA-hostile", now - 3 * hour, latencies=(650.0,), caller_text=HOSTILE, from_number="+15551234567", cost=0.02
    )
    hostile.tags["note"] = HOSTILE
    await store.save(hostile)
    saved += 1
    # Recordings the console must refuse: outside the folder, missing, absolute elsewhere, a symlink out.
    odd = _refused_recordings(recordings_dir)
    for call_id, path in odd.items():
        await store.save(make_record(call_id, now - 4 * hour, recording_path=path))
        saved += 1
    await store.save(make_record("CA-old", now - 3 * 24 * hour, latencies=(1500.0,), cost=0.05))
    # The eval tool's verdicts: run-a has one conversation failing its assertions, run-b passes throughout.
    for i in range(4):
        await store.add_tags(f"CA-run-a-{i}", {"eval_verdict": "fail" if i == 3 else "pass"})
        await store.add_tags(f"CA-run-b-{i}", {"eval_verdict": "pass"})
    return History(v1, v2, saved, 1, "CA-outside", "CA-missing", "CA-absolute", "CA-symlink", "CA-hostile")


BIG_EXPERIMENT, SMALL_EXPERIMENT = "sales-vs-sales-v3", "greeting-trial"
EXPERIMENT_FRONT = "experiment: {candidate: sales-v3, share: 0.2}\n"


async def seed_experiments(store: CallStore, prompt: Prompt, start: float) -> int:
    """Two experiments: a big one whose candidate is clearly slower and barged in on more often, and one with
    too few calls to say anything yet. Returns how many calls were saved."""
    saved = 0
    for i in range(40):
        for arm, base in (("control", 600.0), ("candidate", 950.0)):
            jitter = (i * 37 % 11) * 10.0  # spread without randomness: the same numbers on every run
            record = make_record(
                f"CA-exp-{arm}-{i}",
                start + i * 30 + (5 if arm == "candidate" else 0),
                prompt=prompt,
                latencies=(base + jitter, base + 50 + jitter),
                barge_in=arm == "candidate" and i % 2 == 0,
                cost=0.01,
                tags={"experiment": BIG_EXPERIMENT, "arm": arm},
                end_reason="agent_end_call" if i % 4 else "caller_hangup",
            )
            await store.save(record, prompt)
            saved += 1
    for i, arm in enumerate(("control", "control", "control", "candidate", "candidate")):
        record = make_record(
            f"CA-trial-{i}",
            start + 2000 + i * 30,
            prompt=prompt,
            latencies=(500.0 + 100 * i,),
            tags={"experiment": SMALL_EXPERIMENT, "arm": arm},
        )
        await store.save(record, prompt)
        saved += 1
    return saved


def _refused_recordings(recordings_dir: Path) -> dict[str, str]:
    recordings_dir.mkdir(parents=True, exist_ok=True)
    outside = recordings_dir.parent / "outside.wav"
    _write_wav(outside)
    link = recordings_dir / "link.wav"
    if not link.is_symlink():
        link.symlink_to(outside)
    return {
        "CA-outside": str(recordings_dir / ".." / "outside.wav"),
        "CA-missing": str(recordings_dir / "2024-01-01" / "gone.wav"),
        "CA-absolute": "/etc/passwd",
        "CA-symlink": str(link),
    }


def _write_wav(path: Path) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x00" * 800)


async def settle(stack: Stack) -> None:
    """Wait until ended calls are in the database and their recordings are on disk."""
    await stack.state.records.flush()
    await asyncio.gather(*list(recordings._background_writes))


async def place_barge_in_call(stack: Stack, from_number: str = "+919000000777") -> SimCall:
    """A call where the caller talks over the greeting and gets an answer: barge-in, interruption, latency."""
    call = await stack.carrier.place_call(
        [CallerAudio.after_bot_audio(700, CallerAudio.tone(300, 1200, 0.4)), CallerAudio.silence(20_000)],
        SimCallOptions(from_=from_number),
    )
    clear = await call.wait_clear(timeout=8)
    # The answer to the caller (1.5 s of audio) plays almost to its end, so its whole transcript is in.
    await call.wait_bot_audio(clear.played_ms_at_clear + 1450, timeout=8)
    return call


async def end_call(stack: Stack, call: SimCall) -> None:
    live = stack.state.registry.live.get(call.call_uuid)
    await call.hangup()
    if live is not None:
        await live.done.wait()


# --- the module's stack ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Console:
    stack: Stack
    client: httpx.AsyncClient  # authenticated with the bearer token
    anon: httpx.AsyncClient
    barge_call: str
    plain_call: str
    history: History


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def console(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Console]:
    prompts = write_prompts(tmp_path_factory.mktemp("prompts"))
    config = RealtimeSimConfig(reply_ms=1500, speed=1.5)
    async with running_stack(config, operator_token=TOKEN, prompts_dir=prompts) as stack:
        mount_console(stack.app)
        barge = await place_barge_in_call(stack)
        plain = await stack.carrier.place_call([CallerAudio.silence(20_000)], SimCallOptions(from_="+919000000888"))
        await plain.wait_bot_audio(500, timeout=5)
        await end_call(stack, barge)
        await end_call(stack, plain)
        await settle(stack)
        history = await seed_history(stack.state.store, stack.settings.recordings_dir)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            httpx.AsyncClient(base_url=stack.base_url, headers=headers) as client,
            httpx.AsyncClient(base_url=stack.base_url) as anon,
        ):
            yield Console(stack, client, anon, barge.call_uuid, plain.call_uuid, history)


# --- who gets in -------------------------------------------------------------------------------------------------


def bare_app(tmp_path: Path, operator_token: str | None) -> FastAPI:
    """An agent app that is never started: enough for requests the console answers before touching the store."""
    settings = Settings(
        openai_api_key="sk-test-not-a-real-key",
        prompts_dir=ROOT / "prompts",
        database_url=f"sqlite+aiosqlite:///{tmp_path}/agent.db",
        recordings_dir=tmp_path / "recordings",
        operator_token=operator_token,
        insecure_webhooks=True,
    )
    app = create_app(settings)
    mount_console(app)
    return app


async def test_console_does_not_exist_without_an_operator_token(tmp_path: Path) -> None:
    transport = httpx.ASGITransport(app=bare_app(tmp_path, None))
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        for path in ("/console", "/console/login", "/console/calls", "/console/live.json", "/console/summary"):
            assert (await client.get(path)).status_code == 404, path
            bearer = await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert bearer.status_code == 404, path
        assert (await client.post("/console/login", data={"token": TOKEN})).status_code == 404
        client.cookies.set(auth.COOKIE_NAME, auth.session_value(TOKEN))
        assert (await client.get("/console")).status_code == 404


async def test_wrong_or_missing_credentials_are_refused(console: Console) -> None:
    anon = console.anon
    page = await anon.get("/console/calls?q=x")
    assert page.status_code == 303
    location = urlsplit(page.headers["location"])
    assert location.path == "/console/login"
    assert parse_qs(location.query)["next"] == ["/console/calls?q=x"]
    assert (await anon.get("/console/live.json")).status_code == 303
    recording = f"/console/calls/{console.barge_call}/recording.wav"
    assert (await anon.get(recording)).status_code == 303
    for header in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", "Bearer", TOKEN):
        refused = await anon.get("/console", headers={"Authorization": header})
        assert refused.status_code == 401, header
        assert refused.headers["www-authenticate"] == "Bearer"
    wrong = await anon.post("/console/login", data={"token": TOKEN + "x", "next": "/console/calls"})
    assert wrong.status_code == 401
    assert "set-cookie" not in wrong.headers
    assert "That token is not right" in wrong.text
    # Forged, tampered and expired session cookies.
    expired = auth.session_value(TOKEN, now=time.time() - 2 * auth.SESSION_TTL_S)
    valid = auth.session_value(TOKEN)
    tampered = valid[:-1] + ("0" if valid[-1] != "0" else "1")
    other_key = auth.session_value("some-other-token")
    for value in (TOKEN, expired, tampered, other_key, "9999999999.", "garbage"):
        async with httpx.AsyncClient(base_url=console.stack.base_url, cookies={auth.COOKIE_NAME: value}) as forged:
            assert (await forged.get("/console")).status_code == 303, value


async def test_guessing_through_the_login_form_is_throttled(tmp_path: Path) -> None:
    transport = httpx.ASGITransport(app=bare_app(tmp_path, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        for attempt in range(10):
            wrong = await client.post("/console/login", data={"token": f"guess-{attempt}"})
            assert wrong.status_code == 401
        # Now even the right token is refused from this address, without saying whether it was right.
        blocked = await client.post("/console/login", data={"token": TOKEN})
        assert blocked.status_code == 429 and "Too many wrong tokens" in blocked.text
        assert "set-cookie" not in blocked.headers
        # The bearer header shares the throttle: guessing cannot just move from the form to the header.
        bearer = await client.get("/console/live.json", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 429


async def test_guessing_through_the_bearer_header_is_throttled(tmp_path: Path) -> None:
    transport = httpx.ASGITransport(app=bare_app(tmp_path, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        for attempt in range(10):
            wrong = await client.get("/console/live.json", headers={"Authorization": f"Bearer guess-{attempt}"})
            assert wrong.status_code == 401
        blocked = await client.get("/console/live.json", headers={"Authorization": f"Bearer {TOKEN}"})
        assert blocked.status_code == 429 and blocked.headers["retry-after"] == "60"
        assert (await client.post("/console/login", data={"token": TOKEN})).status_code == 429


async def test_an_operator_token_shorter_than_32_characters_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(operator_token="x" * 31)
    assert str(info.value) == (
        "invalid setting AGENT_OPERATOR_TOKEN: Value error, must be at least 32 characters "
        "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    )
    assert load_settings(operator_token="x" * 32).operator_token is not None
    assert load_settings(operator_token="").operator_token is not None  # empty: the console stays off


async def test_the_throttle_keys_on_the_client_behind_a_trusted_proxy() -> None:
    """`voice-agent serve` behind a proxy: one guesser must not lock out every operator behind the same proxy,
    and X-Forwarded-For from an address not in AGENT_FORWARDED_ALLOW_IPS is ignored (it could be forged)."""

    async def guess_then_try(base_url: str) -> tuple[int, int]:
        async with httpx.AsyncClient(base_url=base_url) as http:
            for attempt in range(10):
                headers = {"Authorization": f"Bearer guess-{attempt}", "X-Forwarded-For": "203.0.113.7"}
                assert (await http.get("/console/live.json", headers=headers)).status_code == 401
            guesser = {"Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": "203.0.113.7"}
            operator = {"Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": "198.51.100.9"}
            return (
                (await http.get("/console/live.json", headers=guesser)).status_code,
                (await http.get("/console/live.json", headers=operator)).status_code,
            )

    async with agent_process({"AGENT_OPERATOR_TOKEN": TOKEN, "AGENT_FORWARDED_ALLOW_IPS": "127.0.0.1"}) as agent:
        assert await guess_then_try(agent.base_url) == (429, 200)  # the proxy (loopback) is trusted
    async with agent_process({"AGENT_OPERATOR_TOKEN": TOKEN, "AGENT_FORWARDED_ALLOW_IPS": "192.0.2.1"}) as agent:
        assert await guess_then_try(agent.base_url) == (429, 429)  # loopback is not a trusted proxy here


async def test_login_throttle_forgets_old_failures() -> None:
    now = [0.0]
    throttle = auth.LoginThrottle(limit=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        throttle.failed("10.0.0.1")
    assert throttle.blocked("10.0.0.1") and not throttle.blocked("10.0.0.2")
    now[0] = 61.0
    assert not throttle.blocked("10.0.0.1")


async def test_login_sets_an_httponly_strict_cookie_that_is_not_the_token(console: Console) -> None:
    async with httpx.AsyncClient(base_url=console.stack.base_url) as browser:
        form = await browser.get("/console/login?next=/console/prompts")
        assert form.status_code == 200
        assert 'name="token"' in form.text and 'type="password"' in form.text
        login = await browser.post("/console/login", data={"token": TOKEN, "next": "/console/prompts"})
        assert login.status_code == 303
        assert login.headers["location"] == "/console/prompts"
        cookie = login.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "samesite", "path", "max-age"} <= attributes
        assert "samesite=strict" in cookie.lower() and "path=/console" in cookie.lower()
        value = browser.cookies[auth.COOKIE_NAME]
        assert TOKEN not in value and value != TOKEN
        assert auth.valid_session(TOKEN, value)
        page = await browser.get("/console/prompts")
        assert page.status_code == 200 and "Prompts" in page.text
        # Logged in: the login form sends you on; logging out ends the session.
        assert (await browser.get("/console/login")).status_code == 303
        assert (await browser.post("/console/logout")).status_code == 303
        assert (await browser.get("/console/prompts")).status_code == 303
        # Only console paths are accepted as the place to go after logging in.
        for target in ("https://evil.example/", "//evil.example/console", "/metrics", "/console\\@evil"):
            sent = await browser.post("/console/login", data={"token": TOKEN, "next": target})
            assert sent.headers["location"] == "/console", target


async def test_pages_never_show_the_token_and_carry_a_strict_csp(console: Console) -> None:
    for path in ("/console", "/console/calls", f"/console/calls/{console.barge_call}", "/console/prompts"):
        page = await console.client.get(path)
        assert page.status_code == 200, path
        assert TOKEN not in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert page.headers["cache-control"] == "no-store"


# --- pages -------------------------------------------------------------------------------------------------------


async def test_live_calls_are_listed_while_they_run(console: Console) -> None:
    stack, client = console.stack, console.client
    call = await stack.carrier.place_call([CallerAudio.silence(30_000)], SimCallOptions(from_="+919000000555"))
    await call.wait_bot_audio(300, timeout=5)
    data = (await client.get("/console/live.json")).json()
    [row] = [r for r in data["live"] if r["call_id"] == call.call_uuid]
    assert row["from"] == "+919000000555" and row["to"] == "+918000000002"
    assert row["prompt"] == "default" and row["barge_ins"] == 0 and row["turns"] >= 1
    assert row["duration_s"] > 0 and row["state"] in {"bot speaking", "listening", "caller speaking"}
    assert row["url"] == f"/console/calls/{call.call_uuid}"
    page = await client.get("/console")
    assert f'data-call-id="{call.call_uuid}"' in page.text and "/console/live.json" in page.text
    # A live call has a detail page before it is saved.
    detail = await client.get(f"/console/calls/{call.call_uuid}")
    assert detail.status_code == 200 and ">live<" in detail.text
    await end_call(stack, call)
    await settle(stack)
    data = (await client.get("/console/live.json")).json()
    assert all(r["call_id"] != call.call_uuid for r in data["live"])
    assert data["recent"][0]["call_id"] == call.call_uuid


async def test_call_list_search_filters_and_pages(console: Console) -> None:
    client = console.client
    everything = await client.get("/console/calls")
    assert everything.status_code == 200
    assert "Page 1 of 2" in everything.text and 'rel="next"' in everything.text
    second = await client.get("/console/calls?page=2")
    assert "Page 2 of 2" in second.text and 'rel="prev"' in second.text and "CA-old" in second.text
    # What the caller said (transcribed by the engine), a number typed the human way, part of a call id.
    said = await client.get("/console/calls", params={"q": "caller audio"})
    assert console.barge_call in said.text and console.plain_call not in said.text
    number = await client.get("/console/calls", params={"q": "(555) 123-4567"})
    assert "CA-hostile" in number.text and "1 call," in number.text
    by_id = await client.get("/console/calls", params={"q": console.plain_call[:13]})
    assert console.plain_call in by_id.text
    reason = await client.get("/console/calls", params={"end_reason": "agent_end_call"})
    assert "7 calls" in reason.text and "CA-run-b-0" in reason.text and "CA-run-a-0" not in reason.text
    sales = await client.get("/console/calls", params={"prompt": "sales"})
    assert "8 calls" in sales.text and "CA-hour-01" not in sales.text
    run = await client.get("/console/calls", params={"run": "run-b"})
    assert "4 calls" in run.text and "CA-run-a-1" not in run.text
    nothing = await client.get("/console/calls", params={"q": "no such words anywhere"})
    assert "No calls match." in nothing.text
    assert (await client.get("/console/calls?page=0")).status_code == 422


async def test_call_detail_shows_transcript_timeline_latencies_and_barge_ins(console: Console) -> None:
    client, call_id = console.client, console.barge_call
    page = await client.get(f"/console/calls/{call_id}")
    assert page.status_code == 200
    html = page.text
    record = await console.stack.state.store.get_call(call_id)
    assert record is not None
    cut = next(t for t in record.record.turns if t.interrupted)
    answer = next(t for t in record.record.turns if t.latency_ms is not None)
    assert "+919000000777" in html and "Reply number 2." in html
    assert "interrupted — heard" in html and f"{cut.heard_ms:,.0f} ms" in html
    assert "caller audio" in html  # the caller's transcribed turn
    assert f"response latency {answer.latency_ms:,.0f} ms" in html and 'id="latencies"' in html
    assert 'id="barge-ins"' in html and 'class="marker barge"' in html
    # Barge-ins name the interrupted answer as #n, as the latency table does, never by the model's item id.
    answers = [t for t in record.record.turns if t.speaker == "assistant"]
    number = next(i + 1 for i, t in enumerate(answers) if t.item_id == record.record.barge_ins[0].item_id)
    barge_table = html[html.index('id="barge-ins"') :]
    barge_table = barge_table[: barge_table.index("</table>")]
    assert f"<td>#{number}</td>" in barge_table and str(cut.item_id) not in barge_table
    assert "response latency: caller stopped speaking → bot audio on the line" in html
    as_json = await client.get(f"/console/api/calls/{call_id}")
    assert as_json.status_code == 200 and as_json.json()["end_reason"] == record.record.end_reason
    assert [t["latency_ms"] for t in as_json.json()["turns"]] == [t.latency_ms for t in record.record.turns]
    assert (await client.get("/console/api/calls/CA-none")).status_code == 404
    assert '<svg class="chart timeline"' in html and 'class="span interrupted"' in html
    assert '<details id="events">' in html and "stream_started" in html
    assert f'<audio id="recording" controls preload="metadata" src="/console/calls/{call_id}/recording.wav">' in html
    assert "Estimated cost" in html and record.record.usage.output_audio > 0
    missing = await client.get("/console/calls/CA-no-such-call")
    assert missing.status_code == 404 and "Nothing is stored" in missing.text


async def test_everything_from_the_database_is_escaped(console: Console) -> None:
    page = await console.client.get(f"/console/calls/{console.history.hostile_id}")
    assert HOSTILE not in page.text
    assert "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in page.text
    listing = await console.client.get("/console/calls", params={"q": "owned"})
    assert HOSTILE not in listing.text and "CA-hostile" in listing.text
    prompts = await console.client.get("/console/prompts")
    assert "Sales line &lt;plans &amp; prices&gt;" in prompts.text


async def test_recording_streams_and_supports_ranges(console: Console) -> None:
    url = f"/console/calls/{console.barge_call}/recording.wav"
    response = await console.client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(response.content)) as wav:
        assert wav.getnchannels() == 2 and wav.getframerate() == 8000 and wav.getnframes() > 8000
    part = await console.client.get(url, headers={"Range": "bytes=0-43"})
    assert part.status_code == 206 and len(part.content) == 44 and part.content.startswith(b"RIFF")


async def test_recordings_outside_the_folder_are_refused(console: Console) -> None:
    history = console.history
    for call_id in (history.outside_id, history.missing_id, history.absolute_id, history.symlink_id):
        download = await console.client.get(f"/console/calls/{call_id}/recording.wav")
        assert download.status_code == 404, call_id
        page = await console.client.get(f"/console/calls/{call_id}")
        assert page.status_code == 200 and "<audio" not in page.text
        assert "no longer available" in page.text
    for path in ("/console/calls/..%2F..%2Fetc%2Fpasswd/recording.wav", "/console/calls/CA-nope/recording.wav"):
        assert (await console.client.get(path)).status_code == 404, path


async def test_prompts_page_shows_status_numbers_versions_and_diffs(console: Console) -> None:
    client, history = console.client, console.history
    page = await client.get("/console/prompts")
    assert page.status_code == 200
    html = page.text
    broken = html[html.index('id="prompt-broken"') :]
    broken = broken[: broken.index("</section>")]
    assert "invalid" in broken and "broken.md:3: speed:" in broken and "less than or equal to 1.5" in broken
    sales = html[html.index('id="prompt-sales"') :]
    sales = sales[: sales.index("</section>")]
    assert ">ok<" in sales and SALES_NUMBER in sales
    assert history.sales_v1.content_hash in sales and history.sales_v2.content_hash in sales
    assert ">current<" in sales  # the file on disk is the second version
    default = html[html.index('id="prompt-default"') :]
    assert "every number not routed elsewhere" in default[: default.index("</section>")]
    old, new = history.sales_v1.content_hash, history.sales_v2.content_hash
    assert f"/console/prompts/sales/diff?old={old}&amp;new={new}" in sales
    diff = await client.get("/console/prompts/sales/diff", params={"old": old, "new": new})
    assert diff.status_code == 200
    assert '<div class="del">-You sell the basic plan. Mention the price once.</div>' in diff.text
    assert (
        '<div class="add">+You sell the basic plan and the premium plan. Mention both prices once.</div>' in diff.text
    )
    assert '<div class="add">+greeting: Hello from sales!</div>' in diff.text
    unknown = await client.get("/console/prompts/sales/diff", params={"old": old, "new": "0" * 16})
    assert unknown.status_code == 404
    bad_name = await client.get("/console/prompts/..%2Fetc/diff", params={"old": old, "new": new})
    assert bad_name.status_code == 404


async def test_summary_charts_cover_the_window(console: Console) -> None:
    history = console.history
    day = await console.client.get("/console/summary")
    assert day.status_code == 200
    now = dt.datetime.now(dt.UTC)
    stored_today = (await console.stack.state.store.list_calls(since=now - dt.timedelta(hours=24), limit=0)).total
    assert stored_today >= history.in_24h + 2  # the seeded history and the calls placed through the carrier
    assert f'<div class="value" id="stat-calls">{stored_today}</div>' in day.text
    for chart in ("chart-calls", "chart-latency", "chart-barge", "chart-cost"):
        section = day.text[day.text.index(f'id="{chart}"') :]
        assert "<svg" in section[: section.index("</section>")], chart
    assert day.text.count('class="bar s1"') >= 20  # calls in most of the last 24 hours
    assert 'class="line s3"' in day.text  # p99 line
    week = await console.client.get("/console/summary", params={"window": "7d"})
    assert f'<div class="value" id="stat-calls">{stored_today + history.older}</div>' in week.text
    assert "agent_end_call" in week.text and "caller_hangup" in week.text
    fallback = await console.client.get("/console/summary", params={"window": "1y"})
    assert fallback.status_code == 200 and "selected>last 24h" in fallback.text


async def test_runs_page_compares_two_eval_runs(console: Console) -> None:
    page = await console.client.get("/console/runs", params={"a": "run-a", "b": "run-b"})
    assert page.status_code == 200
    html = page.text
    table = html[html.index('id="comparison"') :]
    table = table[: table.index("</table>")]
    store = console.stack.state.store
    comparison = await store.compare_runs("eval_run", "run-a", "run-b")
    assert comparison.a.calls == comparison.b.calls == 4
    assert f'<td>Response latency p50</td><td class="num">{comparison.a.latency_ms.p50:,.0f} ms</td>' in table
    assert f'<td class="num">{comparison.b.latency_ms.p50:,.0f} ms</td>' in table
    assert "<td>Barge-in rate</td>" in table and "<td>Ended: agent_end_call</td>" in table
    assert '<td>Total cost</td><td class="num">$0.0480</td><td class="num">$0.0360</td>' in table
    for i in range(4):
        assert f"CA-run-a-{i}" in html and f"CA-run-b-{i}" in html
    assert '<svg class="chart"' in html[html.index('id="chart-runs"') :]
    chosen = await console.client.get("/console/runs")
    assert "Side by side" in chosen.text  # the two runs with most calls are compared by default
    quoted = await console.client.get(f"/console/runs?a={quote('run-a')}&b=no-such-run")
    assert '<td>Calls</td><td class="num">4</td><td class="num">0</td>' in quoted.text


async def test_every_page_renders_an_empty_database(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts")
    async with running_stack(operator_token=TOKEN, prompts_dir=prompts) as stack:
        mount_console(stack.app)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=stack.base_url, headers=headers) as client:
            for path in ("/console", "/console/calls", "/console/prompts", "/console/summary", "/console/runs"):
                page = await client.get(path)
                assert page.status_code == 200, path
            assert "No calls are tagged" in (await client.get("/console/runs")).text
            assert (await client.get("/console/live.json")).json()["live"] == []


async def test_prompts_page_shows_numbers_and_evals_per_version(console: Console) -> None:
    page = await console.client.get("/console/prompts")
    assert page.status_code == 200
    html = page.text
    section = html[html.index('data-prompt="sales"') :]
    section = section[: section.index("</section>")]
    store = console.stack.state.store
    stats = await store.version_stats("sales")
    v1, v2 = console.history.sales_v1.content_hash, console.history.sales_v2.content_hash
    row1 = section[section.index(f'data-hash="{v1}"') :]
    row1 = row1[: row1.index("</tr>")]
    assert f'<td class="num v-p50">{stats[v1].latency_ms.p50:,.0f} ms</td>' in row1
    assert f'<td class="num v-p95">{stats[v1].latency_ms.p95:,.0f} ms</td>' in row1
    assert "agent_end_call 3" in row1 and "caller_hangup 1" in row1  # how the four run-a calls ended
    rate = stats[v1].barge_in_rate
    assert rate is not None and f'<td class="num v-barge">{rate * 100:.1f}%</td>' in row1
    assert "run-a: 3/4 passed" in row1 and "run-b" not in row1
    row2 = section[section.index(f'data-hash="{v2}"') :]
    assert "run-b: 4/4 passed" in row2[: row2.index("</tr>")]
    # Each version's text and settings, and a diff between any two.
    assert f'id="version-sales-{v1}"' in section and "You sell the basic plan. Mention the price once." in section
    assert "greeting: Hi, this is sales." in section
    assert 'class="filters diff-form"' in section
    assert "response latency: caller stopped speaking → bot audio on the line" in html


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    """A console of its own for experiments (their many calls would change the main console's counts), with
    `sales` running one of them, so the page also shows a configured experiment."""
    prompts = write_prompts(tmp_path_factory.mktemp("lab-prompts"))
    (prompts / "sales.md").write_text(SALES_V2.replace("---\n", f"---\n{EXPERIMENT_FRONT}", 1), encoding="utf-8")
    (prompts / "sales-v3.md").write_text(SALES_V2, encoding="utf-8")
    (prompts / "clinic.md").write_text("---\nexperiment: {candidate: nowhere, share: 0.5}\n---\nHello.\n")
    async with running_stack(RealtimeSimConfig(), operator_token=TOKEN, prompts_dir=prompts) as stack:
        mount_console(stack.app)
        await seed_experiments(stack.state.store, parse_prompt("sales", SALES_V2, "<seed>"), time.time() - 3600)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=stack.base_url, headers=headers) as client:
            yield client


async def test_experiment_arms_side_by_side_with_intervals(lab: httpx.AsyncClient) -> None:
    page = await lab.get("/console/experiments", params={"name": BIG_EXPERIMENT})
    assert page.status_code == 200
    html = page.text
    assert 'id="not-enough"' not in html
    table = html[html.index('id="arms"') :]
    table = table[: table.index("</table>")]
    assert '<td>Calls</td><td class="num">40</td><td class="num">40</td>' in table
    p50 = table[table.index("<td>Response latency p50</td>") :]
    p50 = p50[: p50.index("</tr>")]
    assert p50.count("–") == 2 and "candidate higher" in p50  # intervals shown, and they do not overlap
    barge = table[table.index("<td>Barge-in rate (per answer)</td>") :]
    assert "candidate higher" in barge[: barge.index("</tr>")]
    ended = table[table.index("<td>Ended: caller_hangup</td>") :]
    assert "within noise" in ended[: ended.index("</tr>")]  # same share of hang-ups in both arms
    assert "Prompt <b>sales</b> (control) sends 20.0% of its calls to <b>sales-v3</b>" in html
    prompts = await lab.get("/console/prompts")
    assert f'href="/console/experiments?name={BIG_EXPERIMENT}"' in prompts.text
    sales = prompts.text[prompts.text.index('data-prompt="sales"') :]
    assert "experiment-problem" not in sales[: sales.index("</section>")]  # sales-v3 is a good prompt
    clinic = prompts.text[prompts.text.index('data-prompt="clinic"') :]
    assert "The candidate cannot be served" in clinic and "no prompt file nowhere.md" in clinic
    small = await lab.get("/console/experiments", params={"name": SMALL_EXPERIMENT})
    assert 'id="not-enough"' in small.text and "3 control and 2 candidate calls" in small.text
    assert "candidate higher" not in small.text and "not enough calls yet" in small.text
