"""`voice-agent eval PROMPT --script FILE`: scripted synthetic conversations against a prompt, stored as a run.

Every call of a run carries `eval_run` and `eval_conversation` tags (passed on the answer URL), so the
agent stores them like any call and the console can put two runs side by side. Without `--url` the agent
runs in this process on the configured settings (its database, and the embedded offline engine when no
OpenAI key is set), so `voice-agent serve` on the same database shows the runs afterwards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode

import click
import yaml
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.simulation.call_metrics import CallMetrics
from agent.simulation.carrier import Segment
from agent.simulation.local_server import serve_app
from agent.simulation.synthetic_call import TimedCarrier, conversation, place_and_measure, spoken_line, tone_line


class Conversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    lines: list[str] = Field(min_length=1)
    barge_in_ms: float | None = Field(default=None, gt=0, description="interrupt the greeting this far into it")


class EvalScript(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversations: list[Conversation] = Field(min_length=1)


def load_script(path: Path) -> EvalScript:
    try:
        return EvalScript.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (OSError, yaml.YAMLError) as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"{path}: {problems}") from None


def _utterances(lines: Sequence[str], tones: bool) -> list[Segment]:
    """Caller lines spoken with eSpeak NG; `tones` stands in a beep per line (no speech engine needed)."""
    return [tone_line(440 + 40 * i, 700) if tones else spoken_line(text) for i, text in enumerate(lines)]


async def run_eval(
    url: str, prompt: str, script: EvalScript, run_id: str, *, tones: bool = False
) -> dict[str, CallMetrics]:
    """Place the script's conversations one after another; returns metrics by conversation name."""
    results: dict[str, CallMetrics] = {}
    async with TimedCarrier(url) as timed:
        for conv in script.conversations:
            query = urlencode({"prompt": prompt, "tag_eval_run": run_id, "tag_eval_conversation": conv.name})
            timed.answer_path = f"/vobiz/answer?{query}"  # the tags ride on the answer URL, as Vobiz would call it
            script_items = conversation(_utterances(conv.lines, tones), conv.barge_in_ms)
            results[conv.name] = (await place_and_measure(timed, script_items, scenario=conv.name)).metrics
    return results


async def _run_local(prompt: str, script: EvalScript, run_id: str, tones: bool) -> dict[str, CallMetrics]:
    from agent.app import create_app
    from agent.config import load_settings

    holder: dict[str, FastAPI] = {}

    def make_app(base_url: str) -> FastAPI:
        settings = load_settings(public_url=base_url, insecure_webhooks=True)  # private agent on loopback
        embedded = settings.openai_api_key is None and not settings.openai_base_url
        holder["app"] = app = create_app(settings, embedded_engine=embedded)
        return app

    async with serve_app(make_app) as base_url:
        results = await run_eval(base_url, prompt, script, run_id, tones=tones)
        state = holder["app"].state.agent
        await state.registry.wait_idle(timeout_s=10)  # every call has ended and handed over its record
        await state.records.flush()  # the run is in the database before we report it
        return results


@click.command("eval")
@click.argument("prompt")
@click.option("--script", "script_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", help="A running agent (default: run the agent here, on the configured settings).")
@click.option("--run-id", help="Name of this run (default: PROMPT-<time>).")
@click.option("--tones", is_flag=True, help="Beeps instead of spoken lines (no speech engine needed).")
def eval_command(prompt: str, script_path: Path, url: str | None, run_id: str | None, tones: bool) -> None:
    """Run the script's conversations against PROMPT and store them as one tagged run.

    The script is YAML: `conversations: [{name, lines: [...], barge_in_ms?}]`. Compare two runs in the
    console at /console/runs?a=RUN&b=OTHER. Exits 1 when any conversation failed.
    """
    script = load_script(script_path)
    run = run_id or f"{prompt}-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    if url:
        results = asyncio.run(run_eval(url, prompt, script, run, tones=tones))
    else:
        results = asyncio.run(_run_local(prompt, script, run, tones))
    failed = 0
    click.echo(f"eval run {run} (prompt {prompt}):")
    for name, metrics in results.items():
        failed += not metrics.ok
        responses = ", ".join(f"{ms:.0f}" for ms in metrics.response_ms) or "-"
        status = "ok" if metrics.ok else f"FAILED ({metrics.failure}: {metrics.failure_detail[:80]})"
        click.echo(f"  {name:<24} {status}  responses {responses} ms, barge-ins {len(metrics.barge_ins)}")
    click.echo(f"compare in the console: /console/runs?a={run}&b=<another run>")
    raise SystemExit(1 if failed else 0)
