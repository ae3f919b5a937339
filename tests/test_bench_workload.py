"""The bench's caller side: the collector's thresholds while calls run, and back as they were afterwards."""

from __future__ import annotations

import gc

import pytest

from agent.testkit.bench.tool import LOAD_GC_THRESHOLDS, load_gc


def test_calls_run_with_the_load_thresholds_and_leave_the_collector_as_it_was() -> None:
    before = gc.get_threshold()
    with load_gc():
        assert gc.get_threshold() == LOAD_GC_THRESHOLDS
    assert gc.get_threshold() == before
    with pytest.raises(RuntimeError), load_gc():
        raise RuntimeError("a failed run")
    assert gc.get_threshold() == before
