"""Who may start or join a call: only an answered call starts a stream, and a stream URL is good for one stream
of one live call (a Vobiz reconnect, at any age of the call, is the only reuse)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from agent.engine import RealtimeSimConfig
from agent.testkit.carrier import CallerAudio, SimCallOptions
from agent.waiting import within
from tests.harness import running_stack, start_message, stream_url

RING = {"CallUUID": "call-out-1", "From": "+918000000002", "To": "+919000000001", "Direction": "outbound"}


async def refused(url: str) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url):
            pass
    return info.value.response.status_code


async def test_ring_gets_an_empty_response_and_no_model_session() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300)) as stack, httpx.AsyncClient() as http:
        ring = await http.post(f"{stack.base_url}/vobiz/answer", data=RING | {"Event": "Ring", "CallStatus": "ringing"})
        assert ring.status_code == 200 and "<Stream" not in ring.text and "<Response" in ring.text
        assert stack.state.registry.load() == 0  # nothing pre-warmed, no model session paid for
        for event in ("MachineDetection", "ring"):
            other = await http.post(f"{stack.base_url}/vobiz/answer", data=RING | {"Event": event})
            assert "<Stream" not in other.text
        assert stack.state.registry.load() == 0 and stack.engine.sessions == []
        answered = await http.post(
            f"{stack.base_url}/vobiz/answer", data=RING | {"Event": "StartApp", "CallStatus": "in-progress"}
        )
        assert "<Stream" in answered.text
        await stack.state.registry.shutdown()


async def test_an_outbound_call_rings_then_streams_with_one_model_session() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300)) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(1000)], SimCallOptions(direction="outbound"))
        await call.wait_bot_audio(250, timeout=5)
        assert [w.event for w in call.webhooks[:2]] == ["Ring", "StartApp"]
        assert "<Stream" not in call.webhooks[0].body
        await call.hangup()
        assert len(stack.engine.sessions) == 1


async def test_a_second_socket_cannot_take_over_a_live_call() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=2000, speed=1.0)) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(6000)])
        await call.wait_bot_audio(200, timeout=5)
        assert await refused(call.stream_url) == 403
        await call.wait_bot_audio(600, timeout=5)  # the caller's stream carried on undisturbed
        assert not call.ended.is_set() and len(stack.engine.sessions) == 1
        assert stack.metric("agent_stream_rejected_total", reason="stream_in_use") == 1
        await call.hangup()


async def test_a_stream_for_an_ended_call_is_refused_here_and_on_another_replica(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    async with running_stack(RealtimeSimConfig(reply_ms=300), database_url=database) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(800)])
        await call.wait_bot_audio(250, timeout=5)
        live = stack.state.registry.live[call.call_uuid]
        await call.hangup()
        await within(5, live.done.wait())
        assert await refused(call.stream_url) == 403
        assert stack.metric("agent_stream_rejected_total", reason="call_ended") == 1
        await stack.state.records.aclose()  # the record is in the shared database
        url_path = call.stream_url.split("/vobiz/stream", 1)[1]
        saved = await stack.state.store.get_call(call.call_uuid)
        assert saved is not None
    # Another replica (or this one after a restart) knows the call only from the stored records.
    async with running_stack(RealtimeSimConfig(reply_ms=300), database_url=database) as other:
        ws_base = other.base_url.replace("http://", "ws://")
        assert await refused(f"{ws_base}/vobiz/stream{url_path}") == 403
        assert other.metric("agent_stream_rejected_total", reason="call_ended") == 1
        assert other.engine.sessions == []


async def test_vobiz_can_reconnect_long_after_the_token_would_have_expired() -> None:
    """The token's expiry bounds only the first stream; a call older than it still takes its reconnect."""
    config = RealtimeSimConfig(reply_ms=3000, speed=1.0)
    async with running_stack(config, stream_resume_s=3.0, stream_token_ttl_s=1.0) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(10000)], SimCallOptions(hangup_webhook=False))
        await call.wait_bot_audio(1500, timeout=5)  # the token's 1 s window has passed
        first_stream = call.stream_id
        await call.drop()  # Vobiz reconnects with the same URL and a new streamId
        assert call.stream_id != first_stream and not call.ended.is_set()
        await call.wait_for(lambda: call.bot_playing, timeout=5)
        assert stack.metric("agent_stream_resumes_total") == 1
        assert stack.metric("agent_stream_rejected_total", reason="token_expired") == 0
        assert len(stack.engine.sessions) == 1
        await call.hangup()


async def test_a_token_holder_cannot_pump_audio_faster_than_a_phone_line() -> None:
    """10 s of audio sent at once: the allowance (2 s) reaches the model, the rest is dropped and counted."""
    async with running_stack(RealtimeSimConfig(reply_ms=300)) as stack, httpx.AsyncClient() as http:
        answer = await http.post(f"{stack.base_url}/vobiz/answer", data=RING | {"Event": "StartApp"})
        async with connect(stream_url(answer.text)) as ws:
            await ws.send(start_message("call-out-1", "s-1"))
            session = await stack.engine.wait_for_session()
            payload = base64.b64encode(b"\xff" * 160).decode()  # 20 ms of μ-law silence
            frame = json.dumps({"event": "media", "media": {"track": "inbound", "payload": payload}})
            for _ in range(500):  # 500 frames of 20 ms
                await ws.send(frame)
            appended = await _appended_ms(session, 5000, wait_s=1.0)
            assert 1500 <= appended <= 2600
            assert stack.metric("agent_inbound_dropped_total", reason="too_fast") >= 350


async def _appended_ms(session: Any, ceiling_ms: float, wait_s: float) -> float:
    """Caller audio the model session received (μ-law: 8 bytes a ms), once it stops growing for `wait_s`."""

    def total() -> float:
        sent = [e for e in session.client_events if e["type"] == "input_audio_buffer.append"]
        return sum(len(base64.b64decode(e["audio"])) for e in sent) / 8

    last = -1.0
    while total() != last and total() < ceiling_ms:
        last = total()
        try:
            await session.wait_for_client_event(
                "input_audio_buffer.append", start=len(session.client_events), timeout=wait_s
            )
        except TimeoutError:
            break
    return total()
