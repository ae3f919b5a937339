"""`--agent-path`: the bench tools run the agent under test from another checkout, for an A/B of the agent alone.

`python -m agent` imports the package from its working directory ahead of PYTHONPATH, so the launcher must start it
there (a PYTHONPATH pointing at the other checkout ran this one's agent, silently)."""

from __future__ import annotations

from pathlib import Path

import httpx

from agent.testkit import procs

FAKE_AGENT = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

port = int(sys.argv[sys.argv.index("--port") + 1])


class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"the other checkout"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


async def test_the_agent_under_test_runs_from_the_checkout_it_is_given(tmp_path: Path) -> None:
    package = tmp_path / "agent"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(FAKE_AGENT)
    async with procs.agent_process(checkout=tmp_path) as agent, httpx.AsyncClient() as client:
        health = await client.get(f"{agent.base_url}/healthz")
    assert health.text == "the other checkout"
