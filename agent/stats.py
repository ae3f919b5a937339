"""Shared numbers: the one percentile definition, the one latency label, and the uncertainty of a comparison.

The console, the CLI and the load-test report all show "response latency"; it means one thing everywhere
(`RESPONSE_LATENCY`), and every percentile of it is computed by `percentile` (numpy's linear interpolation,
which is also what PostgreSQL's `percentile_cont` computes).
"""

from __future__ import annotations

import math
import random
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
]

RESPONSE_LATENCY = "response latency: caller stopped speaking → bot audio on the line"
# Below this many calls in an arm a comparison is noise whatever the intervals say: the page says so instead.
MIN_CALLS_PER_ARM = 30
_Z95 = 1.959964


def percentile(values: Sequence[float], q: float) -> float | None:
    """The one percentile definition used everywhere (numpy's linear interpolation), rounded to 0.1 ms."""
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 1) if values else None


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


def bootstrap_percentile(values: Sequence[float], q: float, *, resamples: int = 1000, seed: int = 0) -> Interval | None:
    """Percentile `q` with a 95% percentile-bootstrap interval; seeded, so a page shows the same numbers on
    every load. Latencies are skewed (a long tail), where a normal approximation of a median is poor."""
    point = percentile(values, q)
    if point is None:
        return None
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(random.Random(seed).getrandbits(32))
    draws = np.percentile(rng.choice(data, size=(resamples, len(data)), replace=True), q, axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return Interval(point, round(float(low), 1), round(float(high), 1))
