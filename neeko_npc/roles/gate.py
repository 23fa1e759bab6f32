"""The role gate: how a role *without a block of its own* mixes the blocks that exist.

    w = softmax(E_global e / tau)   restricted to the top-k rows,
                                    then weights under min_weight dropped and the rest renormalised

E_global (M x d) stacks the trained roles' profile embeddings (unit length);
e is the new role's profile embedding. Fusion (``bake-role --fuse``) runs this
once, at bake time, and stores the weights in the role's file.

A trained NPC is never routed through the gate: it speaks with its own block
alone, weight 1, so adding, replacing or removing any other role cannot change
it. A fused NPC speaks with the weights stored in its file. A procedural NPC
(no file) names its blend in the request; :func:`normalise_blend` checks it.

numpy only: the daemon imports this file and never imports torch.
"""

from __future__ import annotations

import numpy as np

from ..errors import BlendError
from .. import defaults
from .asset import GateSettings


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(n == 0):
        raise ValueError("an embedding is all zeros")
    return x / n


def gate_weights(E: np.ndarray, e: np.ndarray, settings: GateSettings) -> np.ndarray:
    """Weights (M,) over the rows of E for one query embedding ``e``. Sums to 1."""
    E = _unit(E)
    if E.ndim != 2 or E.shape[0] == 0:
        raise ValueError("the gate needs at least one role embedding")
    logits = (E @ _unit(e)) / settings.tau
    k = min(settings.top_k, len(logits))
    # Stable order for ties: by logit, then by row index.
    top = np.lexsort((np.arange(len(logits)), -logits))[:k]
    z = np.exp(logits[top] - logits[top].max())
    p = z / z.sum()
    keep = p >= settings.min_weight
    keep[0] = True  # the best role always survives
    top, p = top[keep], p[keep]
    w = np.zeros(len(logits), dtype=np.float64)
    w[top] = p / p.sum()
    return w


def fusion_weights(E: np.ndarray, role_ids: list[str], e_new: np.ndarray, top_k: int = defaults.TOP_K,
                   tau: float = defaults.FUSE_TAU, min_weight: float = defaults.MIN_WEIGHT) -> dict[str, float]:
    """A new role with little data: mix the existing blocks its profile is closest to."""
    w = gate_weights(E, e_new, GateSettings(tau=tau, top_k=top_k, min_weight=min_weight))
    return {role_ids[i]: float(w[i]) for i in np.flatnonzero(w)}


def normalise_blend(pairs: list[tuple[str, float]], limit: int) -> dict[str, float]:
    """A blend named in a request, as (role id, weight) pairs: at most ``limit`` distinct roles, finite
    non-negative weights with a positive sum. Returns the weights scaled to sum to 1, zero weights dropped."""
    if not pairs:
        raise BlendError("the blend is empty; name at least one hosted role and its weight")
    if len(pairs) > limit:
        raise BlendError(f"the blend names {len(pairs)} roles; at most {limit} may be mixed (--max-blend)")
    seen: dict[str, float] = {}
    for rid, w in pairs:
        if rid in seen:
            raise BlendError(f"the blend names role {rid!r} twice")
        w = float(w)
        if not (np.isfinite(w) and w >= 0):
            raise BlendError(f"the blend weight of {rid!r} is {w}; weights must be finite and not negative")
        seen[rid] = w
    total = sum(seen.values())
    if not total > 0:
        raise BlendError("the blend weights sum to 0; give at least one role a positive weight")
    return {rid: w / total for rid, w in seen.items() if w > 0}
