"""The bake's voice check (neeko/voice_check.py) and the eval's replies at each role's own contrast. The check on the
real model, and the eval reading each file's contrast, are test_real_model.py's (the session bake)."""

from neeko_npc import defaults
from neeko_npc.neeko import evaluate
from neeko_npc.neeko.evaluate import EvalConfig
from neeko_npc.neeko.voice_check import choose_contrast, hits_text, stored_hits


def hits(share: float, n: int = 48, *, wrong_first: bool = False) -> list[bool]:
    """n replies of which round(share * n) were recognised, the misses first or last."""
    k = round(share * n)
    return [False] * (n - k) + [True] * k if wrong_first else [True] * k + [False] * (n - k)


def test_a_role_speaks_at_the_lowest_contrast_heard_within_noise_of_its_best():
    # the best contrast, beyond noise: kept
    assert choose_contrast({0.0: hits(0.42), 0.5: hits(0.15), 1.0: hits(0.12)}) == 0.0
    assert choose_contrast({0.0: hits(0.10), 0.5: hits(0.90), 1.0: hits(0.88)}) == 0.5
    assert choose_contrast({0.0: hits(0.20), 0.5: hits(0.40), 1.0: hits(0.90)}) == 1.0
    # a tie, or two replies in 48 fewer on the same prompts: within noise, so the lower contrast
    assert choose_contrast({0.0: hits(0.3), 0.5: hits(0.3), 1.0: hits(0.3)}) == 0.0
    assert choose_contrast({0.0: [False, False] + hits(0.5)[2:], 0.5: hits(0.5), 1.0: hits(0.1)}) == 0.0
    # ... but the same prompts lost every time, ten in 48, are beyond noise
    assert choose_contrast({0.0: hits(0.5)[:14] + [False] * 34, 0.5: hits(0.5), 1.0: hits(0.1)}) == 0.5
    # the same shares on different prompts are noisier than on the same ones: 56% against 73%, paired both ways
    same = {0.0: hits(0.56), 1.0: hits(0.73)}
    crossed = {0.0: hits(0.56, wrong_first=True), 1.0: hits(0.73)}
    assert choose_contrast(same) == 1.0 and choose_contrast(crossed) == 0.0


def test_a_stored_check_gives_back_its_hits():
    h = {0.0: [True, False, True], 0.5: [False, False, True]}
    stored = {"hits": {f"{c:g}": hits_text(x) for c, x in h.items()}}
    assert stored == {"hits": {"0": "101", "0.5": "001"}} and stored_hits(stored) == h
    assert stored_hits({"contrast": 1.0, "shares": {"1": 0.5}}) == {}  # a check stored before hits were


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
        every = n * per
        assert got["r0"] == {"contrast": 0.5, "shares": {"0": 0.0, "0.5": 1.0, "1": 0.0}, "prompts": every,
                             "hits": {"0": "0" * every, "0.5": "1" * every, "1": "0" * every}}
        # r1's replies are given to it at every contrast: the lowest
        assert got["r1"]["contrast"] == 0.0 and got["r1"]["shares"] == {"0": 1.0, "0.5": 1.0, "1": 1.0}
