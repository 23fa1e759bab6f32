"""Bootstrap intervals for the eval's figures: how far a figure could move with other held-out prompts or
lines, so that a difference is called only where the intervals say it is not noise.

Percentile bootstrap, seeded: attribution shares resample each role's replies; held-out losses resample a role's
held-out examples, paired (the same examples under both blocks), so an interval of a loss difference that
excludes 0 means the two blocks really differ on these lines.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95
REPLICATES = 2000


def _interval(v: np.ndarray, level: float) -> list[float]:
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return [float(np.percentile(v, lo)), float(np.percentile(v, hi))]


def bootstrap_accuracy(hits: dict[str, list[bool]], n: int = REPLICATES, level: float = LEVEL, seed: int = 0) -> dict:
    """Percentile bootstrap intervals for each role's accuracy and for their mean: each replicate redraws every
    role's items with replacement (the roles stay fixed). With a few dozen prompts a role, one reply moves a
    role's accuracy by several points; the interval says how far the figure could move with other prompts."""
    rng = np.random.default_rng(seed)
    roles = sorted(r for r in hits if hits[r])
    reps = np.empty((n, len(roles)))
    for j, r in enumerate(roles):
        x = np.asarray(hits[r], dtype=float)
        reps[:, j] = x[rng.integers(0, len(x), size=(n, len(x)))].mean(axis=1)
    return {"level": level, "per_role": {r: _interval(reps[:, j], level) for j, r in enumerate(roles)},
            "mean": _interval(reps.mean(axis=1), level) if roles else [float("nan")] * 2}


def separated(a: list[float], b: list[float]) -> bool:
    """Two intervals that do not overlap: only then is a difference called."""
    return a[0] > b[1] or b[0] > a[1]


def loss_difference(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], n: int = REPLICATES,
                    level: float = LEVEL, seed: int = 0) -> list[float]:
    """Interval of loss(a) - loss(b) on the same held-out examples: each is (per-example NLL sums, per-example
    token counts), a loss is sum over sum. The examples are redrawn together for both."""
    (sa, ca), (sb, cb) = a, b
    if len(sa) == 0:
        return [float("nan")] * 2
    idx = np.random.default_rng(seed).integers(0, len(sa), size=(n, len(sa)))
    diff = sa[idx].sum(1) / ca[idx].sum(1) - sb[idx].sum(1) / cb[idx].sum(1)
    return _interval(diff, level)


def perplexity(sums: np.ndarray, counts: np.ndarray, n: int = REPLICATES, level: float = LEVEL, seed: int = 0) -> dict:
    """exp(sum of NLL sums / sum of token counts) over a set of replies, with the percentile interval of the
    replies redrawn with replacement."""
    sums, counts = np.asarray(sums, dtype=float), np.asarray(counts, dtype=float)
    if counts.sum() == 0:
        return {"value": float("nan"), "ci": [float("nan")] * 2}
    idx = np.random.default_rng(seed).integers(0, len(sums), size=(n, len(sums)))
    reps = np.exp(sums[idx].sum(1) / np.maximum(counts[idx].sum(1), 1))
    return {"value": float(np.exp(sums.sum() / counts.sum())), "ci": _interval(reps, level)}


def paired_perplexity(sums: dict[str, np.ndarray], counts: dict[str, np.ndarray], against: str,
                      n: int = REPLICATES, level: float = LEVEL, seed: int = 0) -> dict:
    """Each system's perplexity over the same items and its ratio to system ``against``'s, with percentile
    intervals of the items redrawn together for every system (paired)."""
    m = len(sums[against])
    if m == 0:
        return {}
    idx = np.random.default_rng(seed).integers(0, m, size=(n, m))
    reps = {k: np.exp(sums[k][idx].sum(1) / np.maximum(counts[k][idx].sum(1), 1)) for k in sums}
    out = {}
    for k in sums:
        row = {"perplexity": float(np.exp(sums[k].sum() / max(counts[k].sum(), 1))), "ci": _interval(reps[k], level)}
        if k != against:
            row["ratio"] = row["perplexity"] / float(np.exp(sums[against].sum() / max(counts[against].sum(), 1)))
            row["ratio_ci"] = _interval(reps[k] / reps[against], level)
        out[k] = row
    return {"level": level, "items": m, "systems": out}


def paired_accuracy(hits: dict[str, list[bool]], against: str, n: int = REPLICATES, level: float = LEVEL,
                    seed: int = 0) -> dict:
    """Each system's accuracy over the same items, its interval, and the interval of its difference from system
    ``against``: every replicate redraws the items once, for all systems together (paired). Items may be any
    per-item values (the eval's on-topic cosines): "accuracy" is then their mean. A difference whose
    interval excludes 0 is called; ``half_width`` says how far the difference's interval reaches either side."""
    h = {k: np.asarray(v, dtype=float) for k, v in hits.items()}
    m = len(h[against])
    if m == 0:
        return {}
    idx = np.random.default_rng(seed).integers(0, m, size=(n, m))
    out = {}
    for name, x in h.items():
        row = {"accuracy": float(x.mean()), "ci": _interval(x[idx].mean(1), level)}
        if name != against:
            d = _interval((x - h[against])[idx].mean(1), level)
            row.update(difference=float(x.mean() - h[against].mean()), difference_ci=d, half_width=(d[1] - d[0]) / 2)
        out[name] = row
    return {"level": level, "items": m, "systems": out}
