"""`voice-agent call` and `voice-agent demo`: a synthetic call gets answers, and its timeline tells the truth."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from agent.carrier.playout import loop_lateness
from agent.engine import RealtimeSimConfig
from agent.testkit.analysis.call import Truncation
from agent.testkit.carrier import SimCall
from agent.testkit.commands.call import call_command, run_synthetic_call
from agent.testkit.commands.demo import demo_command
from agent.testkit.scenarios import tone_line
from tests.harness import Stack, running_stack
from tests.test_console import mount_console

TOKEN = "synthetic-call-auth-token"
REPLY_MS = 1000


def has_tts() -> bool:
    try:
        importlib.import_module("agent.engine.speech.tts")
    except ImportError:
        return False
    return True


needs_tts = pytest.mark.skipif(not has_tts(), reason="agent.engine.speech.tts is not there yet")


async def invoke(args: list[str]) -> Result:
    """The command runs its own event loop, so it runs in a thread while this loop serves the agent."""
    return await asyncio.to_thread(CliRunner().invoke, call_command, args, catch_exceptions=False)


def read_stereo(path: Path) -> tuple[np.ndarray[Any, np.dtype[np.int16]], int]:
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 2 and wav.getsampwidth() == 2
        rate = wav.getframerate()
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    return frames, rate


def loud(samples: np.ndarray[Any, np.dtype[np.int16]], rate: int, start_ms: float, end_ms: float) -> bool:
    piece = samples[int(start_ms * rate / 1000) : int(end_ms * rate / 1000)].astype(np.float64)
    return bool(np.sqrt(np.mean(piece**2)) > 1000)


async def test_call_command_barges_in_gets_answers_and_records_a_true_timeline(tmp_path: Path) -> None:
    operator = "operator-token-for-the-call-command-0123456789"
    config = RealtimeSimConfig(reply_ms=REPLY_MS)
    async with running_stack(config, vobiz_auth_token=TOKEN, operator_token=operator) as stack:
        mount_console(stack.app)
        out = tmp_path / "call"
        args = ["--url", stack.base_url, "--tone", "300:700", "--tone", "400:600", "--barge-in", "500"]
        result = await invoke([*args, "--auth-token", TOKEN, "--out", str(out)])
        assert result.exit_code == 0, result.output
        record = json.loads(out.with_suffix(".json").read_text())
        # With the console's token the command prints the agent's own figures: what the console shows.
        agent_out = tmp_path / "agent-view"
        seen = await invoke([*args, "--auth-token", TOKEN, "--operator-token", operator, "--out", str(agent_out)])
        assert seen.exit_code == 0, seen.output
        viewed = json.loads(agent_out.with_suffix(".json").read_text())["metrics"]
        await stack.state.records.flush()
        stored = await stack.state.store.get_call(viewed["call_uuid"])
        assert stored is not None and viewed["agent_end_reason"] == stored.record.end_reason
        assert f"ended             {stored.record.end_reason}\n" in seen.output
        latencies = [t.latency_ms for t in stored.record.turns if t.speaker == "assistant" and t.latency_ms]
        assert viewed["agent_response_ms"] == [round(v, 1) for v in latencies] and len(latencies) == 2
        assert "(the agent's record, as on its console)" in seen.output
        # Unsigned webhooks are refused by this agent: the tool says why and exits non-zero.
        unsigned = await invoke(["--url", stack.base_url, "--out", str(tmp_path / "unsigned")])
    assert unsigned.exit_code == 1
    assert "answer_failed" in unsigned.output

    m = record["metrics"]
    assert record["version"] == 1 and m["ok"], m
    text = result.output
    for expected in ("answer webhook -> 200", "greeting", "barge-in clearAudio", "response latency", "caller_hangup"):
        assert expected in text
    assert f"recording         {out.with_suffix('.wav')}" in text

    # Who spoke when: greeting cut 500 ms in by the first tone; each tone answered by a full reply.
    greeting, first, second = m["answers"]
    assert greeting["kind"] == "greeting" and greeting["interrupted"]
    assert 450 <= greeting["heard_ms"] <= 650
    assert [a["kind"] for a in (first, second)] == ["response", "response"]
    assert all(REPLY_MS - 30 <= a["heard_ms"] <= REPLY_MS + 30 and not a["interrupted"] for a in (first, second))
    caller = m["caller"]
    assert [c["label"] for c in caller] == ["tone 300 Hz", "tone 400 Hz"]
    assert [round(c["end_ms"] - c["start_ms"], -1) for c in caller] == [700, 600]
    assert caller[0]["start_ms"] == pytest.approx(greeting["start_ms"] + 500, abs=45)
    assert caller[1]["start_ms"] > first["end_ms"]  # the caller waited for the answer
    # Latencies: the engine's VAD waits 500 ms of silence, 200 ms while the bot is paused on the caller (the first
    # tone talks over the greeting); clearAudio follows speech within a few frames.
    after_barge_in, normal = m["response_ms"]
    assert 150 <= after_barge_in <= 1500 and 450 <= normal <= 1500
    assert len(m["barge_in_ms"]) == 1 and 0 < m["barge_in_ms"][0] < 300
    assert 0 < m["answer_ms"] < 1000 and 0 < m["greeting_ms"] < 1000
    # The lead plus one playAudio: 200 ms, unless this loop was seen to stall (a busy machine), which deepens it.
    lead_ms = loop_lateness().lead_s(0.2, time.monotonic() - 60) * 1000
    # 40 ms of slack: on a loaded machine the simulated carrier's own playout ticks run late (326 ms seen in CI).
    assert m["queue_max_ms"] <= lead_ms + 100 + 40 and m["playout_gaps_ms"] == []

    # The stereo recording lines up with that timeline: caller left, bot right.
    frames, rate = read_stereo(out.with_suffix(".wav"))
    left, right = frames[:, 0], frames[:, 1]
    c0, c1 = caller
    assert loud(left, rate, c0["start_ms"] + 50, c0["end_ms"] - 50)
    assert not loud(left, rate, c0["end_ms"] + 50, c1["start_ms"] - 50)
    assert loud(right, rate, first["start_ms"] + 50, first["end_ms"] - 50)
    assert not loud(right, rate, greeting["end_ms"] + 60, first["start_ms"] - 60)
    assert len(frames) / rate * 1000 == pytest.approx(m["duration_ms"], abs=100)
    kinds = {e["kind"] for e in record["timeline"]}
    assert {"start_sent", "clear_received", "cleared_sent", "played_stream_sent", "ws_closed"} <= kinds


def engine_truncations(stack: Stack) -> Any:
    def get(call: SimCall) -> list[Truncation]:
        return [Truncation(t["_t"], t["audio_end_ms"]) for s in stack.engine.sessions for t in s.truncations]

    return get


async def test_truncation_error_compares_the_model_cut_with_what_the_carrier_played() -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=2000)) as stack:
        measured = await run_synthetic_call(
            stack.base_url,
            [tone_line(300, 600)],
            barge_in_ms=900,
            auth_token=None,
            max_duration_s=30,
            truncations=engine_truncations(stack),
        )
    m = measured.metrics
    assert m.ok, m.failure_detail
    (barge,) = m.barge_ins
    assert barge.truncated_ms is not None and barge.heard_ms is not None
    assert 850 <= barge.heard_ms <= 1100
    assert m.truncation_error_ms == [pytest.approx(barge.truncated_ms - barge.heard_ms)]
    assert abs(m.truncation_error_ms[0]) < 60


@needs_tts
async def test_spoken_lines_are_said_and_answered(tmp_path: Path) -> None:
    async with running_stack(RealtimeSimConfig(reply_ms=600)) as stack:
        out = tmp_path / "spoken"
        lines = ["What are your opening hours?", "Thank you."]
        result = await invoke(["--url", stack.base_url, "--say", lines[0], "--say", lines[1], "--out", str(out)])
    assert result.exit_code == 0, result.output
    m = json.loads(out.with_suffix(".json").read_text())["metrics"]
    assert [c["label"] for c in m["caller"]][:1] == [lines[0]]
    assert f'"{lines[0]}"' in result.output
    assert len(m["response_ms"]) == 2 and m["unanswered_turns"] == 0


def test_demo_starts_the_agent_and_places_one_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Run from an empty folder: the demo must write nothing but its output (it used to fill ./var/agent.db and
    # ./var/recordings, the records of whoever ran the tests).
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    for key in ("DATABASE_URL", "AGENT_RECORDINGS_DIR", "AGENT_SPOOL_DIR"):
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "demo" / "call"
    result = CliRunner().invoke(demo_command, ["--out", str(out), "--no-transcribe"], catch_exceptions=False)
    assert list(workdir.iterdir()) == []
    assert (out.parent / "agent.db").is_file()
    assert result.exit_code == 0, result.output
    assert "embedded offline engine" in result.output
    assert f"recording         {out.with_suffix('.wav')}" in result.output
    m = json.loads(out.with_suffix(".json").read_text())["metrics"]
    assert m["ok"] and m["answers"][0]["interrupted"]  # the demo caller interrupts the greeting
    assert len(m["response_ms"]) == 2 and len(m["barge_in_ms"]) == 1
    # The agent runs in-process, so the demo also knows what the model was told was heard.
    assert len(m["truncation_error_ms"]) == 1 and abs(m["truncation_error_ms"][0]) < 80
    # The agent's own figures are printed (what its console shows): its latencies and its end reason.
    assert m["agent_end_reason"] and f"ended             {m['agent_end_reason']}" in result.output
    assert len(m["agent_response_ms"]) == 2
    assert "response latency: caller stopped speaking → bot audio on the line" in result.output
