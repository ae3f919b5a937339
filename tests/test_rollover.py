"""A model session switched at every awkward moment: each caller turn is answered exactly once, nothing that was
said is lost, and the line has no gap.

The switch is forced (`rollover` with no quiet wait) at the moment under test, as it is when a long call reaches
the session's time cap with no quiet moment in sight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.calls.call import Call
from agent.engine import Event, RealtimeSimConfig, SimSession
from agent.testkit.analysis.call import analyze_call
from agent.testkit.carrier import CallerAudio, SimCall
from tests.harness import Stack, running_stack
from tests.test_prompt_behaviour import TOOL_PROMPT, OrderService, order_service, prompt_dir_with  # noqa: F401

QUESTION = [CallerAudio.silence(1500), CallerAudio.tone(300, 1200, 0.4), CallerAudio.silence(6000)]


def question_after(greeting_ms: int) -> list[Any]:
    """The caller waits for the whole greeting, then asks."""
    return [CallerAudio.silence(greeting_ms + 800), CallerAudio.tone(300, 1200, 0.4), CallerAudio.silence(8000)]


def analyze_gaps(call: SimCall) -> list[float]:
    return analyze_call(call).playout_gaps_ms


def live(stack: Stack, call: SimCall) -> Call:
    return stack.state.registry.live[call.call_uuid]


def spoken_responses(session: SimSession, after: float) -> list[str]:
    """Responses of the session, started after `after`, that produced audio."""
    created = [e for e in session.server_events if e["type"] == "response.created" and e["_t"] > after]
    deltas = {e["response_id"] for e in session.server_events if e["type"] == "response.output_audio.delta"}
    return [e["response"]["id"] for e in created if e["response"]["id"] in deltas]


def creates(session: SimSession) -> list[Event]:
    return [e for e in session.client_events if e["type"] == "response.create"]


async def forced(stack: Stack, call: SimCall) -> SimSession:
    assert await live(stack, call).rollover()
    return await stack.engine.wait_for_session(1, timeout=5)


async def answered_once(stack: Stack, call: SimCall, first: SimSession, second: SimSession, turn_end: Event) -> None:
    await second.wait_for_server_event("response.done", lambda e: bool(spoken_responses(second, 0)), timeout=10)
    await call.wait_bot_silence(400, timeout=10)
    answers = spoken_responses(first, turn_end["_t"]) + spoken_responses(second, 0)
    assert len(answers) == 1, answers
    assert second.protocol_errors == [] and first.protocol_errors == []


async def test_switch_while_the_caller_is_mid_utterance() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=600), rollover_quiet_wait_s=0) as stack:
        call = await stack.carrier.place_call(QUESTION)
        first = await stack.engine.wait_for_session()
        await first.wait_for_server_event("input_audio_buffer.speech_started", timeout=8)
        second = await forced(stack, call)
        # The new session got the utterance so far, and its own VAD heard the rest and closed the turn.
        appended = [e for e in second.client_events if e["type"] == "input_audio_buffer.append"]
        assert appended
        stopped = await second.wait_for_server_event("input_audio_buffer.speech_stopped", timeout=8)
        assert not [e for e in first.server_events if e["type"] == "input_audio_buffer.speech_stopped"]
        await answered_once(stack, call, first, second, stopped)
        await call.hangup()


@pytest.mark.parametrize("answer_wait_s", [0.0, 15.0], ids=["cap-hit-now", "answer-may-finish"])
async def test_switch_after_the_turn_closed_before_any_answer_audio(answer_wait_s: float) -> None:
    """With no time left the new session is asked to answer the turn; with a little, the old one finishes it."""
    config = RealtimeSimConfig(reply_ms=600, first_audio_delay_ms=1500)
    async with running_stack(config, rollover_quiet_wait_s=0, rollover_answer_wait_s=answer_wait_s) as stack:
        call = await stack.carrier.place_call(QUESTION)
        first = await stack.engine.wait_for_session()
        greeting = await first.wait_for_server_event("response.done", timeout=8)
        stopped = await first.wait_for_server_event("input_audio_buffer.speech_stopped", timeout=8)
        await first.wait_for_server_event("response.created", lambda e: e["_t"] > greeting["_t"], timeout=5)
        second = await forced(stack, call)  # the old session is generating; nothing of the answer arrived yet
        assert len(creates(second)) == (1 if answer_wait_s == 0 else 0)
        if answer_wait_s == 0:
            await answered_once(stack, call, first, second, stopped)
        else:
            await call.wait_bot_silence(400, timeout=10)
            assert len(spoken_responses(first, stopped["_t"])) == 1 and spoken_responses(second, 0) == []
        await call.hangup()


async def test_switch_while_the_answer_is_being_generated_lets_it_finish_without_a_gap() -> None:
    # Generated 1.5x faster than it plays, as the real service does: 2 s to generate, so still under way when the
    # switch comes half a second into it, and a loaded CI machine's jitter does not starve the line.
    config = RealtimeSimConfig(reply_ms=3000, speed=1.5)
    async with running_stack(config, rollover_quiet_wait_s=0) as stack:
        call = await stack.carrier.place_call(question_after(3000))
        first = await stack.engine.wait_for_session()
        greeting = await first.wait_for_server_event("response.done", timeout=8)
        answer = await first.wait_for_server_event("response.created", lambda e: e["_t"] > greeting["_t"], timeout=8)
        await first.wait_for_server_event(
            "response.output_audio.delta", lambda e: e["response_id"] == answer["response"]["id"], timeout=5
        )
        await call.wait_bot_audio(3000 + 500, timeout=8)  # half a second of the answer heard, more being generated
        second = await forced(stack, call)
        # The switch waited for the answer to be generated: the old session finished it, the new one is asked
        # for nothing, and the whole answer played without a hole.
        done = next(e for e in first.server_events if e["type"] == "response.done" and e["_t"] > answer["_t"])
        assert done["response"]["status"] == "completed"
        assert creates(second) == []
        await call.wait_bot_silence(400, timeout=10)
        assert call.played_ms >= 2 * 3000 - 40 and analyze_gaps(call) == []
        await call.hangup()


async def test_switch_while_a_finished_answer_still_plays_asks_for_nothing() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=2500, speed=8.0), rollover_quiet_wait_s=0) as stack:
        call = await stack.carrier.place_call(question_after(2500))
        first = await stack.engine.wait_for_session()
        greeting = await first.wait_for_server_event("response.done", timeout=8)
        await first.wait_for_server_event("response.done", lambda e: e["_t"] > greeting["_t"], timeout=8)
        await call.wait_bot_audio(2500 + 300, timeout=8)  # the answer is all received, and still playing
        second = await forced(stack, call)
        await call.wait_bot_silence(400, timeout=10)
        assert creates(second) == []  # nothing was left unanswered
        assert call.played_ms >= 2 * 2500 - 40 and analyze_gaps(call) == []  # the answer played to its end
        await call.hangup()


async def test_switch_while_a_tool_runs_delivers_its_result_to_the_new_session(
    tmp_path: Path,
    order_service: tuple[OrderService, str],  # noqa: F811
) -> None:
    service, url = order_service
    prompts = prompt_dir_with(tmp_path, TOOL_PROMPT.format(url=url))
    async with running_stack(RealtimeSimConfig(reply_ms=400), prompts_dir=prompts, rollover_quiet_wait_s=0) as stack:
        call = await stack.carrier.place_call(QUESTION)
        first = await stack.engine.wait_for_session()
        await first.wait_for_server_event("response.done", timeout=8)  # the greeting
        first.queue_tool_call("lookup_order", {"order_id": "A-1"})
        first.queue_reply(reply_ms=0)
        await call.wait_for(lambda: bool(service.requests), timeout=10)  # the tool is running
        second = await forced(stack, call)
        service.release.set()
        note = await second.wait_for_client_event(
            "conversation.item.create", lambda e: e["item"].get("role") == "system", timeout=10
        )
        assert "lookup_order" in note["item"]["content"][0]["text"] and "shipped" in note["item"]["content"][0]["text"]
        assert not [e for e in second.client_events if e.get("item", {}).get("type") == "function_call_output"]
        await second.wait_for_client_event("response.create", lambda e: e["_t"] > note["_t"], timeout=5)
        assert second.protocol_errors == []
        await call.hangup()
