"""Summaries of repeated measurements: every figure keeps its unit and how many runs it comes from."""

from __future__ import annotations

import statistics
from typing import Any


def figure(values: list[float], unit: str, digits: int = 3) -> dict[str, Any]:
    """Median, mean, std, min and max of ``values`` with their unit and count (``None`` entries are dropped)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"median": None, "mean": None, "std": None, "min": None, "max": None, "unit": unit, "runs": 0,
                "values": []}
    return {
        "median": round(statistics.median(vals), digits),
        "mean": round(statistics.fmean(vals), digits),
        "std": round(statistics.stdev(vals), digits) if len(vals) > 1 else 0.0,
        "min": round(min(vals), digits),
        "max": round(max(vals), digits),
        "unit": unit,
        "runs": len(vals),
        "values": [round(v, digits) for v in vals],
    }


def ratio(num: float | None, den: float | None, digits: int = 3) -> float | None:
    """``num / den`` rounded, or None when either is missing or the denominator is zero."""
    if num is None or not den:
        return None
    return round(num / den, digits)
