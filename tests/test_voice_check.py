"""The bake's voice check (neeko/voice_check.py) and the eval's replies at each role's own contrast. The check on the
real model, and the eval reading each file's contrast, are test_real_model.py's (the session bake)."""

from neeko_npc import defaults
from neeko_npc.neeko import evaluate
from neeko_npc.neeko.evaluate import EvalConfig
from neeko_npc.neeko.voice_check import choose_contrast


def test_a_role_keeps_the_contrast_its_replies_were_most_often_recognised_at():
    assert choose_contrast({0.0: 0.42, 0.5: 0.15, 1.0: 0.12}) == 0.0
    assert choose_contrast({0.0: 0.10, 0.5: 0.30, 1.0: 0.25}) == 0.5
    # a tie goes to the contrast nearest the served default
    assert choose_contrast({0.0: 0.3, 0.5: 0.3, 1.0: 0.3}) == defaults.CONTRAST
    assert choose_contrast({0.0: 0.5, 0.5: 0.5, 1.0: 0.1}) == 0.5


def test_the_evals_replies_are_decoded_at_each_rows_contrast_and_come_back_in_order(monkeypatch):
    """Rows at several contrasts: each contrast's rows go to the decoder together, at that contrast, and every
    reply comes back to its own row."""
    calls = []

    def decode(neeko, tok, convs, weights, max_new_tokens, progress=None, sampling=None, seed=0, contrast=0.0):
        calls.append((contrast, list(convs)))
        return [f"{c} at {contrast:g} as {w}" for c, w in zip(convs, weights)]

    monkeypatch.setattr(evaluate, "generate_replies", decode)
    convs, weights = ["p0", "p1", "p2", "p3"], ["a", "b", "a", "c"]
    got = evaluate._replies(None, None, convs, weights, [1.0, 0.0, 1.0, 0.5], EvalConfig(), None)
    assert got == ["p0 at 1 as a", "p1 at 0 as b", "p2 at 1 as a", "p3 at 0.5 as c"]
    assert calls == [(0.0, ["p1"]), (0.5, ["p3"]), (1.0, ["p0", "p2"])]
