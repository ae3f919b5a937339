"""The `voice-agent loadtest` commands: ``run`` (the default) and ``merge``.

``voice-agent loadtest --url URL --calls N ...`` runs a test; ``voice-agent loadtest merge a.json b.json``
merges results from several generators. Both write the JSON and the HTML report and check ``--slo``
objectives: exit code 1 when one is missed, so the command can gate a deployment.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table

from agent.stats import percentile
from agent.testkit.analysis.call import CallMetrics
from agent.testkit.loadtest.outbound import OutboundConfig, OutboundError, parse_mix, run_outbound_load_test
from agent.testkit.loadtest.results import (
    CAMPAIGN_KEYS,
    RESPONSE_MEASURED_AT,
    LoadTestResults,
    ResultsError,
    load_results,
    merge_results,
)
from agent.testkit.loadtest.run import Progress, RunConfig, run_load_test
from agent.testkit.loadtest.slo import SloSpec, evaluate, parse_slo
from agent.testkit.scenarios import SCENARIOS

__all__ = ["loadtest"]


class _RunByDefault(click.Group):
    """A group whose first argument, when it is not a subcommand, belongs to ``run``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["run", *args]
        return super().parse_args(ctx, args)


class RichProgress(Progress):
    """A live bar on stderr with live/ok/failed counts and the running response-time p95."""

    def __init__(self, total: int, scenario: str, console: Console) -> None:
        super().__init__()
        self._scenario = scenario
        self._bar = RichBar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._bar.add_task(self._describe(), total=total)

    def _describe(self) -> str:
        p95 = percentile(self.response_ms, 95)
        return (
            f"[bold]{self._scenario}[/] live {self.active} ok {self.done - self.failed} "
            f"[red]failed {self.failed}[/] response p95 {'-' if p95 is None else f'{p95:.0f} ms'}"
        )

    def started(self) -> None:
        super().started()
        self._bar.update(self._task, description=self._describe())

    def finished(self, metrics: CallMetrics) -> None:
        super().finished(metrics)
        self._bar.update(self._task, description=self._describe(), completed=self.done)

    def display(self) -> RichBar:
        return self._bar


def _parse_slos(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[SloSpec]:
    try:
        return [parse_slo(v) for v in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _parse_ramp(ctx: click.Context, param: click.Parameter, value: str) -> float:
    text = value.strip().removesuffix("/s")
    try:
        ramp = float(text)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected calls per second, e.g. 5 or 5/s", ctx=ctx, param=param) from None
    if ramp <= 0:
        raise click.BadParameter("must be positive", ctx=ctx, param=param)
    return ramp


_MIX_HELP = "--outbound: how callees answer, e.g. person=80,machine=10,busy=5,no_answer=3,failed=2."


def _parse_mix_option(ctx: click.Context, param: click.Parameter, value: str) -> dict[str, float]:
    try:
        return parse_mix(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _parse_rate(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """`30/min`, `2/s` or `30` (a minute); 0: no limit."""
    amount, _, unit = value.strip().partition("/")
    per = {"": 1.0, "min": 1.0, "m": 1.0, "s": 60.0}.get(unit.strip())
    try:
        rate = float(amount) * (per or 0.0)
    except ValueError:
        rate = -1.0
    if per is None or rate < 0:
        raise click.BadParameter(f"{value!r}: use N/min or N/s", ctx=ctx, param=param)
    return rate


def _print_campaign(campaign: dict[str, Any], console: Console) -> None:
    table = Table(title=f"campaign {campaign['id']}: {campaign['state']}", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key in CAMPAIGN_KEYS:
        value = campaign.get(key.removeprefix("campaign_"))
        table.add_row(key.removeprefix("campaign_"), "-" if value is None else f"{value:g}")
    for outcome, count in sorted(campaign["outcomes"].items()):
        table.add_row(f"outcome {outcome}", str(count))
    console.print(table)
    for error in campaign.get("simulator_errors") or []:
        console.print(f"[yellow]simulated Vobiz:[/] {error}")


def _print_summary(results: LoadTestResults, console: Console) -> None:
    if results.campaign is not None:
        _print_campaign(results.campaign, console)
    s = results.summary
    table = Table(title=f"{results.scenario}: {s['calls']:.0f} calls, {s['failed']:.0f} failed", title_justify="left")
    for col in ("ms", "p50", "p95", "p99", "max", "n"):
        table.add_column(col, justify="right" if col != "ms" else "left")

    def cell(key: str) -> str:
        value = s.get(key)
        return "-" if value is None else f"{value:.0f}"

    for name in ("answer", "greeting", "response", "barge_in", "truncation_error", "playout_gap", "queue_max"):
        table.add_row(name, *(cell(f"{name}_{st}_ms") for st in ("p50", "p95", "p99", "max")), cell(f"{name}_count"))
    console.print(table)
    console.print(f"response = {RESPONSE_MEASURED_AT}")
    agent = [f"{k.removeprefix('agent_')} {s[k]:g}" for k in s if k.startswith("agent_") and s[k] is not None]
    if agent:
        console.print("agent: " + ", ".join(agent))
    if s["webhook_errors"]:
        first = next(e for c in results.calls for e in c.webhook_errors)
        console.print(f"[yellow]webhook errors:[/] {s['webhook_errors']:.0f}, e.g. {first}")
    if results.failures_by_cause:
        console.print("[red]failures:[/] " + ", ".join(f"{k} {v}" for k, v in results.failures_by_cause.items()))


def _finish(
    results: LoadTestResults, slos: list[SloSpec], out: Path | None, html: Path | None, console: Console
) -> None:
    """Check SLOs, write JSON and HTML, print the summary; exit 1 when an objective is missed."""
    from agent.testkit.loadtest.report import write_report  # matplotlib: loaded only when a report is written
    from agent.testkit.output import run_folder

    out = out or run_folder("loadtest") / "results.json"

    results.slo = evaluate(slos, results.summary)
    results.dump(out)
    report = html or out.with_suffix(".html")
    write_report(results, report)
    _print_summary(results, console)
    for r in results.slo:
        shown = "no data" if r.value is None else f"{r.value:g}"
        mark = "[green]met[/]" if r.ok else "[red]MISSED[/]"
        console.print(f"SLO {r.key} {r.op} {r.threshold:g}: {shown} {mark}")
    console.print(f"results: {out}\nreport:  {report}")
    if any(not r.ok for r in results.slo):
        sys.exit(1)


_out_option = click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Result JSON (default: var/out/loadtest-<time>/results.json); the HTML report goes next to it.",
)
_html_option = click.option("--html", type=click.Path(dir_okay=False, path_type=Path), help="HTML report path.")
_slo_option = click.option(
    "--slo",
    "slos",
    multiple=True,
    callback=_parse_slos,
    help="Objective KEY=MAX (or KEY>=MIN), e.g. response_p95_ms=1500, failure_rate=0.01; repeatable.",
)


@click.group("loadtest", cls=_RunByDefault)
def loadtest() -> None:
    """Load-test a running agent with synthetic calls (`run`, the default), or merge results (`merge`)."""


@loadtest.command("run")
@click.option("--url", required=True, help="Base URL of the agent, e.g. https://agent.example.com.")
@click.option("--calls", type=click.IntRange(min=1), default=10, show_default=True, help="Calls in total.")
@click.option("--concurrency", type=click.IntRange(min=1), default=10, show_default=True, help="Most calls at once.")
@click.option("--ramp", default="5", callback=_parse_ramp, show_default=True, help="Calls started per second (R/s).")
@click.option("--scenario", type=click.Choice(list(SCENARIOS)), default="normal", show_default=True)
@click.option("--turns", type=click.IntRange(min=1), default=3, show_default=True, help="Caller turns per call.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Seconds per long/silent call.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Generator processes.")
@click.option("--max-call-s", type=click.FloatRange(min=0, min_open=True), help="Fail calls running longer than this.")
@click.option("--caller-audio", type=click.Choice(["auto", "speech", "tone"]), default="auto", show_default=True)
@click.option("--jitter-ms", type=float, default=60.0, show_default=True, help="jitter scenario: max frame delay.")
@click.option("--loss", type=click.FloatRange(0, 1), default=0.02, show_default=True, help="jitter scenario: loss.")
@click.option("--auth-token", help="Vobiz auth token: sign webhooks like Vobiz.")
@click.option("--agent-pid", type=int, help="PID of a local agent: also sample its CPU/memory with psutil.")
@click.option("--seed", type=int, default=1, show_default=True, help="Varies barge-in offsets and impairments.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Live progress on stderr.")
@_out_option
@_html_option
@_slo_option
@click.option("--outbound", is_flag=True, help="Outbound: the agent dials a campaign against a simulated Vobiz.")
@click.option("--numbers", type=click.IntRange(min=1), help="--outbound: numbers in the campaign (default --calls).")
@click.option("--operator-token", envvar="AGENT_OPERATOR_TOKEN", help="--outbound: the agent's operator token.")
@click.option("--prompt", help="--outbound: the campaign's prompt (default: the agent's default prompt).")
@click.option("--dial-rate", callback=_parse_rate, default="0", show_default=True, help="--outbound: dials/min cap.")
@click.option("--mix", callback=_parse_mix_option, default="person=1", show_default=True, help=_MIX_HELP)
@click.option("--max-attempts", type=click.IntRange(1, 20), default=1, show_default=True, help="--outbound.")
@click.option("--retry-delay", type=float, default=1.0, show_default=True, help="--outbound: seconds, doubling.")
@click.option("--ring-ms", type=float, default=300.0, show_default=True, help="--outbound: how long callees ring.")
@click.option("--sim-host", default="127.0.0.1", show_default=True, help="--outbound: the simulated Vobiz binds here.")
@click.option("--sim-port", type=int, default=8790, show_default=True, help="--outbound: ... on this port.")
@click.option("--auth-id", default="MA_LOADTEST", show_default=True, help="--outbound: the agent's VOBIZ_AUTH_ID.")
@click.option("--from", "from_number", default="+918000000001", show_default=True, help="--outbound: caller ID.")
def run(
    slos: list[SloSpec], out: Path | None, html: Path | None, progress: bool, outbound: bool, **options: Any
) -> None:
    """Run synthetic calls against --url and report answer, greeting, response and barge-in times.

    With --outbound the agent places the calls: start it with VOBIZ_API_URL=http://SIM-HOST:SIM-PORT/api/v1,
    VOBIZ_AUTH_ID=--auth-id and VOBIZ_AUTH_TOKEN=--auth-token; the load test plays Vobiz there, starts a
    campaign of --numbers through the agent's API and answers each call as the scenario's caller (or as --mix
    says), then reports the calls as an inbound run does plus the campaign's figures.
    """
    options["duration_s"] = options.pop("duration")
    outbound_keys = [
        *("numbers", "operator_token", "prompt", "dial_rate", "mix", "max_attempts", "retry_delay", "ring_ms"),
        *("sim_host", "sim_port", "auth_id", "from_number"),
    ]
    extra = {k: options.pop(k) for k in outbound_keys}
    console = Console(stderr=True)
    if not outbound:
        cfg = RunConfig(**options)
        live = RichProgress(cfg.calls, cfg.scenario, console) if progress else None
        _finish(asyncio.run(run_load_test(cfg, live)), slos, out, html, Console())
        return
    if extra["numbers"] is not None:
        options["calls"] = extra["numbers"]
    outbound_cfg = OutboundConfig(
        **options,
        operator_token=extra["operator_token"],
        prompt=extra["prompt"],
        rate_per_min=extra["dial_rate"],
        mix=extra["mix"],
        max_attempts=extra["max_attempts"],
        retry_delay_s=extra["retry_delay"],
        ring_ms=extra["ring_ms"],
        sim_host=extra["sim_host"],
        sim_port=extra["sim_port"],
        auth_id=extra["auth_id"],
        from_number=extra["from_number"],
    )
    persons = round(outbound_cfg.calls * outbound_cfg.mix.get("person", 0.0))
    live = RichProgress(max(persons, 1), f"outbound {outbound_cfg.scenario}", console) if progress else None
    try:
        results = asyncio.run(run_outbound_load_test(outbound_cfg, live))
    except OutboundError as exc:
        raise click.ClickException(str(exc)) from None
    _finish(results, slos, out, html, Console())


run.help = (
    (run.help or "") + "\n\n\b\nScenarios:\n" + "\n".join(f"  {s.name:<10} {s.description}" for s in SCENARIOS.values())
)


@loadtest.command("merge")
@click.argument("parts", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_out_option
@_html_option
@_slo_option
def merge(parts: tuple[Path, ...], out: Path | None, html: Path | None, slos: list[SloSpec]) -> None:
    """Merge result files from several generators (machines, pods) into one result and report."""
    try:
        results = merge_results([load_results(p) for p in parts])
    except ResultsError as exc:
        raise click.ClickException(str(exc)) from None
    _finish(results, slos, out, html, Console())
