"""Small, dependency-free statistics for benchmark samples.

Kept free of numpy so the pure helpers can be tested in milliseconds and read in a minute.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks.

    The same definition as numpy's default ("linear"), so figures can be checked against it.
    """
    if not values:
        raise ValueError("percentile of an empty sample")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def ratio(airlock: float, baseline: float) -> float:
    """airlock / baseline; infinity when the baseline is zero, so a table never divides by zero."""
    return airlock / baseline if baseline else math.inf


@dataclass(frozen=True)
class Latency:
    """The figures a latency table shows, all in milliseconds, plus the sample size."""

    n: int
    p50_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, ms: Sequence[float]) -> "Latency":
        """From latencies in milliseconds."""
        return cls(n=len(ms), p50_ms=percentile(ms, 50), p99_ms=percentile(ms, 99), mean_ms=sum(ms) / len(ms))

    def get(self, q: str) -> float:
        """"p50", "p99" or "mean", in milliseconds."""
        return {"p50": self.p50_ms, "p99": self.p99_ms, "mean": self.mean_ms}[q]


def spread(values: Sequence[float]) -> str:
    """min-max of a sample as text: how noisy the repetitions were."""
    return f"{min(values):.3f}-{max(values):.3f}"
