"""The bench's playout gaps, each put down to whoever caused it (engine, carrier simulator or agent).

The agent runs as its own process against an in-process engine and carrier; the bench's own analysis
(`hops.match_side`, `health.gap_causes`) is run on what they recorded, as `bench/calls.py` does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest

from agent.engine import RealtimeServer, RealtimeSimConfig, SimSession
from agent.testkit.analysis import health, hops
from agent.testkit.bench.simengine import summarize
from agent.testkit.bench.wire import MULAW_8K
from agent.testkit.bench.workload import tap_play_audio
from agent.testkit.carrier import CallerAudio, CarrierSim, SimCall
from tests.agent_process import agent_process

STALL_MS = 700.0
# Quiet noise: every caller frame is unique (the bench pairs the engine's session with the call by them), and too
# soft for the engine's VAD.
CALLER = [CallerAudio.noise(12_000, amplitude=0.01, seed=7)]


def _engine(speed: float) -> RealtimeServer:
    return RealtimeServer(RealtimeSimConfig(reply_ms=4000, speed=speed))


@pytest.fixture
async def fast_engine() -> AsyncIterator[RealtimeServer]:
    server = _engine(2.0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def slow_engine() -> AsyncIterator[RealtimeServer]:
    server = _engine(0.8)  # streams its audio slower than real time: the carrier has to wait for it
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _env(engine: RealtimeServer) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test-not-a-real-key",
        "OPENAI_BASE_URL": engine.http_base_url,
        "AGENT_INTERRUPTIONS": "immediate",
        "AGENT_FAULT_INJECTION": "true",
    }


def _causes(
    call: SimCall, plays: list[tuple[float, str]], session: SimSession, carrier_stalls: list[tuple[float, float]]
) -> list[str]:
    result = hops.summarize_call(0, call, plays, Counter())
    m = hops.match_side([result], {"sessions": [summarize(session)]}, MULAW_8K)
    assert m.session_call == {0: 0}, "the engine's session was not paired with the call"
    return health.gap_causes(m.gap_spans, m.gap_audio_sent, carrier_stalls, [])


async def test_a_stalled_agent_is_blamed_for_its_gap_and_a_stalled_carrier_is_not(
    fast_engine: RealtimeServer,
) -> None:
    async with agent_process(_env(fast_engine)) as agent, CarrierSim(agent.base_url) as carrier:
        call = await carrier.place_call(CALLER)
        plays = tap_play_audio(call)
        session = await fast_engine.wait_for_session()
        await call.wait_bot_audio(600, timeout=10)
        async with httpx.AsyncClient() as http:
            reply = await http.post(f"{agent.base_url}/debug/stall", params={"ms": STALL_MS}, timeout=10)
        assert reply.status_code == 200
        await call.wait_bot_audio(3000, timeout=10)
        await call.hangup()
    # The engine had sent the greeting long before the carrier needed it: the gap is the agent's.
    assert _causes(call, plays, session, []) == ["agent"]
    # Had the carrier simulator itself been frozen when it ran dry, the agent could not be blamed.
    runs = hops.summarize_call(0, call, plays, Counter()).runs
    dry_at = next(r.end for r in runs if r.ran_dry)
    assert _causes(call, plays, session, [(dry_at + 0.01, 100.0)]) == ["carrier"]


async def test_audio_the_engine_sends_too_slowly_is_the_engines_gap(slow_engine: RealtimeServer) -> None:
    async with agent_process(_env(slow_engine)) as agent, CarrierSim(agent.base_url) as carrier:
        call = await carrier.place_call(CALLER)
        plays = tap_play_audio(call)
        session = await slow_engine.wait_for_session()
        await call.wait_bot_audio(3000, timeout=15)
        await call.hangup()
    causes = _causes(call, plays, session, [])
    assert causes and set(causes) == {"engine"}
