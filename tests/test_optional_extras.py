"""The `sim` extra is optional: `voice-agent serve` never imports it, and works (with tones) where it is missing.

Each check runs in a fresh interpreter, since this test process has long imported everything. A missing extra is
simulated by an import hook that refuses its modules, as a production image without the extra would.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest

from agent.testkit.carrier import CallerAudio, CarrierSim
from agent.waiting import within
from tests.agent_process import clean_env, free_port, read_until

SIM_ONLY = ("matplotlib", "pocketsphinx", "espeakng_loader", "rich", "psutil", "agent.testkit")
"""Modules `serve` must not load: the sim extra's packages, and the test kit (simulators, load test, commands)."""
OPPORTUNISTIC = ("rich", "psutil")
"""Loaded by product dependencies when installed (httpx's CLI, OpenTelemetry's resource detector), each inside a
`try: import` that copes without them; checked with the extra blocked, where any hard need would fail."""

_BLOCK_SIM = textwrap.dedent(
    """
    import importlib.abc, sys

    class _NoSimExtra(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {"espeakng_loader", "pocketsphinx", "matplotlib", "rich", "psutil"}:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NoSimExtra())
    """
)


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=clean_env(**env), capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("blocked", [False, True], ids=["extra-installed", "extra-blocked"])
def test_serve_import_path_leaves_out_the_sim_extra_and_the_test_kit(blocked: bool) -> None:
    """`serve`'s whole import path (the app with its embedded engine, the CLI) in a fresh interpreter."""
    code = textwrap.dedent(
        """
        import json, sys
        import agent.web.app, agent.cli
        from agent.config import load_settings

        settings = load_settings()
        app = agent.web.app.create_app(settings, embedded_engine=settings.openai_api_key is None)
        serve = agent.cli.main.get_command(None, "serve")
        assert serve is not None
        print(json.dumps(sorted(sys.modules)))
        """
    )
    prefix = _BLOCK_SIM if blocked else ""
    done = _python(prefix + code, OPENAI_API_KEY="sk-test-not-used", OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    unwanted = SIM_ONLY if blocked else tuple(n for n in SIM_ONLY if n not in OPPORTUNISTIC)
    leaked = [m for m in loaded if any(m == name or m.startswith(name + ".") for name in unwanted)]
    assert leaked == []


def test_load_test_command_without_the_extra_fails_with_one_clear_line() -> None:
    code = _BLOCK_SIM + "from agent.cli import main\nmain(['loadtest', 'run', '--url', 'http://127.0.0.1:9'])\n"
    done = _python(code)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "needs the sim extra" in lines[0] and "vobiz-voice-agent[sim]" in lines[0]


async def test_serve_without_the_extra_answers_with_tones() -> None:
    """No OpenAI key and no sim extra: the embedded engine says so in one line and still answers the call."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    code = _BLOCK_SIM + "from agent.cli import main\nmain()\n"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", code, "serve", "--host", "127.0.0.1", "--port", str(port)),
        env=clean_env(PUBLIC_URL=base),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    carrier = CarrierSim(base)
    try:
        lines = await read_until(proc.stdout, "Uvicorn running on", timeout=30)
        notes = [line for line in lines if "replying with tones" in line]
        assert len(notes) == 1 and "vobiz-voice-agent[sim]" in notes[0], "".join(lines)
        assert not any("Traceback" in line for line in lines), "".join(lines)
        call = await carrier.place_call([CallerAudio.silence(4000)])
        await call.wait_bot_audio(500, timeout=15)  # the greeting, as a tone
        await call.hangup()
        assert call.protocol_errors == []
    finally:
        await carrier.aclose()
        if proc.returncode is None:
            proc.terminate()
            await within(30, proc.wait())
