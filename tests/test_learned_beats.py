"""Learned beats: a role's head (roles/beats.py BeatHead), how a bake fits it (neeko/beat_head.py), how it is
stored, and how the eval pools every role's held-out lines (neeko/beat_eval.py ``pooled``). Synthetic features
here; the real model's hidden states are checked in test_beats.py."""

import math

import numpy as np
import pytest

from neeko_npc.neeko.beat_eval import pooled
from neeko_npc.neeko.beat_head import MIN_LINES, fit_classifier, fit_head
from neeko_npc.roles.asset import write_asset
from neeko_npc.roles.asset_read import read_asset
from neeko_npc.roles.beats import BeatHead, Classifier, MixedHead
from neeko_npc.roles.prompt import EMOTIONS, Action, BeatAsk
from tests.helpers import block_asset, random_head

ACTIONS = ("quote_price", "take_item", "none")


def test_the_head_is_a_softmax_over_the_asked_candidates():
    head = random_head(actions=ACTIONS)
    h = np.random.default_rng(1).standard_normal(head.dim).astype(np.float32)
    emotion, action = head.choose(h, BeatAsk(("sad", "happy"), (Action("none"), Action("quote_price"))))
    z = {c: float(head.emotion.W[i] @ h + head.emotion.b[i]) for i, c in enumerate(EMOTIONS)}
    p = np.exp([z["sad"], z["happy"]] - np.max([z["sad"], z["happy"]]))
    assert list(emotion.probabilities) == ["sad", "happy"]  # the request's order
    assert emotion.probabilities["sad"] == pytest.approx(p[0] / p.sum(), rel=1e-6)
    assert emotion.id == max(emotion.probabilities, key=emotion.probabilities.get)
    assert list(action.probabilities) == ["none", "quote_price"]
    assert math.isclose(sum(action.probabilities.values()), 1.0, rel_tol=1e-9)
    assert head.choose(h, BeatAsk((), (Action("none"),)))[0] is None


def test_a_fused_npcs_beats_are_its_blocks_heads_mixed_by_its_weights():
    """A fused role or a blend reads the one hidden state with each mixed role's head: each candidate's probability
    is the weighted mean of theirs, over the heads that know every asked id of its kind."""
    smith, witch = random_head(actions=ACTIONS, seed=1), random_head(actions=("brew", "none"), seed=2)
    h = np.random.default_rng(3).standard_normal(smith.dim).astype(np.float32)
    ask = BeatAsk(("happy", "sad", "afraid"), (Action("none"), Action("quote_price")))
    alone = MixedHead.of([(smith, 2.5)])
    for got, want in zip(alone.choose(h, ask), smith.choose(h, ask)):  # one head, any weight: that head
        assert got.id == want.id and got.probabilities == pytest.approx(want.probabilities, rel=1e-9)
    mix = MixedHead.of([(smith, 0.75), (witch, 0.25), (None, 0.5)])
    assert len(mix.parts) == 2 and mix.dim == smith.dim
    emotion, action = mix.choose(h, ask)
    s, w = smith.emotion.pick(h, list(ask.emotions)), witch.emotion.pick(h, list(ask.emotions))
    for e in ask.emotions:
        assert emotion.probabilities[e] == pytest.approx(0.75 * s.probabilities[e] + 0.25 * w.probabilities[e], rel=1e-9)
    assert action.probabilities == pytest.approx(smith.action.pick(h, ["none", "quote_price"]).probabilities, rel=1e-9)
    assert mix.covers(BeatAsk((), (Action("brew"), Action("none"))))  # the witch alone knows "brew"
    assert not mix.covers(BeatAsk((), (Action("brew"), Action("quote_price"))))  # no head knows both
    assert MixedHead.of([(None, 1.0), (smith, 0.0)]) is None


def test_the_head_answers_only_what_it_was_trained_on():
    head = random_head(actions=ACTIONS)
    assert head.covers(BeatAsk(EMOTIONS, tuple(Action(a) for a in ACTIONS)))
    assert head.covers(BeatAsk(("angry",)))
    assert not head.covers(BeatAsk((), (Action("none"), Action("sing"))))  # an action it never saw: the question
    assert not BeatHead(head.dim, emotion=head.emotion).covers(BeatAsk((), (Action("none"),)))


def separable(n, seed, classes=("happy", "sad", "neutral"), dim=24):
    """Features where each class has a centre of its own, with noise; the last class is the common one."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(classes), dim)) * 3 + 50  # far from zero, as hidden states are
    y = rng.choice(len(classes), size=n, p=[0.2, 0.2, 0.6][: len(classes)])
    return centres[y] + rng.standard_normal((n, dim)), [classes[i] for i in y]


def test_a_fitted_head_learns_what_the_majority_class_cannot():
    X_all, y_all = separable(320, seed=0)  # one draw: the same centres for training and test lines
    X, labels, Xh, truth = X_all[:120], y_all[:120], X_all[120:], y_all[120:]
    clf, lam = fit_classifier(X, labels, EMOTIONS)
    assert clf.classes == EMOTIONS and clf.W.shape == (7, 24) and clf.W.dtype == np.float32
    picks = [clf.pick(x, list(EMOTIONS)).id for x in Xh]
    hits = np.mean([p == t for p, t in zip(picks, truth)])
    majority = np.mean([t == "neutral" for t in truth])
    assert hits > majority + 0.25, (hits, majority)
    # a class no line carried is never picked, though it may be asked
    assert not {"angry", "afraid", "surprised", "disgusted"} & set(picks)


def test_the_standardisation_is_folded_into_the_weights():
    """W h + b on raw features equals the fit on standardised ones: refitting on shifted and scaled features
    picks the same classes (standardisation makes the fit blind to both)."""
    X, labels = separable(100, seed=3)
    a, _ = fit_classifier(X, labels, EMOTIONS)
    b, _ = fit_classifier(X * 4.0 - 7.0, labels, EMOTIONS)
    for x in X[:30]:
        pa, pb = a.pick(x, list(EMOTIONS)), b.pick(x * 4.0 - 7.0, list(EMOTIONS))
        assert pa.id == pb.id and pa.probability == pytest.approx(pb.probability, abs=1e-3)


def test_fit_head_needs_enough_annotated_lines_of_a_kind():
    X, labels = separable(MIN_LINES + 4, seed=5, classes=("happy", "sad", "neutral"))
    states = [(x, e, "none" if i % 2 else "take_item") for i, (x, e) in enumerate(zip(X, labels))]
    head, record = fit_head(states, ACTIONS)
    assert head.emotion is not None and head.action.classes == ACTIONS and head.dim == 24
    assert record["emotion"]["lines"] == MIN_LINES + 4 and record["action"]["lambda"] > 0
    few = [(x, e, "") for x, e, _ in states[: MIN_LINES - 1]]  # too few emotions, and no action at all
    assert fit_head(few, ACTIONS) == (None, {})


def test_a_head_is_stored_exactly_and_shows_in_the_summary(tmp_path):
    a = block_asset("smith", beats=True)
    b = read_asset(write_asset(a, tmp_path / "smith.nrole"))
    for kind in ("emotion", "action"):
        x, y = getattr(a.beats, kind), getattr(b.beats, kind)
        assert x.classes == y.classes and np.array_equal(x.W, y.W) and np.array_equal(x.b, y.b)
    assert b.summary()["beats"] == {"emotion": list(EMOTIONS), "action": ["quote_price", "none"]}
    assert read_asset(write_asset(block_asset("bard"), tmp_path / "bard.nrole")).beats is None


def test_pooled_beats_compare_every_line_with_its_roles_majority():
    """Two roles, ten lines: each system's pooled accuracy is its share of right picks, its difference from the
    majority class is paired line by line, and the interval holds the difference."""
    beats = {
        "a": {"truth": [["happy", "none"]] * 4 + [["sad", "give"]] * 2, "majority": ["happy", "none"],
              "predicted": {"learned": [["happy", "none"]] * 4 + [["sad", "give"]] * 2,
                            "neeko": [["happy", "none"]] * 6}},
        "b": {"truth": [["neutral", ""]] * 3 + [["angry", ""]], "majority": ["neutral", ""],
              "predicted": {"learned": [["neutral", ""]] * 3 + [["neutral", ""]], "neeko": [["angry", ""]] * 4}},
    }
    out = pooled(beats)
    e = out["emotion"]["systems"]
    assert out["emotion"]["items"] == 10
    assert e["majority"]["accuracy"] == pytest.approx(7 / 10)
    assert e["learned"]["accuracy"] == pytest.approx(9 / 10) and e["learned"]["difference"] == pytest.approx(0.2)
    assert e["neeko"]["accuracy"] == pytest.approx(5 / 10)
    lo, hi = e["learned"]["difference_ci"]
    assert lo <= 0.2 <= hi and e["learned"]["half_width"] == pytest.approx((hi - lo) / 2)
    # role b has no annotated action: the action pool holds role a's six lines only
    assert out["action"]["items"] == 6 and out["action"]["systems"]["learned"]["accuracy"] == 1.0
    assert out["emotion"]["lines_for_10_points"] == math.ceil(10 * (e["learned"]["half_width"] / 0.1) ** 2)


def test_with_no_signal_the_bias_decides():
    clf = Classifier(("none", "wave"), np.zeros((2, 3), np.float32), np.array([0.0, 1.0], np.float32))
    beat = clf.pick(np.zeros(3), ["none", "wave"])
    assert beat.id == "wave" and beat.probability == pytest.approx(math.e / (1 + math.e))


def test_the_bake_trains_the_beat_question_only_where_no_head_will_answer():
    """A bake trains a role's lines alone when fit_head will give it a head for every kind its lines annotate;
    a kind with too few lines for a head brings the question's training examples back, as --beat-question does."""
    from neeko_npc.neeko.bake import question_trained
    from neeko_npc.neeko.beat_head import declared_actions
    from neeko_npc.roles.dialogue import parse_scene
    from neeko_npc.roles.profile import RoleProfile

    smith = RoleProfile("smith", "Bram", "A gruff smith.")
    rng = np.random.default_rng(0)

    def scenes(emotions: int, actions: int):
        out = []
        for i in range(max(emotions, actions, 1)):
            line = {"speaker": "smith", "text": f"Aye, {i}."}
            if i < emotions:
                line["emotion"] = ("happy", "angry")[i % 2]
            if i < actions:
                line["action"] = ACTIONS[i % 2]
            out.append(parse_scene({"actions": list(ACTIONS) if actions else [],
                                    "turns": [{"speaker": "player", "text": "Well?"}, line]}, f"scene {i}"))
        return out

    seen = set()
    for emotions, actions in ((MIN_LINES, MIN_LINES), (MIN_LINES, 0), (0, MIN_LINES), (0, 0),
                              (MIN_LINES, MIN_LINES - 1), (MIN_LINES - 1, 0), (MIN_LINES - 1, MIN_LINES)):
        sc = scenes(emotions, actions)
        states = [(rng.normal(size=8), t.emotion, t.action) for s in sc for t in s.turns if t.speaker == "smith"]
        head, _ = fit_head(states, declared_actions(sc))
        fitted = {k for k in ("emotion", "action") if head is not None and getattr(head, k) is not None}
        annotated = {k for k, n in (("emotion", emotions), ("action", actions)) if n}
        assert question_trained(smith, sc, beat_question=False) == (fitted != annotated), (emotions, actions)
        assert question_trained(smith, sc, beat_question=True)
        seen.add(fitted != annotated)
    assert seen == {True, False}


def test_a_lines_feature_is_the_state_at_its_last_token_under_the_roles_block():
    """line_states (what the bake fits a head on) on a tiny random llama: one state per annotated line of the role,
    each the final norm's output at the line's last token under the role's block, the same as a forward of the
    scene cut right after that token; unannotated lines and other speakers give none, and a scene cut at max_len
    loses the lines past it. Called outside torch.no_grad, as the eval calls it."""
    import torch

    from neeko_npc.neeko.beat_head import line_states
    from neeko_npc.neeko.data import _ids, scene_messages
    from neeko_npc.neeko.model import NeekoLoRA
    from neeko_npc.roles.dialogue import Scene, Turn
    from neeko_npc.roles.profile import RoleProfile
    from tests.tiny import randomize_blocks, tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    neeko = NeekoLoRA(tiny_llama(), r=4, alpha=8)
    neeko.add_role("smith")
    neeko.add_role("bard")
    randomize_blocks(neeko)
    smith = RoleProfile(id="smith", name="Smith", persona="a smith")
    scene = Scene(turns=(Turn("player", "a sword?"), Turn("smith", "ten coins.", "happy", "quote_price"),
                         Turn("bard", "too dear!"), Turn("smith", "then walk."), Turn("player", "fine."),
                         Turn("smith", "good.", "neutral", "none")), scene="the forge")
    got = line_states(neeko, tok, smith, [scene], "smith")
    assert [(e, a) for _, e, a in got] == [("happy", "quote_price"), ("neutral", "none")]

    msgs = scene_messages(smith, scene)
    ids = _ids(tok, msgs)
    ends = [i for i, t in enumerate(ids) if t == tok.convert_tokens_to_ids(tok.eos_token)]
    said = [ids[:e] for e in ends]  # the scene up to each message's end of turn
    for (h, _, _), text in zip(got, ("ten coins.", "good.")):
        cut = next(s for s in said if tok.decode(s).endswith(text))
        with torch.no_grad(), neeko.gate(neeko.weights(["smith"])):
            ref = neeko.model.base_model(input_ids=torch.tensor([cut])).last_hidden_state[0, -1].numpy()
        np.testing.assert_allclose(h, ref, rtol=1e-4, atol=1e-5)
    base = line_states(neeko, tok, smith, [scene], None)
    assert not np.allclose(base[0][0], got[0][0])  # the block changes the state it is read from

    first_end = len(next(s for s in said if tok.decode(s).endswith("ten coins.")))
    assert [e for _, e, _ in line_states(neeko, tok, smith, [scene], "smith", max_len=first_end + 1)] == ["happy"]
