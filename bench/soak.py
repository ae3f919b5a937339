"""Soak: hours of calls compressed into minutes; the agent's memory and open file descriptors must stay flat.

Calls run back to back at a fixed concurrency (default 10) for `--minutes` (default 3) against the real agent
process: each call 8-12 s of the bench/calls.py workload (greeting, barge-ins, a normal turn), and the next one
starts as soon as it hangs up. Every 2 s the bench samples the agent process (RSS, open fds, threads, CPU time)
and its `agent_active_calls` gauge; after a warm-up (default 30 s, discarded) it fits a straight line to RSS and
fds and reports the slope per hour and the growth it projects over the run. Flat: projected growth < 2 % of RSS
and < 5 fds. The same is done, shorter (`--baseline-minutes`, default 1), for the baseline relay.

Every 30 s the bench also collects the engine's records of the sessions that ended and matches them with the
calls that ended (as bench/calls.py does), so call quality is tracked over time: barge-in reaction, playout gaps,
latency per hop. After the last call: the gauge must come back to 0, the fds to where they were before the first
call, and no model session may stay open.

Results: a table per side, and JSON at bench/results/soak-<timestamp>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.testkit.bench import sides as kit
from agent.testkit.bench import tool
from agent.testkit.bench.soak import run
from agent.testkit.bench.soak_report import render
from agent.testkit.bench.soak_state import SAMPLE_S


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/soak.py", description="Calls back to back for minutes: memory and fds of the agent must stay flat."
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="agent soak length (default 3)")
    parser.add_argument("--baseline-minutes", type=float, default=1.0, help="baseline relay soak (default 1; 0: skip)")
    parser.add_argument("--concurrency", type=int, default=10, help="calls up at any time (default 10)")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of samples discarded (default 30)")
    kit.add_server_args(parser)
    parser.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/soak-<time>.json)")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.minutes * 60 < args.warmup + 6 * SAMPLE_S:
        parser.error("need --concurrency >= 1 and --minutes long enough for a few samples after --warmup")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tool.run_and_print(lambda: run(args), render, "soak")


if __name__ == "__main__":
    main()
