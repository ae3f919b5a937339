"""Watch the agent's CPU, memory and live calls while a load test runs.

The agent's own ``/metrics`` (process_cpu_seconds_total, process_resident_memory_bytes, agent_active_calls)
works wherever the agent runs; with ``--agent-pid`` psutil also samples the local process directly.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from agent.testkit.loadtest.results import AgentSample, AgentStats
from agent.waiting import cancel_and_wait

__all__ = ["AgentMonitor", "parse_agent_metrics"]

_WANTED = {
    "process_cpu_seconds": "cpu_s",
    "process_resident_memory_bytes": "rss_bytes",
    "agent_active_calls": "active_calls",
}


def parse_agent_metrics(text: str) -> AgentSample:
    """The three numbers the load test needs from a Prometheus text page (absent ones stay None)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        field = _WANTED.get(family.name)
        if field is not None and family.samples:
            values[field] = sum(s.value for s in family.samples)
    return AgentSample(t=time.time(), **values)


class AgentMonitor:
    """Samples the agent every ``interval_s`` from the start of a run to its end, then waits for calls to drain."""

    def __init__(self, url: str, pid: int | None = None, interval_s: float = 1.0) -> None:
        self.metrics = AgentStats(source=f"metrics {url.rstrip('/')}/metrics")
        self.process = AgentStats(source=f"psutil pid {pid}") if pid is not None else None
        self._url = url.rstrip("/") + "/metrics"
        self._proc = psutil.Process(pid) if pid is not None else None
        self._interval = interval_s
        self._http = httpx.AsyncClient(timeout=5)
        self._task: asyncio.Task[None] | None = None

    @property
    def stats(self) -> list[AgentStats]:
        return [s for s in (self.metrics, self.process) if s is not None and (s.samples or s.errors)]

    async def sample(self) -> AgentSample | None:
        if self._proc is not None and self.process is not None:
            try:
                with self._proc.oneshot():
                    cpu = self._proc.cpu_times()
                    rss = self._proc.memory_info().rss
                self.process.samples.append(AgentSample(t=time.time(), cpu_s=cpu.user + cpu.system, rss_bytes=rss))
            except psutil.Error as exc:
                self._note(self.process, f"psutil: {exc}")
        try:
            resp = await self._http.get(self._url)
            resp.raise_for_status()
            sample = parse_agent_metrics(resp.text)
        except (httpx.HTTPError, ValueError) as exc:
            self._note(self.metrics, f"{self._url}: {type(exc).__name__}: {exc}")
            return None
        self.metrics.samples.append(sample)
        return sample

    @staticmethod
    def _note(stats: AgentStats, error: str) -> None:
        if error not in stats.errors:
            stats.errors.append(error)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.sample()

    async def start(self) -> None:
        await self.sample()
        self._task = asyncio.create_task(self._loop())

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Stop sampling once the agent's live calls are back to where they started (or after the timeout)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        first = next((s.active_calls for s in self.metrics.samples if s.active_calls is not None), None)
        deadline = time.monotonic() + drain_timeout_s
        while True:
            last = await self.sample()
            drained = last is None or first is None or (last.active_calls or 0) <= first
            if drained or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.25)  # the agent exposes no push signal; poll its gauge briefly
        await self._http.aclose()
