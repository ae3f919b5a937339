"""A model socket that dies mid-answer: the answer goes on from what the caller heard, with little dead air,
whether the connection was reset or went silent without closing."""

from __future__ import annotations

import asyncio
import itertools

from agent.engine import RealtimeSimConfig, SimSession
from agent.engine.speech.dialogue import DialogueIndex, SpeechReplySource
from agent.testkit.carrier import CallerAudio, SimCall
from tests.harness import ROOT, Stack, running_stack

QUESTION = [CallerAudio.silence(3500), CallerAudio.tone(300, 600, 0.4), CallerAudio.silence(12000)]


def speaking_engine() -> RealtimeSimConfig:
    """The offline engine's voice, streaming in real time so that a drop lands mid-generation."""
    source = SpeechReplySource(DialogueIndex(ROOT / "prompts"), recognizer=None)
    return RealtimeSimConfig(reply_source=source, speed=1.0, first_audio_delay_ms=200)


async def cut_mid_answer(stack: Stack, call: SimCall, silently: bool) -> tuple[SimSession, SimSession, float]:
    first = await stack.engine.wait_for_session()
    greeting = await first.wait_for_server_event("response.created", timeout=10)
    answer = await first.wait_for_server_event(
        "response.created", lambda e: e["response"]["id"] != greeting["response"]["id"], timeout=15
    )
    answer_id = answer["response"]["id"]
    await first.wait_for_server_event(
        "response.output_audio.delta", lambda e: e["response_id"] == answer_id and _audio_ms(first, answer_id) >= 1200
    )
    cut_at = asyncio.get_running_loop().time()
    if silently:
        first.stall()
    else:
        await first.drop()
    second = await stack.engine.wait_for_session(1, timeout=10)
    return first, second, cut_at


def _audio_ms(session: SimSession, response_id: str) -> float:
    deltas = [e for e in session.server_events if e["type"] == "response.output_audio.delta"]
    return sum(len(e["delta"]) * 3 / 4 for e in deltas if e["response_id"] == response_id) / 8


def the_full_answer(first: SimSession) -> str:
    """What the engine was saying when it was cut: its scripted reply to the caller's turn."""
    heard = next(e for e in first.server_events if e["type"].endswith("input_audio_transcription.completed"))
    dialogue = DialogueIndex(ROOT / "prompts").dialogue_for(str(first.session_config["instructions"]))
    return dialogue.answer(heard["transcript"])[0]


async def check_the_answer_goes_on(stack: Stack, call: SimCall, first: SimSession, second: SimSession) -> None:
    said = await second.wait_for_server_event("response.output_audio_transcript.done", timeout=10)
    seeded = [e["item"] for e in second.client_events if e["type"] == "conversation.item.create"]
    heard = seeded[-1]["content"][0]["text"]
    assert seeded[-1]["role"] == "assistant"
    full = the_full_answer(first)
    # The new session was told only the words the received audio holds, and carried on with the rest.
    assert heard and full.startswith(heard) and len(heard) < len(full)
    assert heard.split() + said["transcript"].split() == full.split()
    ask = next(e for e in second.client_events if e["type"] == "response.create")
    assert "left off" in ask["response"]["instructions"]
    await second.wait_for_server_event("response.done", timeout=10)
    await call.wait_bot_silence(300, timeout=10)  # the continuation has played out


def dead_air_ms(call: SimCall, after: float) -> float:
    """The longest quiet spell on the line between the cut and the continuation."""
    events = [e for e in call.timeline if e.kind in ("bot_audio_started", "bot_audio_stopped") and e.t >= after - 0.5]
    gaps = [b.t - a.t for a, b in itertools.pairwise(events) if a.kind == "bot_audio_stopped"]
    return max(gaps, default=0.0) * 1000


async def test_a_reset_connection_mid_answer_goes_on_from_what_was_heard() -> None:
    async with running_stack(speaking_engine()) as stack:
        call = await stack.carrier.place_call(QUESTION)
        first, second, cut_at = await cut_mid_answer(stack, call, silently=False)
        await check_the_answer_goes_on(stack, call, first, second)
        assert dead_air_ms(call, cut_at) < 1000
        await call.hangup()


async def test_a_connection_that_goes_silent_mid_answer_is_noticed_and_replaced() -> None:
    async with running_stack(speaking_engine(), model_quiet_ms=300, model_pong_timeout_ms=400) as stack:
        call = await stack.carrier.place_call(QUESTION)
        first, second, cut_at = await cut_mid_answer(stack, call, silently=True)
        await check_the_answer_goes_on(stack, call, first, second)
        assert stack.metric("agent_model_reconnects_total", outcome="unresponsive") == 1
        assert dead_air_ms(call, cut_at) < 1500
        await call.hangup()
