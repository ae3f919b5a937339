"""`voice-agent eval PROMPT --script FILE`: scripted synthetic conversations against a prompt, stored as a run.

Every call of a run carries `eval_run` and `eval_conversation` tags (passed on the answer URL), so the
agent stores them like any call and the console can put two runs side by side. Without `--url` the agent
runs in this process on the configured settings (its database, and the embedded offline engine when no
OpenAI key is set), so `voice-agent serve` on the same database shows the runs afterwards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click
import yaml
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.stats import RESPONSE_LATENCY
from agent.storage.call_evals import EVAL_VERDICT
from agent.testkit.analysis.call import CallMetrics, apply_agent_record, end_reason_text
from agent.testkit.carrier import Segment
from agent.testkit.judge import LineSpec, RubricVerdict, grade_rubric, judge_turns, turns_of
from agent.testkit.local_server import serve_app
from agent.testkit.recording import fetch_agent_record
from agent.testkit.runner import Measured, TimedCarrier, place_and_measure
from agent.testkit.scenarios import conversation, spoken_line, tone_line


class Conversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    lines: list[LineSpec] = Field(min_length=1)
    barge_in_ms: float | None = Field(default=None, gt=0, description="interrupt the greeting this far into it")
    rubric: str | None = Field(default=None, min_length=1, description="graded by a model when a key is set")

    @field_validator("lines", mode="before")
    @classmethod
    def _plain_lines(cls, value: Any) -> Any:
        """A line is either what the caller says, or `{say, must_say, must_not_say, must_call, must_end_call}`."""
        return [{"say": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @property
    def judged(self) -> bool:
        return any(line.has_assertions for line in self.lines)


class EvalScript(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversations: list[Conversation] = Field(min_length=1)


@dataclass
class Outcome:
    """One conversation of a run: the carrier's measurement, the agent's record, and the verdicts."""

    measured: Measured
    record: dict[str, Any] | None = None
    failures: list[str] = field(default_factory=list)
    note: str = ""  # why assertions could not be checked
    rubric: RubricVerdict | None = None

    @property
    def metrics(self) -> CallMetrics:
        return self.measured.metrics

    @property
    def passed(self) -> bool:
        """The call worked, every assertion held and the rubric (if graded) passed."""
        return (
            self.metrics.ok
            and not self.failures
            and not self.note
            and (self.rubric is None or self.rubric.passed is not False)
        )


def load_script(path: Path) -> EvalScript:
    try:
        return EvalScript.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (OSError, yaml.YAMLError) as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"{path}: {problems}") from None


def _utterances(lines: Sequence[LineSpec], tones: bool) -> list[Segment]:
    """Caller lines spoken with eSpeak NG; `tones` stands in a beep per line (no speech engine needed)."""
    return [tone_line(440 + 40 * i, 700) if tones else spoken_line(line.say) for i, line in enumerate(lines)]


async def place_conversations(
    url: str, prompt: str, script: EvalScript, run_id: str, *, tones: bool = False
) -> dict[str, Measured]:
    """Place the script's conversations one after another; the measured calls by conversation name."""
    results: dict[str, Measured] = {}
    async with TimedCarrier(url) as timed:
        for conv in script.conversations:
            query = urlencode({"prompt": prompt, "tag_eval_run": run_id, "tag_eval_conversation": conv.name})
            timed.answer_path = f"/vobiz/answer?{query}"  # the tags ride on the answer URL, as Vobiz would call it
            script_items = conversation(_utterances(conv.lines, tones), conv.barge_in_ms)
            results[conv.name] = await place_and_measure(timed, script_items, scenario=conv.name)
    return results


async def run_eval(
    url: str, prompt: str, script: EvalScript, run_id: str, *, tones: bool = False
) -> dict[str, CallMetrics]:
    """Place the script's conversations one after another; returns metrics by conversation name."""
    placed = await place_conversations(url, prompt, script, run_id, tones=tones)
    return {name: measured.metrics for name, measured in placed.items()}


def line_starts(measured: Measured) -> list[float]:
    """When each caller line started, as epoch seconds (the agent's record is on the wall clock)."""
    if measured.call is None:
        return []
    mono_to_wall = time.time() - time.monotonic()
    return [
        e.t + mono_to_wall
        for e in measured.call.timeline
        if e.kind == "caller_segment_started" and e.detail.get("kind") != "silence"
    ]


async def judge(
    conv: Conversation, measured: Measured, record: dict[str, Any] | str | None, *, grade: bool = True
) -> Outcome:
    """Check a conversation's assertions against the agent's record, and grade its rubric when there is one."""
    outcome = Outcome(measured)
    if isinstance(record, dict):
        outcome.record = record
        apply_agent_record(measured.metrics, record)
    if conv.judged:
        if outcome.record is None:
            outcome.note = f"assertions not checked: no record from the agent ({record or 'not available'})"
        else:
            starts = line_starts(measured)
            if len(starts) != len(conv.lines):
                outcome.failures.append(f"{len(conv.lines)} lines scripted but {len(starts)} were spoken")
            else:
                views = turns_of(outcome.record, starts)
                outcome.failures += judge_turns(conv.lines, views, outcome.record.get("end_reason"))
    if conv.rubric and grade and outcome.record is not None:
        outcome.rubric = await grade_rubric(conv.rubric, outcome.record)
    return outcome


async def _run_local(prompt: str, script: EvalScript, run_id: str, tones: bool) -> dict[str, Outcome]:
    from agent.config import load_settings
    from agent.web.app import create_app

    holder: dict[str, FastAPI] = {}

    def make_app(base_url: str) -> FastAPI:
        settings = load_settings(public_url=base_url, insecure_webhooks=True)  # private agent on loopback
        embedded = settings.openai_api_key is None and not settings.openai_base_url
        holder["app"] = app = create_app(settings, embedded_engine=embedded)
        return app

    async with serve_app(make_app) as base_url:
        placed = await place_conversations(base_url, prompt, script, run_id, tones=tones)
        state = holder["app"].state.agent
        await state.registry.wait_idle(timeout_s=10)  # every call has ended and handed over its record
        await state.records.flush()  # the run is in the database before we report it
        outcomes: dict[str, Outcome] = {}
        for conv in script.conversations:
            measured = placed[conv.name]
            record = state.registry.records.get(measured.metrics.call_uuid)
            if record is None and measured.call is not None:
                detail = await state.store.get_call(measured.metrics.call_uuid)
                record = detail.record if detail is not None else None
            outcomes[conv.name] = outcome = await judge(conv, measured, record.to_dict() if record else None)
            if record is not None and (
                conv.judged or (outcome.rubric is not None and outcome.rubric.passed is not None)
            ):
                # The verdict goes on the stored call, so the Prompts page shows it per prompt version.
                await state.store.add_tags(record.call_id, {EVAL_VERDICT: "pass" if outcome.passed else "fail"})
        return outcomes


async def _run_remote(
    url: str, prompt: str, script: EvalScript, run_id: str, tones: bool, operator_token: str | None
) -> dict[str, Outcome]:
    placed = await place_conversations(url, prompt, script, run_id, tones=tones)
    outcomes: dict[str, Outcome] = {}
    for conv in script.conversations:
        measured = placed[conv.name]
        record: dict[str, Any] | str | None = None
        if measured.call is not None and (conv.judged or conv.rubric):
            record = (
                await fetch_agent_record(url, measured.metrics.call_uuid, operator_token)
                if operator_token
                else "pass --operator-token to read it from the agent's console"
            )
        outcomes[conv.name] = await judge(conv, measured, record)
    return outcomes


@click.command("eval")
@click.argument("prompt")
@click.option("--script", "script_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", help="A running agent (default: run the agent here, on the configured settings).")
@click.option("--run-id", help="Name of this run (default: PROMPT-<time>).")
@click.option("--tones", is_flag=True, help="Beeps instead of spoken lines (no speech engine needed).")
@click.option(
    "--operator-token",
    envvar="AGENT_OPERATOR_TOKEN",
    help="With --url: the agent's console token, to check assertions against the agent's record.",
)
def eval_command(
    prompt: str, script_path: Path, url: str | None, run_id: str | None, tones: bool, operator_token: str | None
) -> None:
    """Run the script's conversations against PROMPT and store them as one tagged run.

    The script is YAML: `conversations: [{name, lines: [...], barge_in_ms?, rubric?}]`; a line is what the
    caller says, or `{say, must_say, must_not_say, must_call, must_end_call}` to judge the answer to it.
    Compare two runs in the console at /console/runs?a=RUN&b=OTHER; verdicts show per prompt version on
    /console/prompts. Exits 1 when any conversation failed or broke an assertion or its rubric.
    """
    script = load_script(script_path)
    run = run_id or f"{prompt}-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    if url:
        outcomes = asyncio.run(_run_remote(url, prompt, script, run, tones, operator_token))
    else:
        outcomes = asyncio.run(_run_local(prompt, script, run, tones))
    click.echo(f"eval run {run} (prompt {prompt}):")
    for line in report_lines(script, outcomes):
        click.echo(line)
    click.echo(f"compare in the console: /console/runs?a={run}&b=<another run>")
    raise SystemExit(0 if all(o.passed for o in outcomes.values()) else 1)


def report_lines(script: EvalScript, outcomes: Mapping[str, Outcome]) -> list[str]:
    """Per conversation: the call, its assertions and its rubric; response latency as the agent recorded it."""
    lines = [f"  ({RESPONSE_LATENCY})"]
    for conv in script.conversations:
        o = outcomes[conv.name]
        m = o.metrics
        status = "ok" if m.ok else f"FAILED ({m.failure}: {m.failure_detail[:80]})"
        figures = m.agent_response_ms if m.agent_response_ms is not None else m.response_ms
        source = "agent" if m.agent_response_ms is not None else "at the carrier"
        responses = ", ".join(f"{ms:.0f}" for ms in figures) or "-"
        lines.append(
            f"  {conv.name:<24} {status}  response latency {responses} ms ({source}), "
            f"barge-ins {len(m.barge_ins)}, ended {end_reason_text(m)}"
        )
        if conv.judged:
            if o.note:
                lines.append(f"    assertions: {o.note}")
            elif o.failures:
                lines += [f"    FAILED {f}" for f in o.failures]
            else:
                total = sum(
                    len(x.must_say) + len(x.must_not_say) + len(x.must_call) + x.must_end_call for x in conv.lines
                )
                lines.append(f"    assertions: all {total} passed")
        if o.rubric is not None:
            verdict = {True: "passed", False: "FAILED", None: "skipped"}[o.rubric.passed]
            lines.append(f"    rubric {verdict}: {o.rubric.note}")
    return lines
