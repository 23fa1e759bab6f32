"""Small summaries of timing samples (medians and percentiles; machines here are noisy)."""

from __future__ import annotations

import numpy as np


def pct(xs, q: float) -> float:
    xs = [x for x in xs if x is not None]
    return float(np.percentile(xs, q)) if xs else float("nan")


def summary(xs, scale: float = 1.0) -> dict:
    """n, p50, p95, mean, min and max of samples, each multiplied by ``scale`` (1000 for ms)."""
    xs = [x * scale for x in xs if x is not None]
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50": pct(xs, 50), "p95": pct(xs, 95), "mean": float(np.mean(xs)),
            "min": float(min(xs)), "max": float(max(xs))}


def ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")
