"""How calls end: goodbyes, transfers, hang-ups, model failures, and teardown without leaks."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.engine import RealtimeSimConfig
from agent.testkit.carrier import CallerAudio, SimCall, SimCallOptions
from agent.waiting import within
from tests.harness import ROOT, Stack, VobizTransferApi, running_stack, start_message

SPEAK_THEN_LISTEN = [CallerAudio.silence(900), CallerAudio.tone(300, 600, 0.4), CallerAudio.silence(8000)]


def verbs(call: SimCall) -> list[str]:
    return [a.verb for a in call.after_stream]


def record(stack: Stack, call: SimCall) -> Any:
    return stack.state.registry.records[call.call_uuid]


async def wait_live_calls(stack: Stack, count: int, timeout: float = 2.0) -> None:  # noqa: ASYNC109
    """Wait on the call objects themselves (each sets `done` when fully torn down)."""
    calls = list(stack.state.registry.live.values())
    if count == 0 and calls:
        await within(timeout, asyncio.gather(*[c.done.wait() for c in calls]))
    assert len(stack.state.registry.live) == count


async def test_end_call_lets_the_goodbye_finish_then_stops_and_hangs_up() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300)) as stack:
        stack.engine.on_session = lambda s: s.queue_reply(reply_ms=300)
        call = await stack.carrier.place_call(SPEAK_THEN_LISTEN)
        session = await stack.engine.wait_for_session()
        await session.wait_for_server_event("response.done", timeout=5)  # greeting
        session.queue_tool_call("end_call", {"reason": "caller is done"})
        session.queue_reply(reply_ms=1500, transcript="Goodbye, have a nice day.")
        await call.wait_ended(timeout=10)
        stop = next(e for e in call.timeline if e.kind == "stop_received")
        goodbye_audio = [e for e in call.timeline if e.kind == "bot_audio_stopped" and e.t <= stop.t]
        assert goodbye_audio, "the goodbye finished playing before stop"
        assert call.played_ms == pytest.approx(300 + 1500, abs=40)  # greeting + the whole goodbye
        assert verbs(call) == ["Redirect", "Hangup"]
        assert record(stack, call).end_reason == "agent_end_call"
        await stack.engine.wait_idle(timeout=2)
        await wait_live_calls(stack, 0)
        assert call.protocol_errors == [] and session.protocol_errors == []


async def test_end_call_without_words_asks_for_a_goodbye_first() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300)) as stack:
        call = await stack.carrier.place_call(SPEAK_THEN_LISTEN)
        session = await stack.engine.wait_for_session()
        await session.wait_for_server_event("response.done", timeout=5)
        session.queue_tool_call("end_call", {})
        session.queue_reply(reply_ms=0)  # the model calls the tool without saying anything
        await call.wait_ended(timeout=10)
        output = next(e for e in session.client_events if e["type"] == "conversation.item.create")
        assert output["item"]["type"] == "function_call_output"
        asks = [e for e in session.client_events if e["type"] == "response.create"]
        assert "goodbye" in asks[-1]["response"]["instructions"].lower()
        assert call.played_ms == pytest.approx(300 + 300, abs=40)  # greeting + the requested goodbye
        assert verbs(call) == ["Redirect", "Hangup"]


async def test_transfer_without_rest_ends_the_stream_into_a_dial() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300), transfer_number="+15550001111") as stack:
        call = await stack.carrier.place_call(SPEAK_THEN_LISTEN)
        session = await stack.engine.wait_for_session()
        update = await session.wait_for_client_event("session.update")
        assert "transfer_call" in [t["name"] for t in update["session"]["tools"]]
        await session.wait_for_server_event("response.done", timeout=5)
        session.queue_tool_call("transfer_call", {"reason": "wants a human"})
        session.queue_reply(reply_ms=500, transcript="Connecting you now.")
        await call.wait_ended(timeout=10)
        assert call.played_ms == pytest.approx(800, abs=40)
        assert verbs(call) == ["Redirect", "Dial"]
        assert call.after_stream[-1].detail.get("number") == "+15550001111" or "+15550001111" in str(
            call.after_stream[-1]
        )
        assert record(stack, call).end_reason == "agent_transfer"


async def test_transfer_through_the_rest_api() -> None:
    api = VobizTransferApi()
    async with running_stack(
        RealtimeSimConfig(reply_ms=300), vobiz=api.client(), transfer_number="+15550002222"
    ) as stack:
        call = api.call = await stack.carrier.place_call(SPEAK_THEN_LISTEN)
        session = await stack.engine.wait_for_session()
        await session.wait_for_server_event("response.done", timeout=5)
        session.queue_tool_call("transfer_call", {})
        session.queue_reply(reply_ms=400)
        await call.wait_ended(timeout=10)
        assert len(api.requests) == 1
        request = api.requests[0]
        assert request.method == "POST" and request.url.path == f"/api/v1/Account/MA_TEST/Call/{call.call_uuid}/"
        assert json.loads(request.content)["legs"] == "aleg"
        assert verbs(call) == ["Transfer", "Dial"]
        assert "+15550002222" in str(call.after_stream[-1])
        assert call.played_ms == pytest.approx(700, abs=40)
        await api.aclose()


async def test_transfer_without_a_number_tells_the_model_no_one_is_available() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300)) as stack:
        call = await stack.carrier.place_call(SPEAK_THEN_LISTEN)
        session = await stack.engine.wait_for_session()
        await session.wait_for_server_event("response.done", timeout=5)
        session.queue_tool_call("transfer_call", {})
        await session.wait_for_client_event("conversation.item.create", timeout=6)
        output = next(e for e in session.client_events if e["type"] == "conversation.item.create")
        assert json.loads(output["item"]["output"])["ok"] is False
        await session.wait_for_server_event("response.done", lambda e: len(session.responses) >= 3, timeout=5)
        assert not call.ended.is_set()
        await call.hangup()


async def test_model_socket_drop_reconnects_and_reseeds_the_conversation() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=400)) as stack:
        call = await stack.carrier.place_call(
            [
                CallerAudio.silence(900),
                CallerAudio.tone(300, 600, 0.4),
                CallerAudio.silence(1500),
                CallerAudio.tone(300, 600, 0.4),
                CallerAudio.silence(3000),
            ]
        )
        first = await stack.engine.wait_for_session()
        await first.wait_for_server_event("response.done", lambda e: len(first.responses) >= 2, timeout=6)
        await first.wait_for_server_event("conversation.item.input_audio_transcription.completed", timeout=3)
        await first.drop()  # the network drops the model socket mid-call
        second = await stack.engine.wait_for_session(1, timeout=5)
        update = await second.wait_for_client_event("session.update")
        assert update["session"]["instructions"]
        # The conversation goes on in the new session: the caller's next turn is answered and heard.
        await second.wait_for_server_event("response.done", timeout=8)
        await call.wait_bot_audio(400 * 3 - 20, timeout=5)
        # Before that, the new session was told what was said and heard so far, in order.
        seeded = [e for e in second.client_events if e["type"] == "conversation.item.create"]
        texts = [(e["item"]["role"], e["item"]["content"][0]["text"]) for e in seeded]
        assert len(texts) == 3
        assert texts[0] == ("assistant", "Reply number 1.")
        assert texts[1][0] == "user" and texts[1][1].startswith("caller audio")
        assert texts[2] == ("assistant", "Reply number 2.")
        # Nobody was waiting at the switch: the one response.create is the agent answering the caller's next turn,
        # once the new session committed it (the adaptive policy owns the turns; immediate/early leave it to VAD).
        creates = [e for e in second.client_events if e["type"] == "response.create"]
        committed = [e for e in second.server_events if e["type"] == "input_audio_buffer.committed"]
        assert len(creates) == 1 and committed and creates[0]["_t"] >= committed[0]["_t"]
        assert stack.metric("agent_model_reconnects_total", outcome="ok") == 1
        assert not call.ended.is_set()
        await call.hangup()
        assert second.protocol_errors == [] and call.protocol_errors == []


async def test_model_gone_for_good_ends_with_a_spoken_apology() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300), model_reconnect_attempts=2) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(8000)])
        session = await stack.engine.wait_for_session()
        await call.wait_bot_audio(280, timeout=5)
        await stack.engine.stop()  # the model endpoint disappears: drops every socket and refuses new ones
        await call.wait_ended(timeout=10)
        assert verbs(call)[:2] == ["Redirect", "Speak"]
        assert "sorry" in call.after_stream[1].text.lower()
        assert verbs(call)[-1] == "Hangup"
        assert record(stack, call).end_reason == "model_unavailable"
        assert stack.metric("agent_model_reconnects_total", outcome="gave_up") == 1
        assert session.protocol_errors == []


async def test_hangup_webhook_and_answer_with_event_hangup_end_the_session() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300)) as stack, httpx.AsyncClient() as http:
        call = await stack.carrier.place_call([CallerAudio.silence(8000)])
        await call.wait_bot_audio(250, timeout=5)
        started = time.monotonic()
        reply = await http.post(f"{stack.base_url}/vobiz/answer", data={"CallUUID": call.call_uuid, "Event": "Hangup"})
        assert reply.status_code == 200 and "<Response />" in reply.text
        await call.wait_ended(timeout=1.5)
        await stack.engine.wait_idle(timeout=1.5)
        assert time.monotonic() - started < 1.5
        # Idempotent, and a re-posted answer for a finished call never starts a second conversation.
        for _ in range(2):
            assert (
                await http.post(f"{stack.base_url}/vobiz/hangup", data={"CallUUID": call.call_uuid})
            ).status_code == 200
        again = await http.post(
            f"{stack.base_url}/vobiz/answer", data={"CallUUID": call.call_uuid, "Event": "StartApp"}
        )
        assert "<Hangup" in again.text and "<Stream" not in again.text
        assert len(stack.engine.sessions) == 1
        status = await http.post(
            f"{stack.base_url}/vobiz/stream-status",
            data={"CallUUID": call.call_uuid, "Event": "StopStream", "StreamID": call.stream_id},
        )
        assert status.status_code == 200
        assert any(e.kind == "stream_status" for e in record(stack, call).events)


async def test_prewarmed_session_is_closed_when_no_stream_arrives() -> None:
    async with running_stack(prewarm_timeout_s=0.4) as stack, httpx.AsyncClient() as http:
        reply = await http.post(f"{stack.base_url}/vobiz/answer", data={"CallUUID": "never-streams"})
        assert "<Stream" in reply.text
        session = await stack.engine.wait_for_session()
        await session.wait_for_client_event("response.create")  # the greeting was requested ahead of time
        await stack.engine.wait_idle(timeout=3)
        assert any(e.kind == "prewarm_expired" for e in stack.state.registry.records["never-streams"].events)


async def test_caller_hangup_closes_the_model_within_a_second() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=5000, speed=1.0)) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(8000)])
        await call.wait_bot_audio(300, timeout=5)
        started = time.monotonic()
        await call.hangup()
        await stack.engine.wait_idle(timeout=1.0)
        await wait_live_calls(stack, 0, timeout=1.0)
        assert time.monotonic() - started < 1.0
        # The socket closing ends the call; Vobiz's hangup webhook right after may refine the reason.
        assert record(stack, call).end_reason in ("carrier_closed", "caller_hangup")
        await call.wait_for(lambda: any(w.event == "Hangup" for w in call.webhooks), timeout=2)
        assert [w.status for w in call.webhooks if w.event == "Hangup"] == [200]


async def test_a_clean_close_while_the_bot_speaks_is_a_hang_up_not_a_drop() -> None:
    """Audio goes out every 20 ms, so a send often fails before the reader sees the close: the close code (1000)
    must still decide, so the call ends at once instead of waiting AGENT_STREAM_RESUME_S for a reconnect."""
    async with running_stack(RealtimeSimConfig(reply_ms=5000, speed=1.0), stream_resume_s=5.0) as stack:
        no_webhook = SimCallOptions(hangup_webhook=False)  # only the socket tells the agent
        calls = await asyncio.gather(
            *[stack.carrier.place_call([CallerAudio.silence(8000)], no_webhook) for _ in range(12)]
        )
        await asyncio.gather(*[c.wait_bot_audio(400, timeout=10) for c in calls])
        await asyncio.gather(*[c.hangup() for c in calls])
        await wait_live_calls(stack, 0, timeout=2.0)
        for c in calls:
            events = [e.kind for e in record(stack, c).events]
            assert "carrier_lost" not in events and record(stack, c).end_reason == "carrier_closed"


async def test_a_drop_while_the_bot_speaks_waits_for_vobiz_even_when_a_send_notices_first() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=5000, speed=1.0), stream_resume_s=0.5) as stack:
        no_webhook = SimCallOptions(hangup_webhook=False, reconnect_on_drop=False)  # Vobiz's retries all fail
        calls = await asyncio.gather(
            *[stack.carrier.place_call([CallerAudio.silence(8000)], no_webhook) for _ in range(12)]
        )
        await asyncio.gather(*[c.wait_bot_audio(400, timeout=10) for c in calls])
        await asyncio.gather(*[c.drop() for c in calls])  # no close frame: the network went away
        await wait_live_calls(stack, 0, timeout=5.0)
        for c in calls:
            events = [e.kind for e in record(stack, c).events]
            assert "carrier_lost" in events and "carrier_not_back" in events, events[-6:]


async def test_fifty_concurrent_calls_tear_down_with_nothing_left_running() -> None:
    def tasks_now() -> set[asyncio.Task[Any]]:
        return {t for t in asyncio.all_tasks() if not t.done()}

    baseline = tasks_now()
    async with running_stack(RealtimeSimConfig(reply_ms=600), stream_resume_s=1.0) as stack:
        after_start = tasks_now()
        gone_for_good = SimCallOptions(reconnect_on_drop=False)
        calls = await asyncio.gather(
            *[stack.carrier.place_call([CallerAudio.silence(6000)], gone_for_good) for _ in range(50)]
        )
        await asyncio.gather(*[c.wait_bot_audio(550, timeout=15) for c in calls])
        assert len(stack.state.registry.live) == 50
        assert stack.engine.connections_open == 50
        agent_calls = {c.call_uuid: stack.state.registry.live[c.call_uuid] for c in calls}
        half = len(calls) // 2
        await asyncio.gather(*[c.hangup() for c in calls[:half]])  # callers hang up (socket, then webhook)
        await asyncio.gather(*[c.drop() for c in calls[half:]])  # or the network drops them
        await stack.engine.wait_idle(timeout=5)
        await wait_live_calls(stack, 0, timeout=5)
        # Each call's model side was closed within a second of its carrier socket going away; a dropped socket
        # (no close handshake) is first given AGENT_STREAM_RESUME_S for Vobiz to reconnect it.
        resume_s = stack.settings.stream_resume_s
        for i, c in enumerate(calls):
            gone = next(e.t for e in c.timeline if e.kind in ("ws_closed", "ws_aborted"))
            ended = agent_calls[c.call_uuid].ended_monotonic
            allowed = 1.0 if i < half else resume_s + 1.0
            assert ended is not None and ended - gone < allowed
        hangups = [w.status for c in calls for w in c.webhooks if w.event == "Hangup"]
        assert hangups and set(hangups) == {200}  # webhooks racing the teardown are answered, never a 500
        await within(10, stack.state.records.flush())  # the records are the writer's to save, not a call's
        assert tasks_now() - after_start == set()
        assert stack.metric("agent_active_calls") == 0
    assert tasks_now() - baseline == set()


async def test_model_gone_with_a_human_configured_apologises_and_transfers() -> None:
    async with running_stack(
        RealtimeSimConfig(reply_ms=300), model_reconnect_attempts=1, transfer_number="+15550003333"
    ) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(8000)])
        await call.wait_bot_audio(280, timeout=5)
        await stack.engine.stop()
        await call.wait_ended(timeout=10)
        assert verbs(call) == ["Redirect", "Speak", "Dial"]
        assert "+15550003333" in str(call.after_stream[-1])


async def test_a_stalled_model_endpoint_bounds_the_caller_queue_then_apologises() -> None:
    """A model endpoint that accepts TCP but never answers the upgrade: audio piles up, bounded, and counted."""
    accepted: list[asyncio.StreamWriter] = []

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    hole = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = hole.sockets[0].getsockname()[1]
    try:
        async with running_stack(
            openai_base_url=f"http://127.0.0.1:{port}/v1",
            model_connect_timeout_s=1.5,
            model_reconnect_attempts=1,
            caller_queue_ms=400,
        ) as stack:
            call = await stack.carrier.place_call([CallerAudio.tone(300, 6000, 0.3)])
            await call.wait_ended(timeout=10)
            dropped = stack.metric("agent_caller_audio_dropped_ms_total")
            # About 1.5 s + 1.5 s of connect attempts, minus the 400 ms the queue may hold.
            assert 1500 < dropped < call.frames_sent * 20
            assert verbs(call)[:2] == ["Redirect", "Speak"]
            assert record(stack, call).end_reason == "model_unavailable"
    finally:
        for writer in accepted:
            writer.close()
        hole.close()
        await hole.wait_closed()


async def test_stream_without_a_prewarm_connects_at_start() -> None:
    from websockets.asyncio.client import connect

    from agent.protocol.vobiz import stream_token

    async with running_stack(RealtimeSimConfig(reply_ms=300)) as stack:
        token = stream_token.issue("test-stream-secret", "no-answer-webhook", 60)
        url = stack.base_url.replace("http", "ws") + f"/vobiz/stream?call=no-answer-webhook&token={token}"
        async with connect(url) as ws:
            await ws.send(start_message("no-answer-webhook", "s-9"))
            first = json.loads(await within(5, ws.recv()))
            assert first["event"] == "playAudio" and first["streamId"] == "s-9"
        session = stack.engine.sessions[0]
        assert [e["type"] for e in session.client_events[:2]] == ["session.update", "response.create"]
        await stack.engine.wait_idle(timeout=2)


@pytest.fixture
def no_interrupt_prompts(tmp_path: Path) -> Path:
    source = (ROOT / "prompts" / "default.md").read_text()
    (tmp_path / "default.md").write_text(source.replace("interrupt_response: true", "interrupt_response: false"))
    return tmp_path


async def test_without_server_interruption_the_agent_cancels_the_response_itself(no_interrupt_prompts: Path) -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=4000, speed=1.0), prompts_dir=no_interrupt_prompts) as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.after_bot_audio(800, CallerAudio.tone(300, 1500, 0.4)), CallerAudio.silence(3000)]
        )
        session = await stack.engine.wait_for_session()
        update = await session.wait_for_client_event("session.update")
        assert update["session"]["audio"]["input"]["turn_detection"]["interrupt_response"] is False
        await call.wait_clear(timeout=6)
        cancel = await session.wait_for_client_event("response.cancel", timeout=3)
        done = await session.wait_for_server_event("response.done", timeout=3)
        assert done["response"]["status"] == "cancelled" and cancel["response_id"] == done["response"]["id"]
        await call.hangup()
        assert session.protocol_errors == []


async def test_a_dropped_stream_that_vobiz_reconnects_continues_the_same_conversation() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=3000, speed=1.0), stream_resume_s=3.0) as stack:
        # A retried stream is not a finished call: Vobiz sends no hangup webhook for it.
        call = await stack.carrier.place_call([CallerAudio.silence(10000)], SimCallOptions(hangup_webhook=False))
        assert call.stream_attrs.get("maxRetries") == "3"
        session = await stack.engine.wait_for_session()
        await call.wait_bot_audio(800, timeout=5)
        first_stream = call.stream_id
        await call.drop()  # the network drops the stream mid-answer; Vobiz reconnects with a new streamId
        truncate = await session.wait_for_client_event("conversation.item.truncate", timeout=3)
        assert 700 < truncate["audio_end_ms"] < 1300
        assert call.stream_id != first_stream and call.start_message["start"]["callId"] == call.call_uuid
        await session.wait_for_client_event("response.create", lambda e: "left off" in json.dumps(e), timeout=3)
        await call.wait_for(lambda: call.bot_playing, timeout=5)  # the bot speaks again, on the new stream
        plays = [e for e in call.timeline if e.kind == "play_audio_received"]
        assert plays and not call.protocol_errors  # every playAudio after the drop named the new streamId
        assert len(stack.engine.sessions) == 1  # the same model session, not a new conversation
        assert stack.metric("agent_stream_resumes_total") == 1
        await call.hangup()


async def test_a_dropped_stream_that_never_comes_back_ends_the_call() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300), stream_resume_s=0.5) as stack:
        # No hangup webhook either: only the agent's own wait can end this call.
        gone = SimCallOptions(hangup_webhook=False, reconnect_on_drop=False)  # Vobiz's retries all fail
        call = await stack.carrier.place_call([CallerAudio.silence(5000)], gone)
        await call.wait_bot_audio(250, timeout=5)
        await call.drop()
        await stack.engine.wait_idle(timeout=3)
        events = [e.kind for e in record(stack, call).events]
        assert "carrier_lost" in events and "carrier_not_back" in events


async def test_model_session_rolls_over_before_its_cap_at_a_quiet_moment() -> None:
    # The engine enforces a 4 s cap, like OpenAI's 60 minutes; the agent rolls over at 2 s and never hits it.
    config = RealtimeSimConfig(reply_ms=1200, session_max_s=4.0)
    async with running_stack(config, model_session_max_s=2.0) as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.silence(3500), CallerAudio.tone(300, 600, 0.4), CallerAudio.silence(3500)]
        )
        first = await stack.engine.wait_for_session()
        second = await stack.engine.wait_for_session(1, timeout=6)
        update = await second.wait_for_client_event("session.update")
        assert update["session"]["instructions"]
        seeded = await second.wait_for_client_event("conversation.item.create")
        assert seeded["item"]["role"] == "assistant" and seeded["item"]["content"][0]["text"] == "Reply number 1."
        # The switch waited for the greeting to finish playing: the first session was closed after that.
        greeting_done = next(e for e in call.timeline if e.kind == "bot_audio_stopped")
        assert seeded["_t"] >= greeting_done.t - 0.05
        # The caller's next turn is answered by the fresh session, and heard without a hole.
        await second.wait_for_server_event("response.done", timeout=8)
        await call.wait_bot_audio(2350, timeout=5)
        assert not [e for e in first.server_events if e["type"] == "response.created" and e["_t"] > seeded["_t"]]
        assert stack.metric("agent_model_reconnects_total", outcome="rollover") >= 1
        assert stack.metric("agent_model_reconnects_total", outcome="ok") == 0
        assert stack.metric("agent_model_errors_total", code="session_expired") == 0
        assert call.protocol_errors == [] and second.protocol_errors == []
        await call.hangup()


async def test_a_session_that_expires_anyway_is_reconnected_with_its_history() -> None:
    config = RealtimeSimConfig(reply_ms=800, session_max_s=2.0)
    async with running_stack(config) as stack:  # no rollover configured short enough: the cap is hit
        call = await stack.carrier.place_call([CallerAudio.silence(6000)])
        second = await stack.engine.wait_for_session(1, timeout=6)
        seeded = await second.wait_for_client_event("conversation.item.create")
        assert seeded["item"]["content"][0]["text"] == "Reply number 1."
        assert stack.metric("agent_model_errors_total", code="session_expired") == 1
        assert stack.metric("agent_model_reconnects_total", outcome="ok") == 1
        assert not call.ended.is_set()
        await call.hangup()
