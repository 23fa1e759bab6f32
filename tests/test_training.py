"""Training on the tiny llama: only the trained block moves; an interrupted bake resumes to the same result."""

import pytest
import torch

from neeko_npc.neeko.data import IGNORE, Example
from neeko_npc.neeko.model import NeekoLoRA
from neeko_npc.neeko.optim import BlockAdamW
from neeko_npc.neeko.train import TrainConfig, train_blocks
from tests.tiny import tiny_llama


def examples(role, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 96, (10,), generator=g).tolist()
        out.append(Example(role, ids, [IGNORE] * 5 + ids[5:]))
    return out


def snapshot(neeko):
    return [p.detach().clone() for p in neeko.block_parameters()]


def block_slices(neeko, params, k):
    r = neeko.r
    return [p[k * r:(k + 1) * r] if i % 2 == 0 else p[:, k * r:(k + 1) * r] for i, p in enumerate(params)]


def test_adamw_moves_only_the_stepped_block_even_with_momentum():
    neeko = NeekoLoRA(tiny_llama(), r=4, alpha=8)
    for rid in ("a", "b", "c"):
        neeko.add_role(rid)
    opt = BlockAdamW([neeko.modules[k] for k in sorted(neeko.modules)], lr=1e-2, weight_decay=0.1)
    ex = {"a": examples("a"), "b": examples("b", seed=1)}
    from neeko_npc.neeko.data import collate

    def step(rid):
        batch = collate(ex[rid][:3], 0)
        k = neeko.index(rid)
        out = neeko.forward(neeko.weights([rid] * 3), **batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step(k)

    step("a")  # block a now has momentum
    before = snapshot(neeko)
    step("b")
    after = snapshot(neeko)
    for k, moved in ((0, False), (1, True), (2, False)):
        same = all(torch.equal(x, y) for x, y in zip(block_slices(neeko, before, k), block_slices(neeko, after, k)))
        assert same != moved, f"block {k}"


@pytest.mark.parametrize("distinct", [0.0, 1.0])
def test_interrupted_bake_resumes_to_the_identical_result(tmp_path, distinct):
    cfg = TrainConfig(epochs=2, batch_size=2, lr=1e-2, warmup=2, seed=3, checkpoint_every=1, distinct=distinct)
    data = {"a": examples("a"), "b": examples("b", seed=1)}

    def fresh():
        torch.manual_seed(0)
        n = NeekoLoRA(tiny_llama(), r=4, alpha=8)
        gen = torch.Generator().manual_seed(cfg.seed)
        n.add_role("a", generator=gen)
        n.add_role("b", generator=gen)
        return n

    full = fresh()
    train_blocks(full, data, ["a", "b"], cfg, pad_id=0, progress=False, negatives=data)

    ck = tmp_path / "ck.pt"
    broken = fresh()
    real_loss = broken.loss  # what each training step calls
    calls = {"n": 0}

    def crash_after_four(*a, **kw):
        calls["n"] += kw.get("reduction", "mean") == "mean"  # not the base model's scoring of the negatives
        if calls["n"] > (8 if distinct else 4):  # with the distinct term, two losses a step
            raise KeyboardInterrupt
        return real_loss(*a, **kw)

    broken.loss = crash_after_four
    with pytest.raises(KeyboardInterrupt):
        train_blocks(broken, data, ["a", "b"], cfg, pad_id=0, checkpoint=ck, progress=False, negatives=data)
    assert torch.load(ck, weights_only=True)["step"] == 4

    resumed = fresh()
    res = train_blocks(resumed, data, ["a", "b"], cfg, pad_id=0, checkpoint=ck, resume=True, progress=False,
                       negatives=data)
    assert res.resumed_from == 4
    for x, y in zip(snapshot(full), snapshot(resumed)):
        assert torch.equal(x, y)

    other = TrainConfig(**{**cfg.__dict__, "lr": 5e-3})
    with pytest.raises(ValueError, match="different bake"):
        train_blocks(fresh(), data, ["a", "b"], other, pad_id=0, checkpoint=ck, resume=True, progress=False)


def test_same_seed_same_blocks():
    cfg = TrainConfig(epochs=1, batch_size=2, lr=1e-2, seed=9)
    data = {"a": examples("a")}
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        n = NeekoLoRA(tiny_llama(), r=4, alpha=8)
        n.add_role("a", generator=torch.Generator().manual_seed(cfg.seed))
        train_blocks(n, data, ["a"], cfg, pad_id=0, progress=False)
        outs.append(snapshot(n))
    assert all(torch.equal(x, y) for x, y in zip(*outs))


def test_the_loss_on_labelled_tokens_only_is_the_models_own_loss():
    """Training and held-out scoring run the LM head on the labelled tokens only; the loss must be the one the
    model computes from ``labels=`` over every position, for the base and under a block, padding included."""
    from neeko_npc.neeko.data import collate

    neeko = NeekoLoRA(tiny_llama(), r=4, alpha=8.0, targets=("q_proj", "v_proj"))
    neeko.add_role("smith", generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p in neeko.block_parameters():
            p.normal_(0, 0.3)  # a block that changes the output
    batch = collate(examples("smith", n=3) + [Example("smith", list(range(3, 17)), [IGNORE] * 9 + list(range(12, 17)))], 0)
    for w in (None, neeko.weights(["smith"] * 4)):
        with torch.no_grad():
            ours = neeko.loss(w, **batch)
            theirs = neeko.forward(w, **batch).loss
            total = neeko.loss(w, **batch, reduction="sum")
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6), (w, ours, theirs)
        assert torch.allclose(total / int((batch["labels"][:, 1:] != IGNORE).sum()), theirs, rtol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(neeko.loss(None, **batch), neeko.loss(neeko.weights(["smith"] * 4), **batch))


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch, tmp_path):
    from neeko_npc.errors import InputError
    from neeko_npc.neeko import load_base as base

    assert base.resolve_precision("fp32") == "fp32" and base.resolve_precision("bf16") == "bf16"
    with pytest.raises(InputError, match="choose from auto, fp32, bf16"):
        base.resolve_precision("fp16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpuinfo = tmp_path / "cpuinfo"
    real = base.Path
    monkeypatch.setattr(base, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real(p))
    for flags, want in (("fpu avx2 avx512f", "fp32"), ("fpu avx512f avx512_bf16", "bf16"), ("fpu amx_bf16 amx_tile", "bf16")):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert base.resolve_precision("auto") == want, flags
    cpuinfo.unlink()  # no /proc (macOS, Windows): fp32
    assert base.resolve_precision("auto") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert base.resolve_precision("auto") == "bf16"


def test_held_out_sums_are_each_examples_own_loss():
    from neeko_npc.neeko.data import collate
    from neeko_npc.neeko.train import heldout_loss, heldout_sums

    neeko = NeekoLoRA(tiny_llama(), r=4, alpha=8.0, targets=("q_proj", "v_proj"))
    neeko.add_role("smith", generator=torch.Generator().manual_seed(1))
    exs = examples("smith", n=5) + [Example("smith", list(range(3, 20)), [IGNORE] * 12 + list(range(15, 20)))]
    sums, counts = heldout_sums(neeko, exs, "smith", pad_id=0, batch_size=4)  # batches of 4 and 2, padded
    for i, e in enumerate(exs):
        with torch.no_grad():
            alone = float(neeko.loss(neeko.weights(["smith"]), **collate([e], 0)))
        assert counts[i] == sum(x != IGNORE for x in e.labels[1:]) and abs(sums[i] / counts[i] - alone) < 1e-5
    assert heldout_loss(neeko, exs, "smith", 0) == pytest.approx(sums.sum() / counts.sum())


def test_the_eval_scores_beats_on_a_kv_cache_as_a_full_forward_would():
    """beat_eval's torch scorer (rows under different gate weights on one KV cache, appending different numbers of
    tokens; every continuation in one batch on a copy of it) gives every continuation the log-probability a full
    forward over that row's prompt + continuation gives, and leaves its state unchanged."""
    import torch

    from neeko_npc.neeko.beat_eval import TorchScorer
    from neeko_npc.neeko.model import NeekoLoRA
    from neeko_npc.roles.beats import log_softmax
    from tests.tiny import randomize_blocks, tiny_llama

    neeko = NeekoLoRA(tiny_llama(), r=2, alpha=4.0, targets=("q_proj", "v_proj"))
    neeko.add_role("a")
    neeko.add_role("b")
    randomize_blocks(neeko)
    systems = ["a", {"a": 0.3, "b": 0.7}, None]
    tails = [[3, 44], [3], [3, 44, 12, 70]]  # after a shared head, rows of different lengths
    conts = [[[7], [7, 8], [60, 2, 11]], [[9, 9]], [[5], [6]]]
    s = TorchScorer(neeko, systems)
    s.extend_rows([[5, 9, 17]] * 3)
    logits = s.extend_rows(tails)
    got = s.continuations_rows(logits, conts)
    assert got == s.continuations_rows(logits, conts)  # the state did not move
    for weights, tail, cs, lps in zip(systems, tails, conts, got):
        prompt = [5, 9, 17] + tail
        w = None if weights is None else neeko.weights([weights])
        for c, lp in zip(cs, lps):
            with torch.no_grad():
                full = neeko.forward(w, input_ids=torch.tensor([prompt + c])).logits[0].float().numpy()
            want = sum(float(log_softmax(full[len(prompt) - 1 + i])[c[i]]) for i in range(len(c)))
            assert abs(lp - want) < 1e-4, (weights, c, lp, want)


def test_the_eval_chooses_each_systems_beat_as_it_would_alone():
    """Serving's ``choose``, run for three systems in lockstep on one batch, picks for each what it picks alone
    (and with the same probabilities, to float precision)."""
    from neeko_npc.neeko.beat_eval import TorchScorer, _Lockstep
    from neeko_npc.neeko.model import NeekoLoRA
    from neeko_npc.roles.beats import BeatJob
    from neeko_npc.roles.prompt import Action, BeatAsk
    from tests.tiny import randomize_blocks, tiny_llama

    neeko = NeekoLoRA(tiny_llama(), r=2, alpha=4.0, targets=("q_proj", "v_proj"))
    neeko.add_role("a")
    neeko.add_role("b")
    randomize_blocks(neeko, seed=3)
    piece = lambda text: [1 + (ord(ch) * 7) % 90 for ch in text.strip()[:4]] or [1]  # noqa: E731
    ask = BeatAsk(("happy", "angry", "sad", "afraid"), (Action("open"), Action("open_shop"), Action("none")))
    job = BeatJob(ask, None, piece, [95])
    systems = ["a", "b", None]
    prompt = [5, 9, 17, 3, 44, 12]
    together = _Lockstep(TorchScorer(neeko, systems)).choose_all([prompt] * 3, job)
    alone = [_Lockstep(TorchScorer(neeko, [w])).choose_all([prompt], job)[0] for w in systems]
    for (e1, a1), (e2, a2) in zip(together, alone):
        assert (e1.id, a1.id) == (e2.id, a2.id)
        assert all(abs(e1.probabilities[k] - e2.probabilities[k]) < 1e-5 for k in e1.probabilities)
        assert all(abs(a1.probabilities[k] - a2.probabilities[k]) < 1e-5 for k in a1.probabilities)
    assert len({(e.id, a.id, round(e.probability, 4)) for e, a in together}) > 1  # the systems really differ


def two_rows_on_a_tiny_block():
    """A tiny llama with one random block "a" (EOS 95), and two prompts of 5 and 3 tokens, left-padded."""
    import torch

    from neeko_npc.neeko.model import NeekoLoRA
    from tests.tiny import randomize_blocks, tiny_llama

    neeko = NeekoLoRA(tiny_llama(), r=2, alpha=4.0, targets=("q_proj", "v_proj"))
    neeko.add_role("a")
    randomize_blocks(neeko)
    neeko.model.generation_config.eos_token_id = 95
    tok = type("Tok", (), {"pad_token_id": 0, "eos_token_id": 95})()
    rows = [[5, 9, 17, 3, 44], [7, 8, 60]]
    ids = torch.tensor([[0] * (5 - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (5 - len(r)) + [1] * len(r) for r in rows])
    return neeko, tok, rows, ids, mask


def test_sampled_attribution_replies_decode_as_the_daemon_samples():
    """The eval's sampled replies (attribution.py ``_decoded``): at a vanishing temperature, left-padded rows on a
    KV cache give the tokens of a full greedy forward over each row alone; at the daemon's temperature a seed gives
    the same draw every time and another seed another; an own block at strength 0 speaks as the base model."""
    import numpy as np
    import torch

    from neeko_npc.neeko.attribution import _decoded
    from neeko_npc.engine.stream import GenOptions

    neeko, tok, rows, ids, mask = two_rows_on_a_tiny_block()
    w = neeko.weights(["a", "a"])

    def greedy_alone(row, steps):
        seq = list(row)
        for _ in range(steps):
            with torch.no_grad():
                nxt = int(neeko.forward(neeko.weights(["a"]), input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            if nxt == 95:
                break
            seq.append(nxt)
        return seq[len(row):]

    cold = GenOptions(temperature=1e-6, top_p=1.0)
    got = _decoded(neeko, tok, ids, mask, w, 6, cold, [np.random.default_rng(i) for i in range(2)])
    assert got == [greedy_alone(r, 6) for r in rows]

    warm = GenOptions(temperature=0.7, top_p=0.95)
    draw = lambda seed, weights: _decoded(neeko, tok, ids, mask, weights, 8, warm,  # noqa: E731
                                          [np.random.default_rng(seed + j) for j in range(2)])
    assert draw(0, w) == draw(0, w) and draw(0, w) != draw(100, w)
    assert draw(3, neeko.weights([{"a": 0.0}] * 2)) == draw(3, None)


def test_contrastive_replies_push_away_from_the_base_within_the_blocks_plausible_tokens():
    """``contrast`` c: each greedy token is the argmax of block + c * (block - base) over the tokens the block gives
    at least PLAUSIBLE of its top token's probability; the base decodes the same tokens on its own cache."""
    import numpy as np
    import torch

    from neeko_npc.neeko.attribution import _decoded
    from neeko_npc.roles.sampling import PLAUSIBLE, contrasted

    block, base = np.log(np.array([[0.5, 0.3, 0.16, 0.04]])), np.log(np.array([[0.6, 0.1, 0.1, 0.2]]))
    assert np.array_equal(contrasted(block, base, 0.0)[0, :3], block[0, :3])  # c = 0: the block (where plausible)
    pushed = contrasted(block, base, 1.0)
    assert np.argmax(pushed) == 1 and np.isneginf(pushed[0, 3])  # token 3: below 0.1 x 0.5, never picked
    assert np.argmax(block) == 0 and 0.04 < PLAUSIBLE * 0.5 < 0.16

    neeko, tok, rows, ids, mask = two_rows_on_a_tiny_block()

    def contrasted_alone(row, steps, c):
        seq = list(row)
        for _ in range(steps):
            with torch.no_grad():
                lb = neeko.forward(neeko.weights(["a"]), input_ids=torch.tensor([seq])).logits[0, -1].numpy()
                l0 = neeko.forward(None, input_ids=torch.tensor([seq])).logits[0, -1].numpy()
            nxt = int(np.argmax(contrasted(lb[None], l0[None], c)))
            if nxt == 95:
                break
            seq.append(nxt)
        return seq[len(row):]

    rngs = [np.random.default_rng(i) for i in range(2)]
    got = _decoded(neeko, tok, ids, mask, neeko.weights(["a", "a"]), 6, None, rngs, contrast=2.0)
    assert got == [contrasted_alone(r, 6, 2.0) for r in rows]
    assert got != _decoded(neeko, tok, ids, mask, neeko.weights(["a", "a"]), 6, None, rngs, contrast=0.0)


def patterned(role, tail, n=8, seed=0):
    """Lines that share a run of tokens with every other role's (20..24) and end in the role's own (``tail``)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(40, 96, (4,), generator=g).tolist() + [20, 21, 22, 23, 24] + tail
        out.append(Example(role, ids, [IGNORE] * 4 + ids[4:]))
    return out


def test_the_distinct_term_keeps_a_block_from_learning_what_the_roles_share():
    """Plainly trained, block a learns the run every role's lines share, so it also lowers b's loss below the
    base model's; with --distinct it stays near the base on b's lines and still learns its own. Block b, not
    trained here, does not move by a bit: the term only ever reaches the trained block."""
    from neeko_npc.neeko.train import heldout_loss

    data = {"a": patterned("a", [30, 31, 32, 33]), "b": patterned("b", [35, 36, 37, 38], seed=1)}

    def trained(distinct):
        torch.manual_seed(0)
        n = NeekoLoRA(tiny_llama(), r=4, alpha=32)
        gen = torch.Generator().manual_seed(2)
        n.add_role("a", generator=gen)
        n.add_role("b", generator=gen)
        before_b = block_slices(n, snapshot(n), 1)
        cfg = TrainConfig(epochs=12, batch_size=4, lr=2e-2, warmup=2, seed=3, distinct=distinct)
        res = train_blocks(n, {"a": data["a"]}, ["a"], cfg, pad_id=0, progress=False, negatives=data)
        assert all(torch.equal(x, y) for x, y in zip(before_b, block_slices(n, snapshot(n), 1)))
        return n, res

    plain, plain_res = trained(0.0)
    held, held_res = trained(1.0)
    assert plain_res.records["a"].distinct == [] and len(held_res.records["a"].distinct) == held_res.steps
    base_b, base_a = heldout_loss(plain, data["b"], None, 0), heldout_loss(plain, data["a"], None, 0)
    plain_b, held_b = heldout_loss(plain, data["b"], "a", 0), heldout_loss(held, data["b"], "a", 0)
    assert base_b - plain_b > 0.1, (base_b, plain_b)  # plainly, a's block helps b's lines: the term has work to do
    assert base_b - held_b < 0.25 * (base_b - plain_b), (base_b, held_b, plain_b)
    assert heldout_loss(held, data["a"], "a", 0) < base_a - 0.15  # and it still learns its own lines
