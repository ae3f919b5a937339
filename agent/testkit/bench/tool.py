"""What every bench tool shares around its measurements: the entry point (uvloop, signals, the JSON and the
text report), the report header and the record of the machine it ran on."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from agent.testkit import procs

T = TypeVar("T")

LOAD_GC_THRESHOLDS = (20_000, 10, 10)
"""The collector's thresholds in the load generator's processes while they run calls. The default young-generation
threshold (700 allocations) ran a young collection every few ms at 100 calls, and each tenth of those an older
one: a few % of a core, and the full passes (tens of ms each) stalled every call's clock at once. Most of what a
call allocates is freed by reference counting long before 20,000 allocations have passed."""


@contextlib.contextmanager
def load_gc() -> Iterator[None]:
    """:data:`LOAD_GC_THRESHOLDS` for the duration, then the thresholds as they were."""
    before = gc.get_threshold()
    gc.set_threshold(*LOAD_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=procs.ROOT, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    return None


def machine_info() -> dict[str, Any]:
    """What a result depends on besides the code: recorded in every bench tool's JSON."""
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "commit": _git_commit(),
        "loop": type(asyncio.get_running_loop()).__module__,
    }


def cancel_on_signals() -> None:
    """SIGTERM/SIGHUP unwind the current task like Ctrl-C, so every `finally` runs and child processes stop."""
    main_task = asyncio.current_task()
    if main_task is not None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)


def run_async(main: Callable[[], Coroutine[Any, Any, T]], prog: str = "bench") -> T:
    """Run `main` on uvloop when installed (as the agent does); exit 130 when interrupted."""
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(main())
        return uvloop.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"[{prog}] interrupted; child processes stopped", file=sys.stderr)
        sys.exit(130)


def start_report(tool: str, args: argparse.Namespace, config: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """A bench tool's report header (its own settings, then the server options every tool shares) and the stem
    its logs are named after: bench/results/<tool>-<time>.json unless --out says otherwise."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or procs.BENCH_DIR / "results" / f"{tool}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = ("reply_ms", "speed", "vad_ms", "early_barge_in", "agent_env", "seed", "gc_probe")
    server = {k: getattr(args, k, None) for k in keys}
    report: dict[str, Any] = {
        "config": config | server,
        "machine": machine_info(),
        "started_at": dt.datetime.now().isoformat(timespec="seconds"),
        "out": str(out),
    }
    return report, out.with_suffix("")


def run_and_print(
    run: Callable[[], Coroutine[Any, Any, dict[str, Any]]], render: Callable[[dict[str, Any]], str], prog: str
) -> None:
    """Every bench tool's entry point: run, save the JSON where the report says, print the text."""
    report = run_async(run, prog)
    Path(report["out"]).write_text(json.dumps(report, indent=1, default=str))
    print(render(report))
