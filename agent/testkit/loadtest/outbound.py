"""`voice-agent loadtest --outbound`: a campaign of N numbers dialled by the agent against the simulated Vobiz.

The load test plays Vobiz's REST API on its own HTTP port (:meth:`OutboundSim.serve`); the agent under test is
pointed at it with `VOBIZ_API_URL` (and `VOBIZ_AUTH_ID` / `VOBIZ_AUTH_TOKEN` matching `--auth-id` /
`--auth-token`). The test starts a campaign through the agent's operator API (`POST /campaigns`), and the agent's
dialler places the calls: each make-call rings a simulated callee, who answers as a person running the load
test's caller scenario (measured exactly like an inbound call), or, per `--mix`, is an answering machine, busy,
does not answer or cannot be reached. The result is the inbound load test's (answer, greeting, response, barge-in,
agent resources) plus the campaign's figures: dials, redials, duplicates, outcomes, time to complete, dials a
minute achieved against the configured rate.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import httpx
from pydantic import Field

from agent.testkit.analysis.call import CallMetrics, analyze_call, failed_call
from agent.testkit.carrier import SimCall
from agent.testkit.loadtest.agent_stats import AgentMonitor
from agent.testkit.loadtest.results import LoadTestResults, RunInfo
from agent.testkit.loadtest.run import Progress, RunConfig
from agent.testkit.outbound import ANSWERS, Callee, OutboundSim
from agent.testkit.runner import TimedCarrier, drive_to_the_end
from agent.testkit.scenarios import SCENARIOS, CallerVoice

__all__ = ["OutboundConfig", "OutboundError", "parse_mix", "run_outbound_load_test"]


class OutboundError(RuntimeError):
    """The campaign could not be started or did not finish (the agent's answer says why)."""


class OutboundConfig(RunConfig):
    """An outbound run: `calls` is the number of numbers, `concurrency` the campaign's."""

    outbound: bool = True
    prompt: str | None = None  # default: the agent's AGENT_DEFAULT_PROMPT
    rate_per_min: float = Field(default=0.0, ge=0)
    mix: dict[str, float] = Field(default_factory=lambda: {"person": 1.0})
    max_attempts: int = Field(default=1, ge=1, le=20)
    retry_delay_s: float = Field(default=1.0, ge=0)
    ring_ms: float = Field(default=300.0, ge=0)
    sim_host: str = "127.0.0.1"
    sim_port: int = Field(default=8790, ge=0, le=65535)
    auth_id: str = "MA_LOADTEST"
    from_number: str = "+918000000001"
    timeout_s: float = Field(default=1800.0, gt=0)  # the whole campaign
    operator_token: str | None = Field(default=None, exclude=True)


def parse_mix(text: str) -> dict[str, float]:
    """`person=80,machine=10,busy=5,no_answer=5` (weights; any scale) -> shares summing to 1."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = part.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in ANSWERS:
            raise ValueError(f"{part!r}: use OUTCOME=WEIGHT with OUTCOME one of {', '.join(ANSWERS)}")
        try:
            weights[name] = float(raw)
        except ValueError:
            raise ValueError(f"{part!r}: {raw!r} is not a number") from None
        if weights[name] < 0:
            raise ValueError(f"{part!r}: weights cannot be negative")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("the mix needs a positive weight")
    return {k: v / total for k, v in weights.items() if v > 0}


def number_of(i: int) -> str:
    return f"+9170{i:08d}"


class _Callees:
    """How each number answers (fixed per number by the seed), and the measured calls of those who talk."""

    def __init__(self, cfg: OutboundConfig, timed: TimedCarrier, progress: Progress) -> None:
        self.cfg = cfg
        self.timed = timed
        self.progress = progress
        self.scenario = SCENARIOS[cfg.scenario]
        self.voice = CallerVoice(CallerVoice.resolve(cfg.caller_audio))
        self.index = {number_of(i): i for i in range(cfg.calls)}
        self.kinds = {i: self._kind(i) for i in range(cfg.calls)}
        self.calls: list[CallMetrics] = []

    def _kind(self, i: int) -> str:
        roll = random.Random(self.cfg.seed * 7_919 + i).random()
        for kind, share in self.cfg.mix.items():
            if roll < share:
                return kind
            roll -= share
        return next(reversed(self.cfg.mix))

    def __call__(self, to: str, nth: int) -> Callee:
        i = self.index.get(to)
        if i is None:  # not one of ours: nobody there
            return Callee("failed", ring_ms=self.cfg.ring_ms)
        kind = self.kinds[i]
        if kind != "person":
            return Callee(kind, ring_ms=self.cfg.ring_ms)  # type: ignore[arg-type]
        plan = self.scenario.plan(i, random.Random(self.cfg.seed * 1_000_003 + i), self.cfg.params(), self.voice)
        started = time.time()

        async def converse(call: SimCall) -> None:
            self.progress.started()
            if plan.on_connected is not None:
                plan.on_connected(call)
            limit = self.cfg.max_call_s or plan.max_duration_s
            verdict = await drive_to_the_end(call, plan.drive, limit, plan.check)
            sent_at = next((w.t for w in call.webhooks if w.event == "StartApp"), None)
            metrics = analyze_call(
                call,
                answer_ms=self.timed.answer_ms(call.call_uuid, sent_at),
                scenario=self.cfg.scenario,
                failure=verdict,
            )
            metrics.index, metrics.started_at = i, started
            self.calls.append(metrics)
            self.progress.finished(metrics)

        return Callee("person", ring_ms=self.cfg.ring_ms, script=plan.script, converse=converse)


async def _start_campaign(api: httpx.AsyncClient, cfg: OutboundConfig, name: str) -> str:
    body: dict[str, Any] = {
        "name": name,
        "csv": "number\n" + "".join(f"{number_of(i)}\n" for i in range(cfg.calls)),
        "from": cfg.from_number,
        "concurrency": cfg.concurrency,
        "rate_per_min": cfg.rate_per_min,
        "window": "00:00-00:00",  # all day: a load test is not held to calling hours
        "max_attempts": cfg.max_attempts,
        "retry_delay_s": cfg.retry_delay_s,
    }
    if cfg.prompt:
        body["prompt"] = cfg.prompt
    try:
        reply = await api.post("/campaigns", json=body)
    except httpx.HTTPError as exc:
        raise OutboundError(f"cannot reach the agent at {cfg.url}: {exc!r}") from None
    if reply.status_code in (401, 404) and "detail" not in reply.text:
        raise OutboundError(f"the agent refused the operator token (HTTP {reply.status_code}): set --operator-token")
    if reply.status_code != 201:
        raise OutboundError(f"the agent did not start the campaign (HTTP {reply.status_code}): {reply.text[:500]}")
    return str(reply.json()["id"])


async def _wait_done(api: httpx.AsyncClient, campaign_id: str, sim: OutboundSim, timeout_s: float) -> dict[str, Any]:
    """Poll the campaign's progress (the agent may be remote: its API is the only view) until it is over."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await api.get(f"/campaigns/{campaign_id}")
        reply.raise_for_status()
        progress: dict[str, Any] = reply.json()
        if progress["campaign"]["state"] in ("completed", "stopped", "paused"):
            return progress
        if time.monotonic() > deadline:
            raise OutboundError(f"the campaign did not finish in {timeout_s:g} s: {progress['states']}")
        if sim.refused and not sim.dials:
            raise OutboundError("the agent's make-call requests were refused: check VOBIZ_AUTH_ID/TOKEN")
        await asyncio.sleep(0.5)


def _figures(
    cfg: OutboundConfig, sim: OutboundSim, progress: dict[str, Any], created: float, completed: float
) -> dict[str, Any]:
    dials = len(sim.dials)
    received = [d.received for d in sim.dials]
    span_min = (max(received) - min(received)) / 60 if len(received) > 1 else 0.0
    outcomes: dict[str, int] = {k: int(v) for k, v in progress["outcomes"].items()}
    return {
        "id": progress["campaign"]["id"],
        "state": progress["campaign"]["state"],
        "numbers": cfg.calls,
        "dials": dials,
        "redials": dials - len(sim.per_number),
        "duplicate_dials": sum(max(0, n - cfg.max_attempts) for n in sim.per_number.values()),
        "missing_outcomes": cfg.calls - sum(outcomes.values()),
        "complete_s": round(completed - created, 2),
        "dials_per_min": round((dials - 1) / span_min, 1) if span_min > 0 else None,
        "rate_per_min": cfg.rate_per_min,
        "concurrency": cfg.concurrency,
        "live_max": sim.max_live,
        "outcomes": outcomes,
        "callees": dict(Counter(d.callee.answer for d in sim.dials)),
        "simulator_errors": sim.errors[:20],
    }


async def run_outbound_load_test(cfg: OutboundConfig, progress: Progress | None = None) -> LoadTestResults:
    if cfg.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {cfg.scenario!r}; choose from {', '.join(SCENARIOS)}")
    progress = progress or Progress()
    headers = {"Authorization": f"Bearer {cfg.operator_token}"} if cfg.operator_token else {}
    started = time.time()
    async with (
        TimedCarrier(cfg.url) as timed,
        httpx.AsyncClient(base_url=cfg.url.rstrip("/"), headers=headers, timeout=30) as api,
    ):
        callees = _Callees(cfg, timed, progress)
        sim = OutboundSim(callees, auth_token=cfg.auth_token, http=timed.http)
        monitor = AgentMonitor(cfg.url, cfg.agent_pid)
        with progress.display():
            async with sim.serve(cfg.sim_host, cfg.sim_port):
                await monitor.start()
                try:
                    created = time.time()
                    campaign_id = await _start_campaign(api, cfg, f"loadtest-{int(created)}-{cfg.seed}")
                    state = await _wait_done(api, campaign_id, sim, cfg.timeout_s)
                    completed = time.time()
                    await sim.wait_for(lambda: sim.idle, timeout=120, what="the last calls to end")
                finally:
                    await monitor.stop()
                    await sim.aclose()
    calls = sorted(callees.calls, key=lambda c: c.index if c.index is not None else -1)
    talked = {c.index for c in calls}
    for i, kind in callees.kinds.items():
        if kind == "person" and i not in talked:  # answered as a person, but no conversation came of it
            detail = "the callee answered but the call never reached a conversation"
            calls.append(failed_call("", "answer_failed", detail, cfg.scenario).model_copy(update={"index": i}))
    run = RunInfo(started_at=started, ended_at=time.time(), config=cfg.model_dump(mode="json"))
    results = LoadTestResults(runs=[run], calls=calls, agent=monitor.stats)
    results.campaign = _figures(cfg, sim, state, created, completed)
    return results.refresh()
