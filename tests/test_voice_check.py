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


def test_a_large_cast_checks_each_role_on_a_bounded_number_of_prompts(monkeypatch):
    """Each role of the set gives VOICE_CHECK_PROMPTS training prompts, fewer in a large cast (at least one), so a
    checked role answers at most VOICE_CHECK_MAX_PROMPTS at each contrast whatever the cast's size; every role of
    the set still gives prompts, and each reply is judged against the role that said it."""
    from neeko_npc.neeko import voice_check as vc
    from neeko_npc.neeko.bake import RoleSource
    from neeko_npc.roles.dialogue import Scene, Turn
    from neeko_npc.roles.profile import RoleProfile

    assert [vc.prompts_per_role(n) for n in (2, 5, 6, 10, 50, 100)] == [12, 12, 10, 6, 1, 1]

    def cast(n):
        return {f"r{i}": RoleSource(RoleProfile(id=f"r{i}", name=f"R{i}", persona="x"),
                                    [Scene((Turn("player", f"hello {i} {k}"), Turn(f"r{i}", f"line {i} {k}")))
                                     for k in range(20)], holdout=0.0) for i in range(n)}

    decoded = []

    def decode(neeko, tok, convs, weights, max_new_tokens, progress=None, contrast=0.0):
        decoded.append((contrast, convs, weights))
        progress(len(convs))
        # r0 sounds like itself only at contrast 0.5; every other role's replies sound like r1
        return ["r0" if w == {"r0": 1.0} and contrast == 0.5 else "r1" for w in weights]

    class Judge:
        def __init__(self, lines):
            assert sorted(lines) == sorted(sources)

        def classify(self, replies):
            return replies

    monkeypatch.setattr(vc, "generate_replies", decode)
    monkeypatch.setattr(vc, "CentroidClassifier", Judge)
    for n, per in ((3, 12), (20, 3)):
        sources, decoded = cast(n), []
        got = vc.voice_check(None, None, sources, ["r0", "r1"], progress=False)
        assert [c for c, _, _ in decoded] == list(defaults.VOICE_CHECK_CONTRASTS)
        for _, convs, weights in decoded:
            assert len(convs) == 2 * n * per and len(convs) <= 2 * defaults.VOICE_CHECK_MAX_PROMPTS
            heard = {m["content"].split()[1] for c in convs for m in c if m["role"] == "user"}
            assert heard == {str(i) for i in range(n)}  # every role of the set gave prompts
        assert got["r0"] == {"contrast": 0.5, "shares": {"0": 0.0, "0.5": 1.0, "1": 0.0}, "prompts": n * per}
        assert got["r1"]["contrast"] == 1.0 and got["r1"]["shares"]["0"] == 1.0
