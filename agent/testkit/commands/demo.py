"""`voice-agent demo`: the whole thing in one command, with nothing to set up.

Starts the agent on loopback with its embedded offline engine (exactly what `voice-agent serve` runs without
an OpenAI key), places one synthetic call that interrupts the greeting and asks a couple of questions, prints
the call's timeline and says where the recording is. Because the agent runs in this process, the demo can
also show what the agent told the model was heard at the barge-in (the truncation error).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import click
from fastapi import FastAPI

from agent.config import ConfigError, load_settings
from agent.observability import logs
from agent.testkit.analysis.call import Truncation, apply_agent_record
from agent.testkit.carrier import Segment, SimCall
from agent.testkit.commands.call import build_utterances, run_synthetic_call
from agent.testkit.local_server import serve_app
from agent.testkit.output import run_folder
from agent.testkit.recording import save_and_report
from agent.testkit.runner import Measured
from agent.testkit.scenarios import tone_line

__all__ = ["DEMO_LINES", "demo_command"]

DEMO_LINES = ("What are your opening hours?", "How much does the basic plan cost?")
_REPO_PROMPTS = Path(__file__).resolve().parents[3] / "prompts"


def _default_utterances() -> list[Segment]:
    """Spoken questions when eSpeak NG is available, tones otherwise (the offline engine hears both)."""
    try:
        return build_utterances((), DEMO_LINES, ())
    except click.UsageError:
        return [tone_line(350, 900), tone_line(450, 700)]


def _agent_truncations(app: FastAPI) -> Callable[[SimCall], list[Truncation]]:
    """What the agent believed was heard at each interruption, from its own call record."""

    def get(call: SimCall) -> list[Truncation]:
        record = app.state.agent.registry.records.get(call.call_uuid)
        if record is None:
            return []
        wall_to_mono = time.monotonic() - time.time()
        return [
            Truncation(t.ended_at + wall_to_mono, t.heard_ms)
            for t in record.turns
            if t.speaker == "assistant" and t.interrupted and t.heard_ms is not None and t.ended_at is not None
        ]

    return get


async def run_demo(utterances: Sequence[Segment], barge_in_ms: float | None, data_dir: Path) -> Measured:
    """One call against a private agent whose database, recordings and spool live in `data_dir`: a demo never
    writes into the operator's own records (`var/agent.db`), wherever it is run from."""
    holder: dict[str, FastAPI] = {}

    def make_app(base_url: str) -> FastAPI:
        from agent.web.app import create_app

        # A private agent on loopback for this one synthetic call: unsigned webhooks are expected.
        overrides: dict[str, object] = {
            "public_url": base_url,
            "openai_api_key": None,
            "openai_base_url": None,
            "insecure_webhooks": True,
            "database_url": f"sqlite+aiosqlite:///{(data_dir / 'agent.db').resolve()}",
            "recordings_dir": data_dir / "recordings",
            "spool_dir": data_dir / "spool",
        }
        if not Path("prompts").is_dir():
            overrides["prompts_dir"] = _REPO_PROMPTS
        holder["app"] = app = create_app(load_settings(**overrides), embedded_engine=True)
        return app

    async with serve_app(make_app) as base_url:
        click.echo(f"agent listening on {base_url} (embedded offline engine); placing a call...\n")
        measured = await run_synthetic_call(
            base_url,
            utterances,
            barge_in_ms=barge_in_ms,
            auth_token=None,
            max_duration_s=120,
            truncations=_agent_truncations(holder["app"]),
        )
        state = holder["app"].state.agent
        await state.registry.wait_idle(timeout_s=10)  # the agent has finished its record of the call
        record = state.registry.records.get(measured.metrics.call_uuid)
        if record is not None:
            apply_agent_record(measured.metrics, record.to_dict())
        await state.records.flush()
        return measured


@click.command("demo")
@click.option("--say", "lines", multiple=True, help="What the caller says (default: two questions).")
@click.option(
    "--barge-in",
    "barge_in_ms",
    type=float,
    default=1200.0,
    show_default=True,
    help="Interrupt the greeting this many ms into it; 0 waits for it to finish.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Writes OUT.wav and OUT.json (default: var/out/demo-<time>/call); the demo agent's own database and "
    "recordings go next to them.",
)
@click.option(
    "--transcribe/--no-transcribe",
    default=True,
    show_default=True,
    help="Recognise what the bot said, when the speech module is installed.",
)
@click.option("--log-level", default="ERROR", show_default=True, help="The agent's log level.")
def demo_command(
    lines: tuple[str, ...], barge_in_ms: float, out: Path | None, transcribe: bool, log_level: str
) -> None:
    """Start the agent on its embedded offline engine and place one synthetic call against it, end to end."""
    logs.configure(log_level)
    out = out or run_folder("demo") / "call"
    utterances = build_utterances((), lines, ()) if lines else _default_utterances()
    try:
        measured = asyncio.run(run_demo(utterances, barge_in_ms or None, out.parent))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    save_and_report(measured, out, transcribe)
    click.echo(f"  agent's records   {out.parent / 'agent.db'} (the demo agent's own database and recordings)")
    if not measured.metrics.ok:
        raise SystemExit(1)
