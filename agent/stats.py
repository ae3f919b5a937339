"""Shared numbers: the one percentile definition (and the one summary of a sample built on it), the one latency
label, and the uncertainty of a comparison.

The console, the CLI and the load-test report all show "response latency"; it means one thing everywhere
(`RESPONSE_LATENCY`), and every percentile of it is computed by `percentile` (numpy's linear interpolation,
which is also what PostgreSQL's `percentile_cont` computes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MIN_CALLS_PER_ARM",
    "RESPONSE_LATENCY",
    "Interval",
    "bootstrap_percentile",
    "percentile",
    "proportion_interval",
    "summary",
]

RESPONSE_LATENCY = "response latency: caller stopped speaking → bot audio on the line"
# Below this many calls in an arm a comparison is noise whatever the intervals say: the page says so instead.
MIN_CALLS_PER_ARM = 30
_Z95 = 1.959964


def percentile(values: Sequence[float], q: float, *, digits: int = 1) -> float | None:
    """The one percentile definition used everywhere (numpy's linear interpolation), rounded to 0.1 ms unless
    ``digits`` asks for finer (the bench keeps microseconds)."""
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), digits) if values else None


def summary(values: Sequence[float], *, digits: int = 1) -> dict[str, float | int | None]:
    """n, p50, p95, p99, max and mean of a sample (all None when it is empty), percentiles by :func:`percentile`."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    return {
        "n": len(values),
        **{f"p{q}": percentile(values, q, digits=digits) for q in (50, 95, 99)},
        "max": round(float(max(values)), digits),
        "mean": round(float(np.mean(np.asarray(values, dtype=np.float64))), digits),
    }


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% confidence interval."""

    value: float
    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high


def proportion_interval(successes: int, trials: int) -> Interval | None:
    """Wilson score interval of a rate (barge-ins per answer, calls ending one way): sound for small counts
    and rates near 0 or 1, where the plain normal approximation gives intervals below 0."""
    if trials <= 0:
        return None
    p = successes / trials
    z2 = _Z95**2
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = _Z95 * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials**2)) / (1 + z2 / trials)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_percentile(
    calls: Sequence[Sequence[float]], q: float, *, resamples: int = 1000, seed: int = 0
) -> Interval | None:
    """Percentile `q` of all values with a 95% percentile-bootstrap interval, resampling whole calls.

    `calls` holds each call's values (its answers' latencies): answers of one call share its network, prompt
    and caller, so resampling answers one by one would make the interval too narrow. Seeded, so a page shows
    the same numbers on every load; latencies are skewed (a long tail), where a normal approximation is poor.
    """
    groups = [np.asarray(c, dtype=np.float64) for c in calls if len(c)]
    point = percentile([v for c in calls for v in c], q)
    if point is None:
        return None
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for i in range(resamples):
        picked = rng.integers(0, len(groups), size=len(groups))
        draws[i] = np.percentile(np.concatenate([groups[j] for j in picked]), q)
    low, high = np.percentile(draws, [2.5, 97.5])
    return Interval(point, round(float(low), 1), round(float(high), 1))
