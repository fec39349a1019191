"""Medians, percentiles and ratios of small samples, without numpy."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between order statistics.

    With n samples, p99 lies between the two largest; for n < 100 it is close to the maximum.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how noisy a set of rounds was."""
    if not values:
        return math.nan
    m = median(values)
    return (max(values) - min(values)) / m if m else math.nan


def summary(values: Sequence[float]) -> dict[str, float | int]:
    return {"n": len(values), "median": median(values), "p99": percentile(values, 99),
            "min": min(values) if values else math.nan,
            "max": max(values) if values else math.nan}
