"""Small pure helpers for numbers: percentiles and rounding."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["percentile", "round1"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..1); NaN when empty."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(q * len(sorted_values) + 0.5 - 1e-9))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def round1(value: float | None) -> float | None:
    """``value`` to one decimal, None kept."""
    return None if value is None else round(value, 1)
