"""What every benchmark shares: timing and the row format `python -m bench` prints."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def best_of(repeats: int, work: Callable[[], object]) -> float:
    """The shortest of `repeats` wall-clock runs, in seconds: the least disturbed by neighbours."""
    durations = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        durations.append(time.perf_counter() - started)
    return min(durations)


def row(
    benchmark: str,
    figure: str,
    value: float,
    baseline_name: str,
    baseline: float | None,
    goal: str,
    unit: str = "s",
) -> dict:
    """One line of the table; the ratio is value / baseline (lower is better for times)."""
    return {
        "benchmark": benchmark,
        "figure": figure,
        "value": value,
        "baseline_name": baseline_name,
        "baseline": baseline,
        "unit": unit,
        "ratio": value / baseline if baseline else None,
        "goal": goal,
    }


def p99(values: list[float]) -> float:
    """The 99th percentile (inclusive method: with few values, close to the largest)."""
    return statistics.quantiles(values, n=100, method="inclusive")[98]
