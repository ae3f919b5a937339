"""The shared numbers: one percentile, and the intervals the experiment page puts on its figures."""

from __future__ import annotations

import re
from pathlib import Path

from agent.stats import bootstrap_percentile, percentile, proportion_interval

ROOT = Path(__file__).resolve().parent.parent


def test_one_percentile_everywhere() -> None:
    """Every figure (console, load test, bench) comes from agent.stats: no other module computes percentiles."""
    own = re.compile(r"def _?percentile\b|np\.percentile|np\.quantile|\.quantile\(")
    others = [
        str(path.relative_to(ROOT))
        for folder in ("agent", "bench")
        for path in (ROOT / folder).rglob("*.py")
        if path != ROOT / "agent" / "stats.py" and own.search(path.read_text())
    ]
    assert others == []
    assert percentile([100.0, 200.0, 300.0, 400.0], 50) == 250.0 and percentile([], 50) is None


def test_rate_intervals_stay_within_0_and_1_and_shrink_with_calls() -> None:
    none = proportion_interval(0, 10)
    assert none is not None and none.low == 0.0 and 0.2 < none.high < 0.35  # Wilson: not a zero-width interval
    small, big = proportion_interval(5, 10), proportion_interval(500, 1000)
    assert small is not None and big is not None
    assert small.low < big.low < 0.5 < big.high < small.high
    assert proportion_interval(0, 0) is None


def test_latency_intervals_resample_whole_calls() -> None:
    """Answers of one call move together: a call-level bootstrap gives a wider interval than pretending each
    answer was an independent call, and the same numbers on every run."""
    calls = [[500.0 + 100 * (i % 5)] * 4 for i in range(20)]  # each call's four answers are alike
    by_call = bootstrap_percentile(calls, 50)
    by_answer = bootstrap_percentile([[v] for c in calls for v in c], 50)
    assert by_call is not None and by_answer is not None
    assert by_call.value == by_answer.value == percentile([v for c in calls for v in c], 50)
    assert by_call.high - by_call.low >= by_answer.high - by_answer.low
    assert bootstrap_percentile(calls, 50) == by_call
    assert bootstrap_percentile([], 50) is None
