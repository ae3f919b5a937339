"""The README's run command: `voice-agent serve` on its embedded default answers a call end to end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from agent.simulation.carrier import CallerAudio, CarrierSim
from agent.waiting import within

READY_LINE = "Uvicorn running on"  # logged once the socket listens (after start-up)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh machine: no keys, and the agent's files in a throwaway folder."""
    skip = ("OPENAI_", "VOBIZ_", "AGENT_", "PUBLIC_URL", "DATABASE_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    workdir = tempfile.mkdtemp(prefix="agent-cli-")
    defaults = {"DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/agent.db", "AGENT_RECORDINGS_DIR": f"{workdir}/rec"}
    return env | defaults | extra


async def read_until(stream: asyncio.StreamReader, needle: str, timeout: float) -> list[str]:  # noqa: ASYNC109
    lines: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError("process exited before: " + needle + "\n" + "".join(lines))
            lines.append(raw.decode())
            if needle in lines[-1]:
                return lines


@dataclass
class AgentProcess:
    base_url: str
    proc: asyncio.subprocess.Process
    startup_lines: list[str]


@contextlib.asynccontextmanager
async def agent_process(**env: str) -> AsyncIterator[AgentProcess]:
    """`voice-agent serve` as its own process on the embedded default, ready once it listens; killed after."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env=clean_env(**({"PUBLIC_URL": base} | env)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    try:
        lines = await read_until(proc.stdout, READY_LINE, timeout=30)
        yield AgentProcess(base, proc, lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def serve_process() -> AsyncIterator[tuple[str, list[str]]]:
    async with agent_process() as agent:
        yield agent.base_url, agent.startup_lines


async def test_serve_without_keys_runs_the_embedded_engine(serve_process: tuple[str, list[str]]) -> None:
    """The README's run command: a caller hears the prompt's greeting, spoken, and intelligible."""
    from agent.simulation.speech.asr import recognize

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
