import numpy as np

from neeko_npc.neeko.gate import Gate, fusion_weights, gate_weights
from neeko_npc.roles.asset import GateSettings


def embeddings(n=5, d=24, seed=0):
    e = np.random.default_rng(seed).standard_normal((n, d))
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_known_npc_resolves_to_its_own_block():
    E = embeddings()
    gate = Gate([f"r{i}" for i in range(5)], E, GateSettings())
    for i in range(5):
        w = gate.for_role(f"r{i}")
        assert w.argmax() == i and w[i] > 0.98
        assert abs(w.sum() - 1) < 1e-12


def test_top_k_and_min_weight():
    E = np.array([[1.0, 0, 0], [0.9, 0.1, 0], [0.8, 0.2, 0], [0, 1.0, 0]])
    w = gate_weights(E, np.array([0.95, 0.05, 0]), GateSettings(tau=1.0, top_k=2, min_weight=0.0))
    assert np.count_nonzero(w) == 2 and w[0] > w[1] > 0 and w[2] == 0 and w[3] == 0
    w = gate_weights(E, np.array([1.0, 0, 0]), GateSettings(tau=0.05, top_k=3, min_weight=0.5))
    assert np.count_nonzero(w) == 1 and w[0] == 1.0  # exactly one-hot after the cut


def test_temperature_sharpens():
    E = embeddings()
    q = E[0] + 0.8 * E[1]
    soft = gate_weights(E, q, GateSettings(tau=1.0, top_k=5, min_weight=0))
    sharp = gate_weights(E, q, GateSettings(tau=0.05, top_k=5, min_weight=0))
    assert sharp.max() > soft.max()


def test_fusion_weights_follow_similarity():
    E = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    w = fusion_weights(E, ["a", "b", "c"], np.array([0.8, 0.6, 0.0]), top_k=2, tau=0.5)
    assert set(w) == {"a", "b"} and w["a"] > w["b"] and abs(sum(w.values()) - 1) < 1e-12
