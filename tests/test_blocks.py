"""The block LoRA maths on a tiny random llama: mixing, isolation, expansion."""

import torch

from neeko_npc.neeko.model import NeekoLoRA
from tests.tiny import randomize_blocks, tiny_llama


def make(n_roles=3, r=4, targets=("q_proj", "v_proj")):
    model = tiny_llama()
    neeko = NeekoLoRA(model, r=r, alpha=8, targets=targets)
    for i in range(n_roles):
        neeko.add_role(f"role{i}")
    randomize_blocks(neeko)
    return model, neeko


def logits(neeko, ids, w):
    with torch.no_grad():
        return neeko.forward(w, input_ids=ids).logits


def test_block_equals_dense_formula():
    """h = W0 x + s * sum_k w_k B_k A_k x, checked against a hand-written dense computation."""
    model, neeko = make()
    mod = neeko.modules[(0, "q_proj")]
    x = torch.randn(2, 5, 32)
    w = torch.tensor([[0.7, 0.0, 0.3], [0.0, 1.0, 0.0]])
    with neeko.gate(w):
        got = mod(x)
    s = neeko.alpha / neeko.r
    want = []
    for row in range(2):
        h = mod.base(x[row])
        for k in range(3):
            A, B = mod.block(k)
            h = h + s * w[row, k] * (x[row] @ A.T @ B.T)
        want.append(h)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-6)


def test_rows_of_a_mixed_batch_equal_their_solo_runs():
    model, neeko = make()
    ids = torch.randint(0, 96, (3, 7))
    rows = ["role0", {"role1": 0.6, "role2": 0.4}, "role2"]
    batch = logits(neeko, ids, neeko.weights(rows))
    for i, row in enumerate(rows):
        solo = logits(neeko, ids[i:i + 1], neeko.weights([row]))
        torch.testing.assert_close(batch[i:i + 1], solo, rtol=1e-5, atol=1e-5)
    # and the roles really differ, so the check above has teeth
    assert not torch.allclose(batch[0], logits(neeko, ids[0:1], neeko.weights(["role1"]))[0], atol=1e-3)


def test_no_gate_is_the_base_model():
    model = tiny_llama()
    ids = torch.randint(0, 96, (1, 6))
    with torch.no_grad():
        base = model(input_ids=ids).logits
    neeko = NeekoLoRA(model, r=4, alpha=8)
    neeko.add_role("a")
    randomize_blocks(neeko)
    assert torch.equal(logits(neeko, ids, None), base)
    assert not torch.allclose(logits(neeko, ids, neeko.weights(["a"])), base, atol=1e-4)


def test_role_batch_gives_exactly_zero_gradient_to_other_blocks():
    model, neeko = make(targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    ids = torch.randint(0, 96, (2, 6))
    out = neeko.forward(neeko.weights(["role1", "role1"]), input_ids=ids, labels=ids)
    out.loss.backward()
    r = neeko.r
    touched = 0
    for mod in neeko.modules.values():
        for k in range(3):
            gA = mod.lora_A.grad[k * r:(k + 1) * r]
            gB = mod.lora_B.grad[:, k * r:(k + 1) * r]
            if k == 1:
                touched += int(gA.abs().sum() > 0) + int(gB.abs().sum() > 0)
            else:
                assert torch.count_nonzero(gA) == 0 and torch.count_nonzero(gB) == 0
    assert touched == 2 * len(neeko.modules)
    # base weights are frozen
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_expansion_keeps_old_roles_bit_identical():
    model, neeko = make()
    ids = torch.randint(0, 96, (2, 9))
    before = {rid: logits(neeko, ids, neeko.weights([rid, rid])) for rid in neeko.role_ids}
    neeko.add_role("newcomer")
    randomize_blocks_only(neeko, 3)
    for rid, ref in before.items():
        assert torch.equal(logits(neeko, ids, neeko.weights([rid, rid])), ref), rid
    assert not torch.allclose(logits(neeko, ids, neeko.weights(["newcomer"] * 2)), before["role0"], atol=1e-3)


def randomize_blocks_only(neeko, k):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for mod in neeko.modules.values():
            A, B = mod.block(k)
            mod.set_block(k, torch.randn(A.shape, generator=g), torch.randn(B.shape, generator=g))


def test_export_and_load_block_roundtrip():
    model, neeko = make()
    blk = neeko.export_block("role2")
    model2 = tiny_llama()
    n2 = NeekoLoRA(model2, r=4, alpha=8, targets=blk.targets)
    n2.load_block("role2", blk)
    ids = torch.randint(0, 96, (1, 5))
    assert torch.equal(logits(neeko, ids, neeko.weights(["role2"])), logits(n2, ids, n2.weights(["role2"])))
