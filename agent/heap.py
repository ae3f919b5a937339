"""Keep the garbage collector's full passes short enough for real-time audio.

Start-up leaves ~200,000 long-lived objects (the openai SDK's event types, pydantic models, templates, the
embedded engine). A full collection walks all of them: about 100 ms on a small cloud core, half the 200 ms of
audio the carrier holds, and it stops every call at once. Frozen after start-up, they are never walked again;
they are still freed normally if their reference count drops to zero.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("agent.heap")


def freeze_startup_heap() -> int:
    """Collect once, then move every surviving object out of the collector's reach; returns how many."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("froze %d start-up objects: full collections skip them", frozen)
    return frozen
