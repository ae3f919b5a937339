"""An event-loop stall inside the agent process (a long GC, a blocking call, a starved CPU).

The agent runs as its own process so the simulated carrier and the model keep real time while the agent's loop
is frozen: Vobiz plays out what it holds, then runs dry, and keeps sending caller audio and acknowledgements that
pile up in the socket. The stall is injected through the test-only `/debug/stall` route (AGENT_FAULT_INJECTION).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import pytest

from agent.engine import RealtimeServer, RealtimeSimConfig
from agent.testkit.analysis.call import analyze_call
from agent.testkit.carrier import CallerAudio, CarrierSim
from tests.agent_process import agent_process

STALL_MS = 700.0
LEAD_MS = 200.0  # the agent's default playout lead: what the carrier holds when the loop freezes


@pytest.fixture
async def engine() -> AsyncIterator[RealtimeServer]:
    server = RealtimeServer(RealtimeSimConfig(reply_ms=6000, speed=1.2))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_a_stall_costs_one_gap_loses_no_caller_audio_and_truncation_stays_honest(engine: RealtimeServer) -> None:
    env = {"OPENAI_API_KEY": "sk-test-not-a-real-key", "OPENAI_BASE_URL": engine.http_base_url}
    async with agent_process({"AGENT_FAULT_INJECTION": "true", **env}) as agent, CarrierSim(agent.base_url) as carrier:
        call = await carrier.place_call(
            [CallerAudio.after_bot_audio(2600, CallerAudio.tone(300, 1500, 0.4)), CallerAudio.silence(4000)]
        )
        session = await engine.wait_for_session()
        # Freeze just after the checkpoint at 1 s of the greeting was sent: the carrier acknowledges it during
        # the stall and the agent reads that acknowledgement late, together with ~35 caller frames.
        await call.wait_bot_audio(850, timeout=10)
        async with httpx.AsyncClient() as http:
            reply = await http.post(f"{agent.base_url}/debug/stall", params={"ms": STALL_MS}, timeout=10)
        assert reply.status_code == 200
        clear = await call.wait_clear(timeout=10)
        truncate = await session.wait_for_client_event("conversation.item.truncate", timeout=3)
        # What the model is told the caller heard is still what the carrier played, within 60 ms.
        assert truncate["audio_end_ms"] == pytest.approx(clear.played_ms_at_clear, abs=60)
        # The carrier ran dry once, for the stall less the lead it held; then pacing picked up again.
        gaps = analyze_call(call).playout_gaps_ms
        assert len(gaps) == 1 and gaps[0] == pytest.approx(STALL_MS - LEAD_MS, abs=150)
        # Every caller frame sent, those queued during the stall included, reached the model.
        sent_ms = call.frames_sent * 20
        await call.wait_for(
            lambda: len(session.input_pcm16()[0]) * 1000 / session.input_pcm16()[1] >= sent_ms - 40,
            timeout=3,
            what="caller audio appended",
        )
        # The frames read in one go after the stall reached the model together, not in one write each.
        appends = [e for e in session.client_events if e["type"] == "input_audio_buffer.append"]
        assert max(len(base64.b64decode(e["audio"])) for e in appends) >= 10 * 160
        await call.hangup()
        assert call.protocol_errors == [] and session.protocol_errors == []


async def test_fault_injection_is_off_by_default() -> None:
    async with agent_process() as agent, httpx.AsyncClient() as http:
        assert (await http.post(f"{agent.base_url}/debug/stall", params={"ms": 10})).status_code == 404
