"""Interruptions while the bot talks: real interruptions, backchannels, coughs and echo, landing mid-answer.

The same events run against the bare relay and the agent in each interruption mode (immediate, early, adaptive),
one side after the other; per side the table gives recall and talk-over for real interruptions, and for false
ones how often the bot was cut for good, the pause the caller heard before it resumed, and the answer audio lost.
The test kit does the work (agent.testkit.interruptions); see bench/README.md.
"""

from __future__ import annotations

from agent.testkit.bench.tool import run_and_print
from agent.testkit.interruptions.report import parse_args, render, run


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_and_print(lambda: run(args), render, "interruptions")


if __name__ == "__main__":
    main()
