"""Early barge-in (AGENT_INTERRUPTIONS=early, or the older AGENT_EARLY_BARGE_IN=true): the bot goes silent on the caller's own speech onset, before the model's
VAD has said anything; the VAD then confirms it, or the bot carries on from exactly where it stopped.

The engine's VAD is slowed to 400 ms here, about what a caller on another continent waits for OpenAI's.
"""

from __future__ import annotations

import pytest

from agent.config import Settings
from agent.engine import RealtimeSimConfig
from agent.testkit.carrier import CallerAudio, ScriptItem, SimCall
from tests.harness import running_stack
from tests.signals import dominant_hz

SLOW_VAD_MS = 400


def onset_to_clear_ms(call: SimCall) -> float:
    """From the moment the caller's interrupting sound began to the carrier receiving clearAudio."""
    clear = call.clears[0]
    began = [e.t for e in call.timeline if e.kind == "caller_segment_started" and e.t <= clear.t]
    return (clear.t - began[-1]) * 1000


async def test_the_bot_is_silenced_on_the_onset_and_the_vad_confirms_the_barge_in() -> None:
    config = RealtimeSimConfig(reply_ms=5000, speed=1.2, vad_start_ms=SLOW_VAD_MS)
    async with running_stack(config, early_barge_in=True) as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.after_bot_audio(1500, CallerAudio.tone(300, 2000, 0.4)), CallerAudio.silence(3000)]
        )
        session = await stack.engine.wait_for_session()
        clear = await call.wait_clear(timeout=8)
        assert onset_to_clear_ms(call) < 200  # 100 ms of speech, a frame or two of transport: not the VAD's 400
        # The VAD confirms: the answer is cancelled, and the model forgets what the caller did not hear.
        truncate = await session.wait_for_client_event("conversation.item.truncate", timeout=3)
        assert truncate["audio_end_ms"] == pytest.approx(clear.played_ms_at_clear, abs=60)
        done = await session.wait_for_server_event("response.done", timeout=3)
        assert done["response"]["status"] == "cancelled"
        await call.wait_for(lambda: call.call_ms > (clear.t - call.timeline[0].t) * 1000 + 1000, timeout=3)
        assert len(call.clears) == 1  # the VAD's speech_started did not clear a second time
        assert call.played_ms - clear.played_ms_at_clear < 30  # and nothing of the answer came back
        barge = stack.state.registry.live[call.call_uuid].record.barge_ins
        assert len(barge) == 1 and barge[0].heard_ms == pytest.approx(truncate["audio_end_ms"], abs=1)
        assert stack.metric("agent_early_clears_total") == 1
        assert stack.metric("agent_early_clear_false_alarms_total") == 0
        await call.hangup()
        assert call.protocol_errors == [] and session.protocol_errors == []


async def test_agent_early_barge_in_true_is_an_alias_of_the_early_policy() -> None:
    settings = Settings(_env_file=None, early_barge_in=True)  # type: ignore[call-arg]
    assert settings.interruption_mode == "early"
    assert Settings(_env_file=None).interruption_mode == "adaptive"  # type: ignore[call-arg]
    explicit = Settings(_env_file=None, early_barge_in=True, interruptions="immediate")  # type: ignore[call-arg]
    assert explicit.interruption_mode == "immediate"


async def test_a_short_noise_silences_the_bot_briefly_then_it_resumes_where_it_stopped() -> None:
    config = RealtimeSimConfig(reply_ms=3000, speed=1.2, vad_start_ms=SLOW_VAD_MS)
    async with running_stack(config, early_barge_in=True, early_barge_in_confirm_ms=500) as stack:
        noise = CallerAudio.tone(300, 160, 0.4)  # too short for the model's VAD
        # A second burst ~0.4 s after the bot resumed: after a false alarm only the model's VAD may cut it.
        script: list[ScriptItem] = [
            CallerAudio.after_bot_audio(1000, noise),
            CallerAudio.silence(900),
            noise,
            CallerAudio.silence(8000),
        ]
        call = await stack.carrier.place_call(script)
        session = await stack.engine.wait_for_session()
        await call.wait_clear(timeout=6)
        # The greeting still plays to its end, and all of it: nothing lost at the cut, nothing played twice.
        await call.wait_bot_audio(2960, timeout=6)
        await call.wait_bot_silence(500, timeout=4)
        assert call.played_ms == pytest.approx(3000, abs=40)
        assert dominant_hz(call.played, 8000) == pytest.approx(600, abs=5)
        assert "conversation.item.truncate" not in session.client_event_types()
        assert not [e for e in session.server_events if e["type"] == "input_audio_buffer.speech_started"]
        assert stack.metric("agent_early_clear_false_alarms_total") == 1
        assert stack.metric("agent_barge_ins_total") == 0
        assert len(call.clears) == 1
        await call.hangup()
        assert call.protocol_errors == [] and session.protocol_errors == []


async def test_the_immediate_policy_waits_for_the_vad() -> None:
    config = RealtimeSimConfig(reply_ms=5000, speed=1.2, vad_start_ms=SLOW_VAD_MS)
    async with running_stack(config, interruptions="immediate") as stack:
        call = await stack.carrier.place_call(
            [CallerAudio.after_bot_audio(1500, CallerAudio.tone(300, 2000, 0.4)), CallerAudio.silence(3000)]
        )
        await call.wait_clear(timeout=8)
        assert onset_to_clear_ms(call) > 400  # the VAD's own 400 ms, then the clear
        assert stack.metric("agent_early_clears_total") == 0
        await call.hangup()
