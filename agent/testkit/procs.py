"""Child processes for the bench and the tests: start with logs to a file, wait until they answer, always stop
them; and the one way to run the agent itself as a process (:func:`agent_process`)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]  # the repository (the bench runs from a checkout)
BENCH_DIR = ROOT / "bench"
# Settings that would change the agent's behaviour if inherited from the caller's shell (signatures, a real key,
# a real database).
_SCRUBBED_PREFIXES = ("OPENAI_", "VOBIZ_", "AGENT_", "PUBLIC_URL", "DATABASE_URL")
READY_LINE = "Uvicorn running on"  # uvicorn logs it (at INFO) once the socket listens


def free_port() -> int:
    """A loopback port that was free a moment ago (the agent needs its port up front for PUBLIC_URL)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def start(name: str, args: Sequence[str], env: Mapping[str, str], log_path: Path, *, cwd: Path | None = None) -> Child:
    """`python args...` in `cwd` (default this checkout: `-m agent` imports the package from there, ahead of
    PYTHONPATH and the installed one)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    popen = subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd or ROOT,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C in the terminal reaches the bench, which stops its children itself
    )
    return Child(name, popen, log_path, log)


def stop(child: Child, grace: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after `grace` seconds; True when it had to be killed."""
    killed = False
    try:
        if child.alive():
            child.popen.terminate()
            try:
                child.popen.wait(grace)
            except subprocess.TimeoutExpired:
                killed = True
                child.popen.kill()
                child.popen.wait(5)
    finally:
        child._log.close()
    return killed


async def wait_ready(child: Child, url: str, timeout: float = 30.0, interval: float = 0.1) -> None:  # noqa: ASYNC109
    """Poll `url` until it answers 200; fail early if the process exits, and after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if not child.alive():
                raise RuntimeError(
                    f"{child.name} exited with {child.popen.returncode} before it was ready:\n{child.log_tail()}"
                )
            try:
                resp = await http.get(url, timeout=1.0)
                if resp.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(interval)
    raise RuntimeError(f"{child.name} did not answer {url} within {timeout:g} s:\n{child.log_tail()}")


def agent_env(workdir: Path, port: int, settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """A fresh machine's environment for the agent on loopback `port`: no keys from the caller's shell, its
    database, recordings and spool in `workdir`, unsigned webhooks (the simulated carrier does not sign)."""
    defaults = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/agent.db",
        "AGENT_RECORDINGS_DIR": str(workdir / "recordings"),
        "AGENT_SPOOL_DIR": str(workdir / "spool"),
        "AGENT_INSECURE_WEBHOOKS": "true",
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    return clean_env(defaults | dict(settings or {}))


@dataclass
class AgentProcess:
    """`voice-agent serve` running as its own process (see :func:`agent_process`)."""

    child: Child
    base_url: str
    workdir: Path
    startup_lines: list[str] = field(default_factory=list)
    """The log up to the moment it answered /healthz (its start-up messages)."""
    notes: list[str] = field(default_factory=list)
    """What went wrong while stopping it (it had to be killed)."""

    def log_text(self) -> str:
        try:
            return self.child.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def send_signal(self, signum: int) -> None:
        self.child.popen.send_signal(signum)

    async def wait_exit(self) -> int:
        """The exit code, once the process has ended (waited for in a thread, the event loop keeps running)."""
        return await asyncio.to_thread(self.child.popen.wait)

    async def wait_for_log(self, needle: str, timeout: float = 10.0, interval: float = 0.02) -> str:  # noqa: ASYNC109
        """The log once it contains `needle`: the process writes it to a file, so it is read again until then."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if needle in text:
                return text
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{needle!r} not in the agent's log after {timeout:g} s:\n{text[-2000:]}")
            await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def agent_process(
    settings: Mapping[str, str] | None = None,
    *,
    log_path: Path | None = None,
    ready_timeout: float = 30.0,
    checkout: Path | None = None,
) -> AsyncIterator[AgentProcess]:
    """The agent as its own process: `serve` on a free loopback port with :func:`agent_env` plus `settings`
    (no OPENAI_API_KEY among them: the embedded offline engine), ready once /healthz answers; stopped (SIGTERM,
    then SIGKILL) and its scratch directory removed on exit. The log goes to `log_path` (default: the scratch
    directory); `checkout` runs another checkout's agent (an A/B)."""
    workdir = Path(tempfile.mkdtemp(prefix="agent-proc-"))
    port = free_port()
    args = ["-m", "agent", "serve", "--host", "127.0.0.1", "--port", str(port)]
    child = start("agent", args, agent_env(workdir, port, settings), log_path or workdir / "agent.log", cwd=checkout)
    agent = AgentProcess(child, f"http://127.0.0.1:{port}", workdir)
    try:
        await wait_ready(child, f"{agent.base_url}/healthz", timeout=ready_timeout)
        agent.startup_lines = agent.log_text().splitlines(keepends=True)
        yield agent
    finally:
        try:
            if await asyncio.to_thread(stop, child):
                agent.notes.append("the agent did not exit within 5 s of SIGTERM and was killed")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class CpuSnapshot:
    t: float
    cpu_s: dict[str, float]
    rss: dict[str, int]
    system_busy_s: float  # all cores, user + system + irq + steal time
    wait_s: dict[str, float] = field(default_factory=dict)  # main thread runnable but not running (run queue)
    runs: dict[str, float] = field(default_factory=dict)  # main thread: times it was put on a CPU


def run_queue_wait(pid: int) -> tuple[float, float]:
    """(seconds the process's main thread, its event loop, spent ready to run but waiting for a CPU, times it
    got one) from /proc/<pid>/schedstat (Linux with scheduler statistics; NaN elsewhere). Every wake-up waits a
    little; CPU contention shows up as a longer wait per run."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            fields = f.read().split()
        return int(fields[1]) / 1e9, float(fields[2])
    except (OSError, IndexError, ValueError):
        return math.nan, math.nan


class CpuMeter:
    """CPU time and RSS of a few named processes (psutil), plus machine-wide busy time."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def snapshot(self) -> CpuSnapshot:
        cpu: dict[str, float] = {}
        rss: dict[str, int] = {}
        wait: dict[str, float] = {}
        runs: dict[str, float] = {}
        for name, proc in self._procs.items():
            wait[name], runs[name] = run_queue_wait(proc.pid)
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    cpu[name] = float(times.user + times.system)
                    rss[name] = int(proc.memory_info().rss)
            except psutil.Error:
                cpu[name], rss[name] = float("nan"), 0
        return CpuSnapshot(time.monotonic(), cpu, rss, machine_busy_s(), wait, runs)


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy, all cores: user + system + nice + irq + softirq + steal."""
    sys_times = psutil.cpu_times()
    busy = float(sys_times.user + sys_times.system + getattr(sys_times, "irq", 0.0))
    busy += float(getattr(sys_times, "softirq", 0.0) + getattr(sys_times, "steal", 0.0))
    busy += float(getattr(sys_times, "nice", 0.0))
    return busy


def cpu_between(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
    """Percent of one core per process over [a, b], `machine` as percent of all cores together, and for each
    process `<name>_wait`: percent of the wall time its event loop was ready to run but waited for a CPU, and
    `<name>_wait_per_run_ms`: how long it waited on average each time it woke up."""
    wall = max(b.t - a.t, 1e-9)
    out = {name: (b.cpu_s[name] - a.cpu_s[name]) / wall * 100 for name in a.cpu_s}
    for name in a.wait_s:
        waited = b.wait_s.get(name, math.nan) - a.wait_s[name]
        runs = b.runs.get(name, math.nan) - a.runs.get(name, math.nan)
        out[f"{name}_wait"] = waited / wall * 100
        out[f"{name}_wait_per_run_ms"] = waited / runs * 1000 if runs > 0 else math.nan
    out["machine"] = (b.system_busy_s - a.system_busy_s) / wall / (psutil.cpu_count() or 1) * 100
    return out


class OtherProcesses:
    """Which processes outside the bench used the CPU over an interval (the machine may be shared)."""

    def __init__(self, exclude: set[int]) -> None:
        self._exclude = exclude | {os.getpid()}
        self._start: dict[int, tuple[float, str]] = {}
        self._t = time.monotonic()

    @staticmethod
    def _snapshot() -> dict[int, tuple[float, str]]:
        out: dict[int, tuple[float, str]] = {}
        for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
            times = proc.info.get("cpu_times")
            if times is None:
                continue
            cmd = " ".join(proc.info.get("cmdline") or []) or str(proc.info.get("name") or "?")
            out[proc.pid] = (float(times.user + times.system), cmd[:80])
        return out

    def start(self) -> None:
        self._start, self._t = self._snapshot(), time.monotonic()

    def top(self, limit: int = 3, min_pct: float = 10.0) -> list[tuple[float, str]]:
        """(% of a core, command line) of the busiest other processes since `start` (processes that started
        meanwhile count from 0; processes that ended meanwhile are missed)."""
        wall = max(time.monotonic() - self._t, 1e-9)
        used = []
        for pid, (cpu, cmd) in self._snapshot().items():
            if pid in self._exclude:
                continue
            pct = (cpu - self._start.get(pid, (0.0, ""))[0]) / wall * 100
            if pct >= min_pct:
                used.append((round(pct, 1), cmd))
        return sorted(used, reverse=True)[:limit]
