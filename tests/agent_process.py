"""The agent as its own process (`python -m agent serve`), for tests that need real signals, a separate event
loop or the fresh-machine environment."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

from agent.testkit.procs import free_port

__all__ = ["READY_LINE", "AgentProcess", "agent_process", "clean_env", "free_port", "read_until"]

READY_LINE = "Uvicorn running on"  # logged once the socket listens (after start-up)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh machine: no keys, and the agent's files in a throwaway folder."""
    skip = ("OPENAI_", "VOBIZ_", "AGENT_", "PUBLIC_URL", "DATABASE_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    workdir = tempfile.mkdtemp(prefix="agent-cli-")
    defaults = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/agent.db",
        "AGENT_RECORDINGS_DIR": f"{workdir}/rec",
        "AGENT_INSECURE_WEBHOOKS": "true",  # as `make run`: a loopback agent for simulated, unsigned calls
    }
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
