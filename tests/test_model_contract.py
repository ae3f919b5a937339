"""The agent against what the OpenAI Realtime GA service does, not what our own fakes happen to do.

Response-level instructions replace the session's; a newer server sends types and enum values the SDK does not
list yet; a request the server never answers must not stall the call.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any, ClassVar, cast

from agent.calls.responses import ResponseQueue
from agent.engine import RealtimeSimConfig, ReplyRequest, SimSession
from agent.engine.speech.dialogue import DialogueIndex, SpeechReplySource
from agent.prompts.loader import load_prompt
from agent.protocol.realtime.session_config import guided
from agent.testkit.carrier import CallerAudio
from agent.waiting import within
from tests.harness import ROOT, running_stack

CLINIC = """---
greeting: Namaste, Sharma Clinic mein aapka swagat hai.
language: hi
idle:
  reminder_after_s: 1.0
  reminder: Kya aap line par hain?
  hangup_after_s: 2.5
  goodbye: Main call samaapt kar rahi hoon. Namaste!
offline:
  answers:
    - keywords: [bye, alvida]
      reply: Dhanyavaad, Sharma Clinic. Namaste!
      tool: end_call
---
Aap Sharma Clinic ki receptionist hain. Hamesha Hindi mein baat karein aur appointment book karne mein madad karein.
"""


SPEAK_THEN_LISTEN = [CallerAudio.silence(900), CallerAudio.tone(300, 600, 0.4), CallerAudio.silence(8000)]


def clinic_prompts(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "prompts" / "default.md", tmp_path / "default.md")
    (tmp_path / "clinic.md").write_text(CLINIC)
    return tmp_path


def response_instructions(session: SimSession) -> list[str]:
    return [
        e["response"]["instructions"]
        for e in session.client_events
        if e["type"] == "response.create" and "instructions" in e.get("response", {})
    ]


async def test_every_response_the_agent_asks_for_keeps_the_prompt(tmp_path: Path) -> None:
    """Greeting, idle reminder and idle goodbye: each response.create repeats the prompt's instructions."""
    prompts = clinic_prompts(tmp_path)
    persona = load_prompt(prompts, "clinic").instructions
    async with running_stack(RealtimeSimConfig(reply_ms=300), prompts_dir=prompts, default_prompt="clinic") as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(15000)])
        session = await stack.engine.wait_for_session()
        await call.wait_ended(timeout=10)
        asked = response_instructions(session)
        assert len(asked) == 3  # greeting, reminder, goodbye
        for instructions in asked:
            assert instructions.startswith(persona), instructions
        assert "Namaste, Sharma Clinic" in asked[0] and "Kya aap line par hain?" in asked[1]
        assert "samaapt" in asked[2]
        assert session.protocol_errors == []


def reply_request(instructions: str, session_instructions: str) -> ReplyRequest:
    class _Session:
        items: ClassVar[list[dict[str, Any]]] = []

    return ReplyRequest(
        session=cast(SimSession, _Session()),
        response_id="resp_1",
        number=2,
        audio_format=None,
        reply_ms=1000,
        transcript=None,
        instructions=instructions,
        trigger="client",
        session_instructions=session_instructions,
        caller_text="haan",
    )


async def test_offline_engine_honours_the_instruction_override(tmp_path: Path) -> None:
    """A bare response-level instruction loses the prompt (the default prompt answers); a guided one keeps it."""
    prompts = clinic_prompts(tmp_path)
    clinic = load_prompt(prompts, "clinic")
    source = SpeechReplySource(DialogueIndex(prompts))
    goodbye = "Say a short, friendly goodbye to the caller."
    bare = await source.reply(reply_request(goodbye, clinic.instructions))
    assert bare.transcript == "Thank you for calling. Goodbye!"  # the default prompt's: the persona was replaced
    kept = await source.reply(reply_request(guided(clinic, goodbye)["instructions"], clinic.instructions))
    assert kept.transcript == "Dhanyavaad, Sharma Clinic. Namaste!"


async def test_a_newer_server_still_ends_the_call_with_its_tool() -> None:
    """Unknown event types are skipped and a response.done with an unlisted reason still runs its end_call."""
    async with running_stack(RealtimeSimConfig(reply_ms=300, newer_server=True), model_strict_events=True) as stack:
        call = await stack.carrier.place_call(SPEAK_THEN_LISTEN)
        session = await stack.engine.wait_for_session()
        await session.wait_for_server_event("response.done", timeout=5)  # the greeting
        session.queue_tool_call("end_call", {"reason": "done"})
        session.queue_reply(reply_ms=400, transcript="Goodbye.")  # answers the caller's turn
        await call.wait_ended(timeout=10)
        assert stack.state.registry.records[call.call_uuid].end_reason == "agent_end_call"
        assert stack.metric("agent_model_events_off_contract_total", outcome="lenient") > 0
        assert stack.metric("agent_model_events_off_contract_total", outcome="ignored") > 0
        assert session.protocol_errors == []


class _Sent:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    async def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.changed.set()


async def test_a_response_the_server_never_starts_is_given_up() -> None:
    sent = _Sent()
    abandoned: list[str] = []
    queue = ResponseQueue(sent, start_timeout_s=0.05, stall_timeout_s=0.05, on_abandon=abandoned.append)
    watcher = asyncio.create_task(queue.watch())
    try:
        first = await queue.request({"instructions": "a"})
        second = await queue.request({"instructions": "b"})
        assert await within(2, first) is None  # no response.created ever came
        assert abandoned == ["start"]
        assert [e["response"]["instructions"] for e in sent.events] == ["a", "b"]  # the next one went out
        queue.created("resp_2", {"agent_request": "create_2"})
        assert await within(2, second) == "resp_2"  # created, then silence: cancelled and given up
        assert abandoned == ["start", "stalled"]
        assert sent.events[-1] == {"type": "response.cancel", "response_id": "resp_2"}
        assert not queue.busy
    finally:
        watcher.cancel()


async def test_a_vad_response_that_slips_in_is_not_taken_for_ours_and_ours_is_retried() -> None:
    """The server starts a VAD turn just before our create arrives: it refuses ours as busy; we retry it once the
    VAD turn is over, or, should its response.done never come, once the stall deadline gives that one up."""
    sent = _Sent()
    queue = ResponseQueue(sent, start_timeout_s=5, stall_timeout_s=0.05)
    watcher = asyncio.create_task(queue.watch())
    try:
        queue.created("resp_greeting", {"agent_request": "create_0"})  # the server echoes metadata
        await queue.finished("resp_greeting")
        done = await queue.request({"instructions": "reminder"})
        queue.created("resp_vad", None)  # VAD's own response: no metadata of ours
        assert await queue.refused("create_1", "conversation_already_has_active_response")
        await within(2, _sent_count(sent, 3))
        kinds = [(e["type"], e.get("event_id") or e.get("response_id")) for e in sent.events]
        assert kinds == [
            ("response.create", "create_1"),
            ("response.cancel", "resp_vad"),
            ("response.create", "create_1"),
        ]
        assert not done.done()  # still ours to be answered
        queue.created("resp_reminder", {"agent_request": "create_1"})
        await queue.finished("resp_reminder")
        assert done.result() == "resp_reminder"
    finally:
        watcher.cancel()


async def _sent_count(sent: _Sent, count: int) -> None:
    while len(sent.events) < count:
        sent.changed.clear()
        await sent.changed.wait()
