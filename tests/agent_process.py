"""The agent as its own process, for tests that need real signals, a separate event loop or the fresh-machine
environment: the test kit's launcher (:func:`agent.testkit.procs.agent_process`), plus helpers for tests that
run other commands (`voice-agent ...`) in that same environment."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from agent.testkit.procs import READY_LINE, AgentProcess, agent_env, agent_process, free_port

__all__ = ["READY_LINE", "AgentProcess", "agent_process", "clean_env", "free_port", "read_until"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh machine: no keys, and the agent's files in a throwaway folder."""
    env = agent_env(Path(tempfile.mkdtemp(prefix="agent-cli-")), free_port(), extra)
    if "PUBLIC_URL" not in extra:
        del env["PUBLIC_URL"]  # a command run this way picks its own port
    return env


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
