import numpy as np
import pytest

from neeko_npc.roles.gate import fusion_weights, gate_weights, normalise_blend
from neeko_npc.errors import BlendError
from neeko_npc.roles.asset import GateSettings


def embeddings(n=5, d=24, seed=0):
    e = np.random.default_rng(seed).standard_normal((n, d))
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_a_role_with_itself_in_the_set_gets_nearly_all_the_weight():
    E = embeddings()
    for i in range(5):
        w = gate_weights(E, E[i], GateSettings())
        assert w.argmax() == i and w[i] > 0.98
        assert abs(w.sum() - 1) < 1e-12


def test_a_blend_is_normalised_and_drops_zero_weights():
    assert normalise_blend([("innkeeper", 7.0), ("merchant", 3.0), ("smith", 0.0)], limit=3) == {"innkeeper": 0.7, "merchant": 0.3}
    assert normalise_blend([("innkeeper", 0.25)], limit=1) == {"innkeeper": 1.0}


@pytest.mark.parametrize("pairs,needle", [
    ([], "empty"),
    ([("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 1.0)], "names 4 roles; at most 3"),
    ([("a", 1.0), ("a", 2.0)], "names role 'a' twice"),
    ([("a", -0.1), ("b", 1.0)], "finite and not negative"),
    ([("a", float("nan"))], "finite and not negative"),
    ([("a", float("inf"))], "finite and not negative"),
    ([("a", 0.0), ("b", 0.0)], "sum to 0"),
])
def test_a_bad_blend_says_why(pairs, needle):
    with pytest.raises(BlendError, match=needle):
        normalise_blend(pairs, limit=3)


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
