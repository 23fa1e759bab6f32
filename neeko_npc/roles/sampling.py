"""How a line's next token is drawn: the one sampler the daemon serves with and the eval measures with, and the
contrast that pushes an NPC's voice away from the base model's before it draws.

Numpy only (the serving side never imports torch); the llama.cpp generation loop (engine/llama_generate.py), the torch
engine's batch and the eval's attribution all call it.
"""

from __future__ import annotations

import numpy as np

TOP_P_HEAD = 256  # nucleus sampling sorts only this many of the likeliest tokens while they hold top_p of the mass


def sample(logits: np.ndarray, opts, rng: np.random.Generator) -> int:
    """One token from ``logits`` under ``opts`` (anything with ``temperature`` and ``top_p``: the daemon's
    GenOptions, the eval's EvalConfig). Greedy at temperature 0; else a draw from softmax(logits / temperature),
    cut to the smallest set of likeliest tokens whose mass reaches top_p. The nucleus is found among the likeliest TOP_P_HEAD tokens (more
    only when they hold less than top_p): sorting all 49,152 of SmolLM2's logits took about 3 ms a token beside a
    7 ms decode step, and every stream's sampling shares one Python interpreter."""
    if opts.temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / opts.temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if opts.top_p >= 1.0:
        return min(int(np.searchsorted(np.cumsum(p), rng.random() * p.sum(), side="right")), len(p) - 1)
    order = np.argpartition(-p, TOP_P_HEAD - 1)[:TOP_P_HEAD] if TOP_P_HEAD < len(p) else np.arange(len(p))
    order = order[np.argsort(-p[order], kind="stable")]
    cum = np.cumsum(p[order])
    if cum[-1] < opts.top_p:  # a flat distribution: sort it all
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
    keep = order[: int(np.searchsorted(cum, opts.top_p)) + 1]
    cut = np.cumsum(p[keep])
    return int(keep[min(int(np.searchsorted(cut, rng.random() * cut[-1], side="right")), len(keep) - 1)])


PLAUSIBLE = 0.1  # contrast picks only among tokens the blocks give at least this share of their top token's probability


def contrasted(block: np.ndarray, base: np.ndarray, c: float, plausible: float = PLAUSIBLE) -> np.ndarray:
    """Contrastive logits (Li et al. 2023; classifier-free guidance, Sanchez et al. 2023): ``block + c * (block -
    base)``, kept only where the block's own probability is at least ``plausible`` times its best token's, so the
    push toward what the block adds never lifts a token the block itself finds implausible. c = 0: the block."""
    out = block + c * (block - base)
    keep = block >= block.max(-1, keepdims=True) + np.log(plausible)
    return np.where(keep, out, -np.inf)
