"""Entry point of one load-test worker process: read a job from stdin, print one JSON event per line."""

from __future__ import annotations

import asyncio
import sys

from agent.testkit.loadtest.run import WorkerJob


def main() -> None:
    events, sys.stdout = sys.stdout, sys.stderr  # stdout carries only events; anything else goes to stderr
    job = WorkerJob.model_validate_json(sys.stdin.readline())
    asyncio.run(job.run(events))


if __name__ == "__main__":
    main()
