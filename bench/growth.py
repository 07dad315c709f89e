"""How a cost grows with N: the exponent of a log-log fit, and the cost per unit at each N."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def exponent(costs: Mapping[int, float]) -> float | None:
    """The slope k of the least-squares line through (log N, log cost): cost grows as N^k (1: linear).

    None with fewer than two sizes, or a cost that is not positive (no logarithm).
    """
    points = [(math.log(n), math.log(cost)) for n, cost in costs.items() if n > 0 and cost > 0]
    if len(points) < 2 or len(points) != len(costs):
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def per_unit(costs: Mapping[int, float]) -> dict[int, float]:
    """The cost per unit (a job, a client) at each N."""
    return {n: cost / n for n, cost in costs.items() if n > 0}


def keyed(rows: Mapping[int, T] | Mapping[str, T]) -> dict[int, T]:
    """Rows by N, whether as measured or read back from JSON (whose object keys are strings)."""
    return {int(n): row for n, row in rows.items()}
