"""Sampling: greedy at temperature 0; otherwise draws follow softmax(logits / T) cut to the top_p nucleus, whether the
nucleus is found among the likeliest few hundred tokens or needs the whole vocabulary sorted."""

import numpy as np
import pytest

from neeko_npc.engine.stream import GenOptions
from neeko_npc.roles.sampling import TOP_P_HEAD, sample


def nucleus(logits, temperature, top_p):
    """The exact distribution, computed the slow, obvious way."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p >= 1.0:
        return p
    order = np.argsort(-p, kind="stable")
    keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
    q = np.zeros_like(p)
    q[keep] = p[keep] / p[keep].sum()
    return q


def peaked(n=8192, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(n).astype(np.float32)
    logits[rng.choice(n, 20, replace=False)] += np.linspace(9, 5, 20).astype(np.float32)  # a few likely tokens
    return logits


@pytest.mark.parametrize("logits, temperature, top_p", [
    (peaked(), 0.7, 0.95),  # the nucleus is inside the head
    (peaked(), 0.7, 1.0),  # no cut
    (np.random.default_rng(1).standard_normal(2048).astype(np.float32), 1.0, 0.95),  # flat: the whole vocabulary
])
def test_draws_follow_the_nucleus_distribution(logits, temperature, top_p):
    want = nucleus(logits, temperature, top_p)
    rng = np.random.default_rng(7)
    n = 10000
    draws = np.array([sample(logits, GenOptions(temperature=temperature, top_p=top_p), rng) for _ in range(n)])
    assert want[draws].min() > 0  # never a token outside the nucleus
    likely = np.argsort(-want)[:10]
    for k in likely:  # each of the likeliest tokens within 5 standard errors of its probability
        p = want[k]
        assert abs((draws == k).mean() - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-4, (k, p)
    if top_p < 1.0 and temperature == 1.0:
        assert (want > 0).sum() > TOP_P_HEAD  # this case really needed more than the head


def test_greedy_and_seeded_draws():
    logits = peaked()
    assert sample(logits, GenOptions(temperature=0.0), np.random.default_rng(0)) == int(np.argmax(logits))
    opts = GenOptions(temperature=0.9, top_p=0.9)
    a = [sample(logits, opts, np.random.default_rng(3)) for _ in range(5)]
    assert len(set(a)) == 1  # the same seed, the same draw


def test_sampled_contrasted_tokens_stay_among_the_blocks_plausible_ones():
    """The daemon draws a contrasted line's tokens from ``contrasted`` logits at its own temperature and nucleus: a
    token the block finds implausible (under PLAUSIBLE of its best token's probability) is never drawn however far
    the base model is from it, and among the plausible ones the draw leans toward what the block adds."""
    from neeko_npc.roles.sampling import PLAUSIBLE, contrasted

    rng = np.random.default_rng(0)
    block = rng.normal(size=400)
    base = block.copy()
    plausible = block >= block.max() + np.log(PLAUSIBLE)
    base[~plausible] -= 50.0  # the base model finds the block's implausible tokens far less likely still
    favoured = np.flatnonzero(plausible)[0]
    base[favoured] -= 3.0  # the block adds this one most
    logits = contrasted(block, base, 1.0)
    draws = [sample(logits, GenOptions(temperature=0.7, top_p=0.95), np.random.default_rng(i)) for i in range(300)]
    assert all(plausible[t] for t in draws)
    assert np.bincount(draws, minlength=400).argmax() == favoured
