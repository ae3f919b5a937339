"""Opt-in probe (`--gc-probe`): the server under test logs its long garbage-collector pauses.

The bench puts this directory first on the server's PYTHONPATH, so Python imports this module at start-up. Every
collection longer than 20 ms writes ``GCPAUSE t=<monotonic at its end> gen=<generation> ms=<pause>`` to stderr (the
server's log), which the bench lines up with playout gaps: a stop-the-world pause longer than the agent's playout
lead empties the carrier's queue in every call at once. Python (3.11+) only; the cost is two clock reads per
collection. It shadows any other sitecustomize module, so it is off by default.
"""

import gc
import sys
import time
from typing import Any

_LONG_MS = 20.0
_started = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.monotonic()
        return
    now = time.monotonic()
    ms = (now - _started[0]) * 1000
    if ms > _LONG_MS:
        sys.stderr.write(f"GCPAUSE t={now:.4f} gen={info.get('generation')} ms={ms:.1f}\n")
        sys.stderr.flush()


gc.callbacks.append(_on_gc)
