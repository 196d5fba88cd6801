"""Small statistics: percentiles, medians and spreads of repeated runs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def spread(values: Sequence[float | None]) -> float | None:
    """(max - min) / median of the repeats, as a fraction; ``None`` below two values."""
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return None
    middle = statistics.median(present)
    return (max(present) - min(present)) / middle if middle else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator
