"""The role gate: which LoRA blocks speak for a request, and how much.

    w = softmax(E_global e / tau)   restricted to the top-k rows,
                                    then weights under min_weight dropped and the rest renormalised

E_global (M x d) stacks the trained roles' profile embeddings (unit length);
e is the request's embedding (a known NPC's own profile embedding). Since a
role's similarity with itself is 1 and tau is small, a known NPC resolves to
(nearly, and after the min_weight cut usually exactly) its own block.

Fusion uses the same maths for a new role with no training data: its weights
over the existing blocks come from its profile's similarity to theirs.

numpy only: the daemon routes requests with this file and never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..roles.asset import GateSettings


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


@dataclass
class Gate:
    """The gate over one role set: ids of the roles that own blocks, in block order."""

    role_ids: list[str]
    E: np.ndarray  # (M, d)
    settings: GateSettings

    def __post_init__(self) -> None:
        if len(self.role_ids) != len(self.E):
            raise ValueError("one embedding per role")
        self._row = {rid: i for i, rid in enumerate(self.role_ids)}

    def for_embedding(self, e: np.ndarray) -> np.ndarray:
        return gate_weights(self.E, e, self.settings)

    def for_role(self, role_id: str) -> np.ndarray:
        """A known NPC: the gate is queried with that role's own profile embedding."""
        return self.for_embedding(self.E[self._row[role_id]])

    def named(self, w: np.ndarray) -> dict[str, float]:
        return {self.role_ids[i]: float(w[i]) for i in np.flatnonzero(w)}


def fusion_weights(E: np.ndarray, role_ids: list[str], e_new: np.ndarray, top_k: int = 3, tau: float = 0.05,
                   min_weight: float = 0.02) -> dict[str, float]:
    """A new role with little data: mix the existing blocks its profile is closest to."""
    w = gate_weights(E, e_new, GateSettings(tau=tau, top_k=top_k, min_weight=min_weight))
    return {role_ids[i]: float(w[i]) for i in np.flatnonzero(w)}
