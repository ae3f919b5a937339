"""Run a load test: calls started at a ramp, capped by concurrency, in this process or in worker processes.

One Python process carries a few dozen simulated calls per core (every call sends and plays 50 frames a second),
so ``workers`` > 1 splits the calls over processes: worker w takes calls w, w+W, w+2W... on the same ramp
schedule (anchored to one wall-clock start), and streams each finished call's metrics back over a pipe.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TextIO

from pydantic import BaseModel, Field

from agent.testkit.analysis.call import CallMetrics, failed_call
from agent.testkit.carrier import SimCallOptions
from agent.testkit.loadtest.agent_stats import AgentMonitor
from agent.testkit.loadtest.results import LoadTestResults, RunInfo, samples
from agent.testkit.runner import TimedCarrier, place_and_measure, run_ramp
from agent.testkit.scenarios import SCENARIOS, CallerVoice, ScenarioParams

__all__ = ["Progress", "RunConfig", "WorkerJob", "run_load_test"]

Emit = Callable[[dict[str, Any]], None]


class RunConfig(BaseModel):
    """Everything that defines a run; stored in the result file (without the auth token)."""

    url: str
    calls: int = Field(default=10, ge=1)
    concurrency: int = Field(default=10, ge=1)
    ramp: float = Field(default=5.0, gt=0)  # calls started per second
    scenario: str = "normal"
    turns: int = Field(default=3, ge=1)
    duration_s: float | None = Field(default=None, gt=0)
    workers: int = Field(default=1, ge=1)
    caller_audio: str = "auto"
    jitter_ms: float = Field(default=60.0, ge=0)
    loss: float = Field(default=0.02, ge=0, le=1)
    seed: int = 1
    max_call_s: float | None = Field(default=None, gt=0)  # cap per call (default: the scenario's own)
    answer_path: str = "/vobiz/answer"
    agent_pid: int | None = None
    auth_token: str | None = Field(default=None, exclude=True)

    def params(self) -> ScenarioParams:
        return ScenarioParams(turns=self.turns, duration_s=self.duration_s, jitter_ms=self.jitter_ms, loss=self.loss)


class Progress:
    """Live counts while calls run; the default prints nothing (the CLI plugs in a rich display)."""

    def __init__(self) -> None:
        self.active = self.done = self.failed = 0
        self.response_ms: list[float] = []

    def started(self) -> None:
        self.active += 1

    def finished(self, metrics: CallMetrics) -> None:
        self.active -= 1
        self.done += 1
        self.failed += 0 if metrics.ok else 1
        self.response_ms += samples([metrics], "response")

    def display(self) -> AbstractContextManager[Any]:
        return nullcontext()


async def _run_share(cfg: RunConfig, indices: Sequence[int], start_at: float, emit: Emit) -> None:
    """Place calls ``indices`` on the shared ramp schedule, at most ``concurrency`` of ours at once."""
    scenario = SCENARIOS[cfg.scenario]
    voice = CallerVoice(CallerVoice.resolve(cfg.caller_audio))
    share = max(1, round(cfg.concurrency * len(indices) / cfg.calls))
    options = SimCallOptions(auth_token=cfg.auth_token, record_frames=False)

    async def one(timed: TimedCarrier, i: int) -> None:
        emit({"kind": "started", "index": i})
        started = time.time()
        try:
            plan = scenario.plan(i, random.Random(cfg.seed * 1_000_003 + i), cfg.params(), voice)
            measured = await place_and_measure(
                timed,
                plan.script,
                options=options,
                drive=plan.drive,
                scenario=cfg.scenario,
                max_duration_s=cfg.max_call_s or plan.max_duration_s,
                on_connected=plan.on_connected,
                check=plan.check,
            )
            metrics = measured.metrics
        except Exception as exc:  # one broken call must not sink the run; it is reported as such
            metrics = failed_call("", "simulator_error", f"{type(exc).__name__}: {exc}", cfg.scenario)
        metrics.index, metrics.started_at = i, started
        emit({"kind": "finished", "metrics": metrics.model_dump(mode="json")})

    async with TimedCarrier(cfg.url, cfg.answer_path) as timed:
        await run_ramp(indices, lambda i: one(timed, i), start_at=start_at, interval_s=1 / cfg.ramp, concurrency=share)


async def _run_workers(cfg: RunConfig, start_at: float, handle: Emit) -> None:
    """Fan the calls out over ``cfg.workers`` processes; each streams its events back as JSON lines.

    Workers are fresh interpreters (``python -m agent.testkit.loadtest.worker``), not forks of this process with its
    event loop and threads, and not multiprocessing children that would re-run whatever script started us.
    The job, auth token included, goes over stdin so it never shows in a process list.
    """

    async def worker(w: int) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.testkit.loadtest.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**26,  # one line per finished call; a long call's metrics can be large
        )
        assert proc.stdin is not None and proc.stdout is not None
        job = WorkerJob(config=cfg.model_dump(mode="json"), auth_token=cfg.auth_token, worker=w, start_at=start_at)
        try:
            proc.stdin.write(job.model_dump_json().encode() + b"\n")
            await proc.stdin.drain()
            proc.stdin.close()
            async for line in proc.stdout:
                handle(json.loads(line))
            if await proc.wait() != 0:
                print(f"load-test worker {w} exited with code {proc.returncode}", file=sys.stderr)
        finally:
            if proc.returncode is None:  # we were cancelled (Ctrl-C): take the worker down with us
                proc.kill()
                await proc.wait()

    await asyncio.gather(*(worker(w) for w in range(cfg.workers)))


class WorkerJob(BaseModel):
    """What a worker process is told: the run, its share (every ``worker``-th call) and the shared start."""

    config: dict[str, Any]
    auth_token: str | None
    worker: int
    start_at: float

    async def run(self, events: TextIO) -> None:
        cfg = RunConfig.model_validate(self.config)
        cfg.auth_token = self.auth_token

        def emit(event: dict[str, Any]) -> None:
            events.write(json.dumps(event, separators=(",", ":")) + "\n")
            events.flush()

        await _run_share(cfg, range(self.worker, cfg.calls, cfg.workers), self.start_at, emit)


async def run_load_test(cfg: RunConfig, progress: Progress | None = None) -> LoadTestResults:
    """Run every call of ``cfg`` (in-process, or over ``cfg.workers`` processes) while watching the agent."""
    if cfg.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {cfg.scenario!r}; choose from {', '.join(SCENARIOS)}")
    progress = progress or Progress()
    calls: list[CallMetrics] = []

    def handle(event: dict[str, Any]) -> None:
        if event["kind"] == "started":
            progress.started()
        elif event["kind"] == "finished":
            metrics = CallMetrics.model_validate(event["metrics"])
            calls.append(metrics)
            progress.finished(metrics)

    monitor = AgentMonitor(cfg.url, cfg.agent_pid)
    started = time.time()
    with progress.display():
        await monitor.start()
        try:
            if cfg.workers == 1:
                await _run_share(cfg, range(cfg.calls), started, handle)
            else:
                await _run_workers(cfg, started + 2.0, handle)  # time for the workers to import and start
        finally:
            await monitor.stop()
    seen = {c.index for c in calls}
    for i in range(cfg.calls):
        if i not in seen:  # a worker died before reporting this call
            detail = f"worker process {i % cfg.workers} exited without reporting this call"
            calls.append(failed_call("", "simulator_error", detail, cfg.scenario).model_copy(update={"index": i}))
    calls.sort(key=lambda c: c.index if c.index is not None else -1)
    run = RunInfo(started_at=started, ended_at=time.time(), config=cfg.model_dump(mode="json"))
    return LoadTestResults(runs=[run], calls=calls, agent=monitor.stats).refresh()
