"""A second model judges the eval's kept replies (scripts/judge_replies.py). Here the judge is the real SmolLM2 GGUF
(any .gguf may judge; the study uses Gemma 3 270M): a reply read as a branch off its transcript must score exactly
what reading the whole transcript token by token gives, a real sentence must read as more likely than its words
shuffled, and the paired ratio must come from the same items for every system."""

import math

import numpy as np
import pytest

from neeko_npc.engine.llamacpp import BRANCH_TOKENS, LlamaModel, load_cpu_backend
from neeko_npc.roles.base_model import resolve_base_model
from neeko_npc.roles.beats import log_softmax
from neeko_npc.neeko.intervals import paired_perplexity
from scripts.judge_replies import judge, primer_text, primers_from, reply_nlls, shuffled, transcript

pytestmark = pytest.mark.slow  # the real model

PROMPT = {"source_role": "blacksmith", "scene": "The forge, at dusk.",
          "turns": [["player", "Can you mend my sword before the tournament?"]],
          "real_line": "Aye, leave it on the anvil and come back at first light."}
REPLIES = ["Aye, bring it to the forge before sundown and I'll have the edge back by morning.",
           "Of course. Three silver, and the edge will hold.", ""]


@pytest.fixture(scope="module")
def judge_model():
    load_cpu_backend()
    model = LlamaModel(resolve_base_model(None).path)
    yield model, model.new_context(n_ctx=2048)
    model.close()


def test_the_transcript_names_every_speaker_and_ends_on_the_answerer():
    text = transcript(PROMPT, "guard_captain")
    assert text == "The forge, at dusk.\n\nPlayer: Can you mend my sword before the tournament?\nGuard Captain:"
    assert transcript({**PROMPT, "scene": "", "turns": [["King Claudius", "How is it?"]]}, "hamlet") == \
        "King Claudius: How is it?\nHamlet:"


def test_a_reply_read_as_a_branch_scores_what_reading_it_whole_gives(judge_model):
    model, ctx = judge_model
    prefix = transcript(PROMPT, "blacksmith")
    got = reply_nlls(model, ctx, prefix, REPLIES)
    assert got[2] == (0.0, 0)  # nothing said, nothing scored
    for reply, (nll, count) in zip(REPLIES[:2], got):
        head = model.encode(prefix)
        toks = model.tokenize(" " + reply, add_special=False, parse_special=False)
        ctx.clear()
        alone = 0.0
        logits = ctx.decode(head)
        for t in toks:  # one token at a time, each predicted from everything before it
            alone -= log_softmax(logits)[t]
            logits = ctx.decode([t])
        ctx.clear()
        assert count == len(toks) and nll == pytest.approx(alone, rel=1e-3)


def test_real_sentences_read_as_more_likely_than_their_words_shuffled(judge_model):
    model, ctx = judge_model
    prefix = transcript(PROMPT, "blacksmith")
    real = reply_nlls(model, ctx, prefix, REPLIES[:2])
    mixed = reply_nlls(model, ctx, prefix, [shuffled(r, 0) for r in REPLIES[:2]])
    assert sum(s for s, _ in real) < sum(s for s, _ in mixed)


def test_many_replies_are_read_in_groups_that_fit_one_batch(judge_model):
    model, ctx = judge_model
    long = " ".join(["and the forge roars"] * 40)  # over a hundred tokens each: several decodes of branches
    replies = [long] * (2 * BRANCH_TOKENS // 100 + 1) + [REPLIES[0]]
    got = reply_nlls(model, ctx, transcript(PROMPT, "blacksmith"), replies)
    same = [s for s, _ in got[:-1]]
    # the same reply scores the same in every group, to llama.cpp's rounding (a batch's shape changes its sums
    # by about 0.2% over these 160 tokens)
    assert max(same) == pytest.approx(min(same), rel=1e-2)
    assert got[-1] == pytest.approx(reply_nlls(model, ctx, transcript(PROMPT, "blacksmith"), REPLIES[:1])[0], rel=1e-2)


def test_the_ratio_is_paired_and_a_loop_is_left_out_of_the_calm_figures(judge_model):
    model, _ = judge_model
    loop = "Aye, aye, aye, aye, aye, aye, aye."
    report = {"attribution": {"replies": {
        "roles": ["blacksmith", "innkeeper"], "prompts": [PROMPT, {**PROMPT, "source_role": "innkeeper"}],
        "systems": {"neeko": [REPLIES[0], REPLIES[1], REPLIES[1], REPLIES[0]],
                    "in_context": [loop, REPLIES[0], REPLIES[0], REPLIES[1]]}}}}
    res = judge(report, model, progress=False)
    assert res["items"] == 4 and res["all_replies"]["items"] == 4
    assert res["neither_loops"]["items"] == 3  # the first prompt's in-context reply loops
    ours = res["all_replies"]["systems"]["neeko"]
    lo, hi = ours["ratio_ci"]
    assert lo <= ours["ratio"] <= hi and ours["ratio"] == pytest.approx(
        ours["perplexity"] / res["all_replies"]["systems"]["in_context"]["perplexity"])
    assert math.isfinite(res["real_lines"]["value"])  # each prompt's real line, in its own speaker's transcript
    against_real = res["own_prompts_against_real_lines"]  # the blacksmith's first prompt, the innkeeper's second
    assert against_real["items"] == 2 and against_real["systems"]["neeko"]["ratio"] > 0
    assert res["per_item"]["neeko"]["tokens"][0] > 0 and res["per_item"]["real_lines"]["tokens"][1] > 0
    # up to where each reply repeats itself: no prompt dropped, only the looping reply read shorter
    cut = res["until_loop"]
    assert cut["items"] == 4 and cut["cut"] == {"neeko": 0, "in_context": 1}
    full, short = res["per_item"]["in_context"], res["per_item"]["in_context_until_loop"]
    assert 0 < short["tokens"][0] < full["tokens"][0]  # "Aye," of the loop
    assert short["nll"][1:] == full["nll"][1:] and res["per_item"]["neeko_until_loop"] == res["per_item"]["neeko"]
    # the control, the blocks' replies with their words shuffled, reads as far less likely than the replies
    assert res["all_replies"]["systems"]["neeko_shuffled"]["perplexity"] > 2 * ours["perplexity"]


def test_paired_perplexity_is_the_token_weighted_mean_and_its_ratio():
    sums = {"in_context": np.array([2.0, 6.0]), "neeko": np.array([4.0, 8.0])}
    counts = {"in_context": np.array([1.0, 3.0]), "neeko": np.array([1.0, 3.0])}
    got = paired_perplexity(sums, counts, "in_context", n=300)
    assert got["systems"]["in_context"]["perplexity"] == pytest.approx(math.exp(8 / 4))
    assert got["systems"]["neeko"]["ratio"] == pytest.approx(math.exp(12 / 4) / math.exp(8 / 4))
    # every item's NLL is higher for neeko, so every redraw's ratio is above 1
    assert got["systems"]["neeko"]["ratio_ci"][0] > 1


def test_every_token_of_a_batch_keeps_its_hidden_state_and_the_last_is_the_served_one(judge_model):
    """LlamaContext.hidden_states (the rows beat_features --reader averages) ends on what hidden() serves."""
    model, ctx = judge_model
    ctx.clear()
    ctx.decode(model.encode(transcript(PROMPT, "blacksmith")))
    ctx.set_embeddings(True)
    toks = model.tokenize(" " + REPLIES[0], add_special=False, parse_special=False)
    ctx.decode(toks)
    rows = ctx.hidden_states(len(toks))
    assert rows.shape == (len(toks), model.n_embd) and np.array_equal(rows[-1], ctx.hidden())
    assert not np.allclose(rows[0], rows[-1])  # one state a token, not one repeated
    ctx.set_embeddings(False)
    ctx.clear()



def test_a_primed_judge_reads_only_training_lines_of_the_answerer_first():
    from pathlib import Path

    from neeko_npc.neeko.attribution import role_lines
    from neeko_npc.neeko.bake import RoleSource

    src = Path(__file__).resolve().parents[1] / "assets/roles/src"
    got = primers_from(src, ["blacksmith"], 12, 0.2)["blacksmith"]
    role = RoleSource.from_dir(src / "blacksmith", 0.2)
    shown = [line.split(": ", 1)[1] for line in got.splitlines()[1:] if line]
    assert got.startswith("Lines of Blacksmith from other scenes:\n") and len(shown) == 12
    assert set(shown) <= set(role_lines("blacksmith", role.train))
    assert not set(shown) & set(role_lines("blacksmith", role.held))  # no held-out line, so no prompt's answer
    assert transcript(PROMPT, "blacksmith", got) == got + transcript(PROMPT, "blacksmith")
    assert primer_text("blacksmith", []) == ""


def test_telling_the_judge_how_the_answerer_speaks_changes_what_it_reads(judge_model):
    model, _ = judge_model
    report = {"attribution": {"replies": {"roles": ["blacksmith"], "prompts": [PROMPT],
                                          "systems": {"neeko": [REPLIES[0]], "in_context": [REPLIES[1]]}}}}
    plain = judge(report, model, progress=False)
    primed = judge(report, model, progress=False, primers={"blacksmith": primer_text("blacksmith", [
        "Aye, the forge is hot and the iron is ready.", "Bring it to the anvil before sundown."])})
    assert primed["primed"] and not plain["primed"]
    assert primed["per_item"]["neeko"]["tokens"] == plain["per_item"]["neeko"]["tokens"]  # the same reply read
    assert primed["per_item"]["neeko"]["nll"] != plain["per_item"]["neeko"]["nll"]  # after another transcript
