"""Max sustainable concurrency: how many concurrent calls one agent process carries on this machine, vs the baseline.

"Sustains" means, for one short run of N concurrent calls (default 12 s each): every call completes, the carrier
never runs dry in the middle of a response (no playout gaps), every barge-in is cleared and the barge-in reaction
(engine `speech_started` -> carrier `clearAudio`) has p99 < 50 ms, and no caller turn waits in vain for the bot.

The bench steps N up (5, 10, 15, ... by default) for the agent and for the baseline relay of bench/calls.py,
interleaved (baseline N, agent N, baseline N + step, ...) so both sides see the same background load, and stops
a side at the first step that misses. The processes (an engine and a server per side) stay up across steps, as a
deployed agent would. A step that misses while the load generator itself could not keep real time (this
process's event loop or the engine's lagged, or the carrier's playout clock ran late) is reported as limited by
the generator, not by the server under test, and the side's maximum is then a lower bound.

Results: a row per step as it finishes, the result, and JSON at bench/results/capacity-<timestamp>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.testkit.bench import sides as kit
from agent.testkit.bench import tool
from agent.testkit.bench.capacity import render_result, run
from agent.testkit.bench.wire import CONTENT_TYPES, MULAW_8K


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/capacity.py", description="Max sustainable concurrent calls: agent vs a bare relay baseline."
    )
    parser.add_argument("--max-calls", type=int, default=60, help="highest step (default 60)")
    parser.add_argument("--step", type=int, default=5, help="calls added per step (default 5)")
    parser.add_argument("--start", type=int, default=None, help="first step (default: --step)")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each call in a step (default 12)")
    parser.add_argument("--budget", type=float, default=240.0, help="total wall-clock limit in seconds (default 240)")
    parser.add_argument("--content-type", default=MULAW_8K, choices=CONTENT_TYPES, help="stream audio format")
    parser.add_argument("--only", choices=("both", *kit.SIDES), default="both", help="run one side only")
    kit.add_server_args(parser)
    parser.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/capacity-<time>.json)")
    args = parser.parse_args(argv)
    if args.start is None:
        args.start = args.step
    if args.step < 1 or args.start < 1 or args.max_calls < args.start:
        parser.error("need --step >= 1, --start >= 1 and --max-calls >= --start")
    if args.seconds < 6:
        parser.error("need --seconds >= 6 (a call needs a few turns for barge-ins to happen)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tool.run_and_print(lambda: run(args), render_result, "capacity")


if __name__ == "__main__":
    main()
