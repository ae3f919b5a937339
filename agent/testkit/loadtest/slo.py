"""Service-level objectives on a load test's summary, so a run can gate a deployment by its exit code.

``key=value`` (or ``key<=value``) is an upper bound, ``key>=value`` a lower bound; keys are the summary's
(e.g. ``response_p95_ms``, ``barge_in_p99_ms``, ``failure_rate``, ``agent_cpu_mean_percent``). A requested
objective with no data (say, barge-in numbers from a run without barge-ins) counts as missed: a gate that
cannot see must not pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.testkit.loadtest.results import SUMMARY_KEYS, SloResult

__all__ = ["SloSpec", "evaluate", "parse_slo"]

_SPEC = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|=)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class SloSpec:
    key: str
    op: str  # "<=" or ">="
    threshold: float

    def holds(self, value: float | None) -> bool:
        if value is None:
            return False
        return value <= self.threshold if self.op == "<=" else value >= self.threshold


def parse_slo(text: str) -> SloSpec:
    """Raises ValueError with the valid keys when ``text`` is not ``key=value`` over a known key."""
    match = _SPEC.match(text)
    if match is None:
        raise ValueError(f"{text!r}: expected key=value, key<=value or key>=value, e.g. response_p95_ms=1500")
    key, op, raw = match.groups()
    if key not in SUMMARY_KEYS:
        raise ValueError(f"{text!r}: unknown key {key!r}; known keys: {', '.join(SUMMARY_KEYS)}")
    try:
        threshold = float(raw)
    except ValueError:
        raise ValueError(f"{text!r}: {raw!r} is not a number") from None
    return SloSpec(key, ">=" if op == ">=" else "<=", threshold)


def evaluate(specs: Sequence[SloSpec], summary: Mapping[str, float | None]) -> list[SloResult]:
    return [
        SloResult(key=s.key, op=s.op, threshold=s.threshold, value=summary.get(s.key), ok=s.holds(summary.get(s.key)))
        for s in specs
    ]
