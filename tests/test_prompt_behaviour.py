"""Prompt-driven call behaviour: HTTP tools with a filler, the idle caller, and the maximum call duration."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from agent.engine import RealtimeSimConfig
from agent.prompts.library import arm_of
from agent.testkit.carrier import CallerAudio
from agent.testkit.local_server import serve_app
from tests.harness import ROOT, running_stack

TOOL_PROMPT = """---
greeting: Hi.
tools:
  - name: lookup_order
    description: Look up an order by its number.
    url: {url}/orders
    method: POST
    parameters:
      type: object
      properties:
        order_id: {{type: string}}
      required: [order_id]
    timeout_s: 5
    filler: Let me look that up for you.
    filler_after_s: 0.3
idle:
  reminder_after_s: null
---
You help callers with their orders.
"""


class OrderService:
    """The operator's own HTTP service, on loopback: it answers when the test lets it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.requests: list[dict[str, Any]] = []
        self.app = FastAPI()

        @self.app.post("/orders")
        async def orders(request: Request) -> dict[str, Any]:
            self.requests.append({"body": await request.json(), "call": request.headers.get("x-call-id")})
            await self.release.wait()
            return {"status": "shipped", "eta": "tomorrow"}

        @self.app.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"ok": "yes"}


@pytest.fixture
async def order_service() -> AsyncIterator[tuple[OrderService, str]]:
    service = OrderService()
    async with serve_app(lambda _: service.app) as url:
        yield service, url
        service.release.set()


def prompt_dir_with(tmp_path: Path, text: str) -> Path:
    shutil.copy(ROOT / "prompts" / "default.md", tmp_path / "other.md")
    (tmp_path / "default.md").write_text(text)
    return tmp_path


async def test_slow_http_tool_is_covered_by_a_filler_then_answered(
    tmp_path: Path, order_service: tuple[OrderService, str]
) -> None:
    service, url = order_service
    prompts = prompt_dir_with(tmp_path, TOOL_PROMPT.format(url=url))
    async with running_stack(RealtimeSimConfig(reply_ms=300), prompts_dir=prompts) as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.silence(900), CallerAudio.tone(300, 400, 0.4), CallerAudio.silence(10000)]
        )
        session = await stack.engine.wait_for_session()
        update = await session.wait_for_client_event("session.update")
        tool = next(t for t in update["session"]["tools"] if t["name"] == "lookup_order")
        assert tool["parameters"]["required"] == ["order_id"]
        await session.wait_for_server_event("response.done", timeout=5)
        session.queue_tool_call("lookup_order", {"order_id": "A-17"})
        session.queue_reply(reply_ms=0)  # the caller's question is answered by a tool call alone
        asks = await session.wait_for_client_event(
            "response.create", lambda e: "look that up" in json.dumps(e), timeout=5
        )
        assert service.requests == [{"body": {"order_id": "A-17"}, "call": call.call_uuid}]
        await call.wait_bot_audio(550, timeout=5)  # the caller hears the filler while the service works
        service.release.set()
        output = await session.wait_for_client_event(
            "conversation.item.create", lambda e: e["item"]["type"] == "function_call_output", timeout=5
        )
        assert output["_t"] > asks["_t"]
        result = json.loads(output["item"]["output"])
        assert result == {"ok": True, "status": 200, "result": {"status": "shipped", "eta": "tomorrow"}}
        await session.wait_for_client_event("response.create", lambda e: e["_t"] > output["_t"], timeout=5)
        uses = stack.state.registry.records[call.call_uuid].tools
        assert [(u.name, u.ok) for u in uses] == [("lookup_order", True)] and "shipped" in (uses[0].result or "")
        await call.hangup()
        assert session.protocol_errors == []


IDLE_PROMPT = """---
greeting: Hi.
idle:
  reminder_after_s: 1.0
  reminder: Are you still there?
  hangup_after_s: 2.5
  goodbye: I will hang up now. Goodbye!
---
You are a helpful assistant.
"""


async def test_idle_caller_gets_a_reminder_then_a_polite_hangup(tmp_path: Path) -> None:
    prompts = prompt_dir_with(tmp_path, IDLE_PROMPT)
    async with running_stack(RealtimeSimConfig(reply_ms=300), prompts_dir=prompts) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(15000)])
        session = await stack.engine.wait_for_session()
        await call.wait_ended(timeout=10)
        creates = [e for e in session.client_events if e["type"] == "response.create"]
        texts = [e.get("response", {}).get("instructions", "") for e in creates]
        assert "Are you still there?" in texts[1] and "Goodbye!" in texts[2]
        greeting_done = next(e for e in session.server_events if e["type"] == "response.done")
        reminder_gap = creates[1]["_t"] - greeting_done["_t"]
        assert 1.0 <= reminder_gap < 1.6  # counted from the end of the greeting's playback
        assert call.played_ms == pytest.approx(900, abs=60)  # greeting, reminder and goodbye all heard
        assert [a.verb for a in call.after_stream] == ["Redirect", "Hangup"]
        assert stack.state.registry.records[call.call_uuid].end_reason == "idle_timeout"


async def test_a_caller_who_answers_the_reminder_is_not_hung_up_on(tmp_path: Path) -> None:
    prompts = prompt_dir_with(tmp_path, IDLE_PROMPT)
    async with running_stack(RealtimeSimConfig(reply_ms=300), prompts_dir=prompts) as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.silence(2000), CallerAudio.tone(300, 500, 0.4), CallerAudio.silence(1200)]
        )
        session = await stack.engine.wait_for_session()
        await call.wait_script_done(timeout=8)
        assert not call.ended.is_set()
        texts = [
            e.get("response", {}).get("instructions", "")
            for e in session.client_events
            if e["type"] == "response.create"
        ]
        assert not any("Goodbye!" in t for t in texts)
        await call.hangup()


async def test_max_call_duration_ends_with_a_spoken_wrap_up(tmp_path: Path) -> None:
    text = IDLE_PROMPT.replace(
        "idle:\n  reminder_after_s: 1.0",
        "max_call_duration_s: 1.5\nwrap_up: Time is up.\nidle:\n  reminder_after_s: null",
    ).replace("hangup_after_s: 2.5", "hangup_after_s: null")
    prompts = prompt_dir_with(tmp_path, text)
    async with running_stack(RealtimeSimConfig(reply_ms=400), prompts_dir=prompts) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(10000)])
        session = await stack.engine.wait_for_session()
        await call.wait_ended(timeout=8)
        last = [e for e in session.client_events if e["type"] == "response.create"][-1]
        assert "Time is up." in last["response"]["instructions"]
        assert call.played_ms == pytest.approx(800, abs=60)  # the wrap-up was heard in full
        assert stack.state.registry.records[call.call_uuid].end_reason == "max_duration"


async def test_an_experiment_routes_its_share_of_answered_calls_to_the_candidate(tmp_path: Path) -> None:
    shutil.copy(ROOT / "prompts" / "default.md", tmp_path / "default.md")
    (tmp_path / "clinic.md").write_text("---\nexperiment: {candidate: clinic-v2, share: 0.5}\n---\nClinic, control.\n")
    (tmp_path / "clinic-v2.md").write_text("---\ngreeting: Hi.\n---\nClinic, candidate.\n")
    async with running_stack(RealtimeSimConfig(reply_ms=300), prompts_dir=tmp_path) as stack:
        async with httpx.AsyncClient() as http:
            arms: dict[str, str] = {}
            for i in range(16):
                call_id = f"exp-call-{i}"
                form = {"CallUUID": call_id, "From": "+911", "To": "+912", "Event": "StartApp", "prompt": "clinic"}
                reply = await http.post(f"{stack.base_url}/vobiz/answer", params={"prompt": "clinic"}, data=form)
                assert "<Stream" in reply.text
                tags = stack.state.registry.records[call_id].tags
                expected = arm_of("clinic-vs-clinic-v2", call_id, 0.5)
                assert tags == {"experiment": "clinic-vs-clinic-v2", "arm": expected}
                assert ("prompt=clinic-v2" in reply.text) == (expected == "candidate")
                arms[call_id] = expected
        assert set(arms.values()) == {"control", "candidate"}
        await stack.state.registry.shutdown()
