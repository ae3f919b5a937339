"""The README's run command: `voice-agent serve` on its embedded default answers a call end to end."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.testkit.carrier import CallerAudio, CarrierSim
from agent.waiting import within
from tests.agent_process import agent_process, clean_env


@pytest.fixture
async def serve_process() -> AsyncIterator[tuple[str, list[str]]]:
    async with agent_process() as agent:
        yield agent.base_url, agent.startup_lines


async def test_serve_without_keys_runs_the_embedded_engine(serve_process: tuple[str, list[str]]) -> None:
    """The README's run command: a caller hears the prompt's greeting, spoken, and intelligible."""
    from agent.engine.speech.asr import recognize

    base, lines = serve_process
    assert any("embedded offline" in line for line in lines)
    carrier = CarrierSim(base)
    try:
        call = await carrier.place_call([CallerAudio.silence(8000)])
        await call.wait_bot_audio(1500, timeout=15)
        await call.wait_bot_silence(600, timeout=10)  # the whole greeting has played
        heard = (await asyncio.to_thread(recognize, call.played, call.played_rate or 8000)).lower().split()
        expected = ["hello", "thanks", "for", "calling", "how", "can", "i", "help", "you", "today"]
        assert sum(word in heard for word in expected) >= len(expected) // 2, heard
        await call.hangup()
        assert call.protocol_errors == []
    finally:
        await carrier.aclose()


async def test_invalid_configuration_stops_with_one_line_per_problem() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "serve",
        env=clean_env(PUBLIC_URL="ftp://nowhere", AGENT_PLAYOUT_LEAD_MS="1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await within(30, proc.communicate())
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert lines == [
        "invalid setting PUBLIC_URL: Value error, must start with http:// or https://",
        "invalid setting AGENT_PLAYOUT_LEAD_MS: Input should be greater than or equal to 40",
    ]


def test_calls_answered_by_the_offline_engine_cost_nothing(tmp_path: Path) -> None:
    from agent.config import Settings
    from agent.records.record import Usage
    from agent.web.app import create_app

    settings = Settings(
        insecure_webhooks=True,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/agent.db",
        recordings_dir=tmp_path / "recordings",
        spool_dir=tmp_path / "spool",
    )
    usage = Usage(input_text=1000, input_audio=2000, output_text=500, output_audio=4000)
    assert usage.cost_usd(settings.prices) > 0  # what OpenAI would charge
    offline = create_app(settings, embedded_engine=True).state.agent.settings
    assert usage.cost_usd(offline.prices) == 0


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ({"AGENT_LOG_LEVEL": "LOUD"}, "invalid setting AGENT_LOG_LEVEL: Unknown level: 'LOUD'"),
        ({"DATABASE_URL": "mysql://db/calls"}, "invalid setting DATABASE_URL: unsupported DATABASE_URL backend"),
        # Port 1 on loopback: nothing listens there, so the connection is refused at once.
        ({"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/calls"}, "cannot start: cannot reach the database at"),
    ],
)
async def test_bad_start_up_settings_stop_with_one_line(setting: dict[str, str], expected: str) -> None:
    """Start-up failures an operator can fix from one line, not a traceback out of logging or the lifespan."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "serve",
        "--port",
        "1",  # never bound: each case stops before serving
        env=clean_env(**setting),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await within(60, proc.communicate())
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines
