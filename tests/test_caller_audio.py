"""The caller's audio on its way to the model: every byte, in order, whichever way a frame goes (straight from
the reader, or through the queue while the model link is not ready)."""

from __future__ import annotations

import base64
import json

from agent.engine import RealtimeSimConfig, SimSession
from agent.testkit.carrier import CallerAudio, SimCall, SimCallOptions
from tests.harness import running_stack


def payloads(call: SimCall) -> list[str]:
    """The `media` payloads the carrier sent, in order."""
    messages = [json.loads(text) for text in list(call.sent_frames)]
    return [m["media"]["payload"] for m in messages if m["event"] == "media"]


def appended(session: SimSession) -> bytes:
    return b"".join(
        base64.b64decode(e["audio"]) for e in session.client_events if e["type"] == "input_audio_buffer.append"
    )


async def test_mulaw_caller_audio_reaches_the_model_byte_for_byte_while_the_bot_talks_and_while_it_is_silent() -> None:
    script = [CallerAudio.tone(300, 600, 0.3), CallerAudio.silence(1500), CallerAudio.tone(500, 600, 0.3)]
    async with running_stack(RealtimeSimConfig(reply_ms=500)) as stack:
        call = await stack.carrier.place_call(script, SimCallOptions(keep_sent_frames=True))
        session = await stack.engine.wait_for_session()
        await call.wait_script_done(timeout=10)
        sent = b"".join(base64.b64decode(payload) for payload in payloads(call))
        await session.wait_for_client_event(
            "input_audio_buffer.append", lambda e: len(appended(session)) >= len(sent), timeout=5
        )
        got = appended(session)
        assert len(sent) >= 8000 * 2.6  # (nearly) the whole script, as 8 kHz μ-law
        assert got[: len(sent)] == sent
        assert stack.metric("agent_inbound_dropped_total", reason="bad_audio") == 0
        await call.hangup()


async def test_bad_base64_in_a_mulaw_call_is_counted_and_dropped_and_the_audio_around_it_goes_on() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=300)) as stack:
        call = await stack.carrier.place_call([CallerAudio.silence(3000)], SimCallOptions(keep_sent_frames=True))
        session = await stack.engine.wait_for_session()
        await call.wait_bot_audio(250, timeout=5)
        before = len(payloads(call))
        media = next(m for m in map(json.loads, reversed(call.sent_frames)) if m["event"] == "media")
        for payload in ("***not base64***", "QUJD\n", 'QUJD"}', "é"):
            await call.send_raw(json.dumps(media | {"media": media["media"] | {"payload": payload}}))
        await call.wait_for(lambda: len(payloads(call)) >= before + 10, 3, "ten more frames")
        last = payloads(call)[-1]
        await session.wait_for_client_event("input_audio_buffer.append", lambda e: e["audio"] == last, timeout=3)
        assert stack.metric("agent_inbound_dropped_total", reason="bad_audio") == 4
        raw = [e["audio"] for e in session.client_events if e["type"] == "input_audio_buffer.append"]
        assert all(base64.b64decode(a, validate=True) for a in raw)  # nothing but valid base64 reached the model
        await call.hangup()
