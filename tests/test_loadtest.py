"""`voice-agent loadtest`: every scenario at small scale with its report, worker processes, merging, SLO gates."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from agent.engine import RealtimeSimConfig
from agent.testkit.analysis.call import format_timeline
from agent.testkit.loadtest.cli import loadtest
from agent.testkit.loadtest.report import write_report
from agent.testkit.loadtest.results import SCHEMA, LoadTestResults, ResultsError, load_results
from agent.testkit.loadtest.run import RunConfig, run_load_test
from agent.testkit.loadtest.slo import evaluate, parse_slo
from agent.testkit.scenarios import SCENARIOS
from tests.harness import running_stack

PNG = re.compile(r'<img alt="([^"]+)" src="data:image/png;base64,[A-Za-z0-9+/=]{2000,}')


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(loadtest, args, catch_exceptions=False)


def plots(html: str) -> set[str]:
    return set(PNG.findall(html))


async def test_every_scenario_runs_at_small_scale_and_gets_a_report_with_plots(tmp_path: Path) -> None:
    # 2 s answers leave the agent time to react to interruptions even on a busy 2-core CI machine.
    async with running_stack(RealtimeSimConfig(reply_ms=2000)) as stack:
        common = {"url": stack.base_url, "calls": 2, "ramp": 2, "turns": 1, "duration_s": 10, "max_call_s": 60}
        configs = [RunConfig(scenario=name, caller_audio="tone", **common) for name in SCENARIOS]
        runs = await asyncio.gather(*(run_load_test(cfg) for cfg in configs))
        dropped = stack.metric("agent_inbound_dropped_total", reason="malformed_json")
    results = dict(zip(SCENARIOS, runs, strict=True))
    for name, res in results.items():
        assert res.failures_by_cause == {}, (name, [(c.failure, c.failure_detail) for c in res.calls])
        assert res.summary["calls"] == 2 and res.summary["greeting_count"] == 2, name
        assert all(c.answer_ms is not None and c.queue_max_ms is not None for c in res.calls), name

    def n(name: str, key: str) -> float:
        value = results[name].summary[key]
        assert value is not None, (name, key)
        return value

    def story(name: str) -> str:
        return "\n".join(line for c in results[name].calls for line in format_timeline(c))

    assert n("normal", "response_count") == 2 and n("normal", "barge_in_count") == 0, story("normal")
    assert n("barge-in", "barge_in_count") == 2 and n("barge-in", "barge_in_p99_ms") < 1000, story("barge-in")
    assert n("silent", "response_count") == 0 and n("silent", "barge_in_count") == 0
    assert all(c.duration_ms >= 10000 for c in results["long"].calls)
    assert n("long", "response_count") >= 2 and n("long", "barge_in_count") >= 1, story("long")
    # The caller hung up 200-800 ms into the 2000 ms answer: the caller heard only that much of it.
    assert all(c.end_reason == "caller_hangup" and 150 < c.answers[-1].heard_ms < 1000 for c in results["hangup"].calls)
    assert n("jitter", "response_count") == 2, story("jitter")
    assert n("malformed", "response_count") == 2, story("malformed")
    assert dropped >= 2  # garbage was sent and dropped, and (above) the calls went on
    assert all(n(name, "agent_cpu_mean_percent") >= 0 for name in SCENARIOS)

    for name, res in results.items():
        html = tmp_path / f"{name}.html"
        write_report(res, html)
        text = html.read_text()
        assert {"latency histograms", "latency over time", "agent resources", "call timelines"} <= plots(text), name
        assert f"Load test: {name}" in text


def test_cli_runs_with_worker_processes_and_gates_on_slos(tmp_path: Path) -> None:
    async def run_cli() -> Result:
        async with running_stack(RealtimeSimConfig(reply_ms=800)) as stack:
            args = ["--url", stack.base_url, "--calls", "4", "--concurrency", "4", "--ramp", "20/s"]
            args += ["--scenario", "hangup", "--workers", "2", "--caller-audio", "tone", "--out", str(part)]
            args += ["--slo", "failure_rate=0", "--slo", "agent_leaked_calls=0", "--slo", "response_p95_ms=5000"]
            return await asyncio.to_thread(invoke, args)

    part = tmp_path / "a.json"
    result = asyncio.run(run_cli())
    assert result.exit_code == 0, result.output
    assert "SLO failure_rate <= 0: 0 met" in result.output
    assert "SLO agent_leaked_calls <= 0: 0 met" in result.output
    raw = json.loads(part.read_text())
    assert raw["schema"] == SCHEMA and raw["version"] == 1
    assert [c["index"] for c in raw["calls"]] == [0, 1, 2, 3]
    assert "auth_token" not in raw["runs"][0]["config"]
    assert plots(part.with_suffix(".html").read_text()) >= {"latency histograms", "call timelines"}

    # Results from several generators merge into one; a missed objective fails the command.
    merged = tmp_path / "merged.json"
    missed = invoke(["merge", str(part), str(part), "--out", str(merged), "--slo", "response_p95_ms=1"])
    assert missed.exit_code == 1
    assert "SLO response_p95_ms <= 1:" in missed.output and "MISSED" in missed.output
    both = load_results(merged)
    assert len(both.calls) == 8 and len(both.runs) == 2 and both.summary["calls"] == 8
    assert both.slo[0].ok is False and merged.with_suffix(".html").exists()
    # An objective with no data (no barge-ins in this scenario) does not pass either.
    blind = invoke(["merge", str(part), "--out", str(tmp_path / "b.json"), "--slo", "barge_in_p99_ms=300"])
    assert blind.exit_code == 1 and "no data" in blind.output


def test_slo_specs_and_result_files_are_checked(tmp_path: Path) -> None:
    spec = parse_slo("response_p95_ms=1500")
    assert (spec.key, spec.op, spec.threshold) == ("response_p95_ms", "<=", 1500)
    floor = parse_slo("calls_per_s>=2")
    assert [r.ok for r in evaluate([spec, floor], {"response_p95_ms": 1499, "calls_per_s": 1.5})] == [True, False]
    with pytest.raises(ValueError, match="unknown key 'latency'"):
        parse_slo("latency=3")
    bad_key = invoke(["--url", "http://127.0.0.1:9", "--slo", "p95=1"])
    assert bad_key.exit_code == 2 and "unknown key" in bad_key.output

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something-else"}))
    with pytest.raises(ResultsError, match="not a load-test result file"):
        load_results(other)
    future = tmp_path / "future.json"
    future.write_text(
        LoadTestResults(runs=[], calls=[]).model_dump_json(by_alias=True).replace('"version":1', '"version":99')
    )
    refused = invoke(["merge", str(future)])
    assert refused.exit_code == 1 and "version 99" in refused.output


def test_outbound_mode_runs_a_campaign_through_the_agent_and_reports_it(tmp_path: Path) -> None:
    from agent.testkit.procs import free_port

    token, operator = "vobiz-token-for-the-outbound-load-test", "operator-token-for-the-load-test-0123"
    port = free_port()
    out = tmp_path / "outbound.json"

    async def run_cli() -> Result:
        async with running_stack(
            RealtimeSimConfig(reply_ms=800),
            vobiz_auth_id="MA_LOADTEST",
            vobiz_auth_token=token,
            vobiz_api_url=f"http://127.0.0.1:{port}/api/v1",
            operator_token=operator,
            campaign_poll_s=0.05,
            record_calls=False,
        ) as stack:
            args = ["--outbound", "--url", stack.base_url, "--numbers", "8", "--concurrency", "4", "--turns", "1"]
            args += ["--mix", "person=6,busy=1,no_answer=1", "--max-attempts", "2", "--retry-delay", "0.05"]
            args += ["--ring-ms", "50", "--sim-port", str(port), "--auth-token", token, "--operator-token", operator]
            args += ["--caller-audio", "tone", "--seed", "3", "--no-progress", "--out", str(out)]
            args += ["--slo", "campaign_duplicate_dials=0", "--slo", "campaign_missing_outcomes=0"]
            args += ["--slo", "failure_rate=0"]
            return await asyncio.to_thread(invoke, args)

    result = asyncio.run(run_cli())
    assert result.exit_code == 0, result.output
    assert "SLO campaign_duplicate_dials <= 0: 0 met" in result.output
    assert "dials_per_min" in result.output and "outcome person" in result.output
    results = load_results(out)
    campaign = results.campaign
    assert campaign is not None and campaign["state"] == "completed"
    persons = campaign["outcomes"].get("person", 0)
    others = campaign["numbers"] - persons
    assert persons >= 1 and sum(campaign["outcomes"].values()) == 8
    assert campaign["dials"] == persons + 2 * others and campaign["redials"] == others  # retried once, by the rules
    live_max = results.summary["campaign_live_max"]
    assert results.summary["campaign_duplicate_dials"] == 0 and live_max is not None and live_max <= 4
    # Each person who answered is measured like an inbound call.
    assert results.summary["calls"] == persons and results.summary["greeting_count"] == persons
    assert results.summary["response_count"] == persons
    assert 'id="campaign"' in out.with_suffix(".html").read_text()
    # Without the operator token the agent does not start a campaign, and the command says why.
    refused = invoke(["--outbound", "--url", "http://127.0.0.1:9", "--numbers", "1", "--no-progress"])
    assert refused.exit_code == 1 and "cannot reach the agent" in refused.output
