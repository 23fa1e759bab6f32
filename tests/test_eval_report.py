"""The eval's statistics and pictures, on a tiny hand-made report (no model): bootstrap intervals for attribution,
differences called only where the intervals separate, and the heat-map PNG."""

import re

import numpy as np
import pytest

from neeko_npc.neeko.attribution import hits_by_role
from neeko_npc.neeko.intervals import bootstrap_accuracy, loss_difference, separated
from neeko_npc.neeko.eval_table import loop_verdict, report_table
from neeko_npc.neeko.evaluate import EvalReport


def test_bootstrap_intervals_hold_the_accuracy_and_narrow_with_more_prompts():
    perfect = bootstrap_accuracy({"smith": [True] * 10, "bard": [True] * 10})
    assert perfect["per_role"] == {"bard": [1.0, 1.0], "smith": [1.0, 1.0]} and perfect["mean"] == [1.0, 1.0]
    few = bootstrap_accuracy({"smith": [True, False] * 5})["per_role"]["smith"]
    many = bootstrap_accuracy({"smith": [True, False] * 200})["per_role"]["smith"]
    assert few[0] < 0.5 < few[1] and many[0] < 0.5 < many[1]
    assert many[1] - many[0] < (few[1] - few[0]) / 3  # 40x the prompts: about a sixth of the width
    assert bootstrap_accuracy({"smith": [True, False] * 5}, seed=3) == bootstrap_accuracy({"smith": [True, False] * 5}, seed=3)
    # the mean's interval is the interval of the mean of role accuracies, resampled role by role
    mixed = bootstrap_accuracy({"a": [True] * 8, "b": [False] * 8})
    assert mixed["mean"] == [0.5, 0.5]


def test_hits_and_separation():
    assert hits_by_role(["a", "b", "a", "a"], ["a", "a", "b", "a"]) == {"a": [True, False, True], "b": [False]}
    assert separated([0.6, 0.8], [0.2, 0.5]) and separated([0.2, 0.5], [0.6, 0.8])
    assert not separated([0.4, 0.7], [0.6, 0.8])


def report() -> EvalReport:
    rng = np.random.default_rng(0)
    roles = ["bard", "smith", "witch"]
    hits = {r: list(rng.random(30) < p) for r, p in zip(roles, (0.8, 0.7, 0.9))}
    flat = {r: list(rng.random(30) < 0.35) for r in roles}
    near = {r: list(rng.random(30) < 0.75) for r in roles}

    def system(h):
        acc = {r: float(np.mean(v)) for r, v in h.items()}
        return {"per_role": acc, "mean": float(np.mean(list(acc.values()))), "ci": bootstrap_accuracy(h)}

    neeko, in_context, real = system(hits), system(flat), system(near)
    comparisons = [{"a": "neeko", "b": b, "points": 100 * (neeko["mean"] - v["mean"]), "separated": separated(neeko["ci"]["mean"], v["ci"]["mean"])}
                   for b, v in (("in_context", in_context), ("real_held_out_lines", real))]
    return EvalReport(roles=roles, blocks=roles, confusion=[[2.9, 3.4, 3.5], [3.5, 3.1, 3.6], [3.3, 3.5, 2.7]],
                      in_context={"bard": 3.8, "smith": 3.9, "witch": 3.6}, diagonal_wins=1.0,
                      attribution={"prompts": 30, "real_held_out_lines": real["per_role"], "real_held_out_lines_ci": real["ci"],
                                   "systems": {"neeko": neeko, "in_context": in_context}, "comparisons": comparisons,
                                   "samples": {}})


def test_the_table_prints_intervals_and_calls_only_separated_differences():
    rep = report()
    text = report_table(rep)
    assert "95% interval" in text
    by_b = {c["b"]: c for c in rep.attribution["comparisons"]}
    assert by_b["in_context"]["separated"] and not by_b["real_held_out_lines"]["separated"]
    assert f"neeko vs in context: {by_b['in_context']['points']:+.0f} points, the intervals separate" in text
    assert "neeko vs real held out lines" in text and "within noise (the intervals overlap)" in text


def test_plot_writes_a_heat_map_png(tmp_path):
    from neeko_npc.neeko.eval_plot import plot  # matplotlib comes with the [test] extra

    out = plot(report(), tmp_path / "eval.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    without_attribution = report()
    without_attribution.attribution = {}
    assert plot(without_attribution, tmp_path / "matrix.png").stat().st_size > 10_000


def test_a_loss_difference_interval_excludes_zero_only_for_a_real_lead():
    rng = np.random.default_rng(0)
    counts = rng.integers(5, 40, size=30).astype(float)
    base = counts * rng.uniform(2.5, 3.5, size=30)  # per-example NLL sums
    better = (base - 0.4 * counts, counts)  # 0.4 nats a token lower on every example
    noisy = (base + counts * rng.normal(0, 0.3, size=30), counts)  # no lead, only noise
    lo, hi = loss_difference(better, (base, counts))
    assert -0.4 - 1e-9 <= lo <= hi <= -0.4 + 1e-9  # the same lead on every example: no spread at all
    lo, hi = loss_difference(noisy, (base, counts))
    assert lo < 0 < hi
    assert loss_difference(noisy, (base, counts), seed=1) == loss_difference(noisy, (base, counts), seed=1)


def test_the_table_prints_the_rows_intervals():
    rep = report()
    rep.intervals = {"level": 0.95, "rows": {
        "bard": {"own_vs_in_context": [-0.95, -0.85], "next_block": "witch", "own_vs_next_block": [-0.45, -0.35]},
        "smith": {"own_vs_in_context": [-0.9, -0.7], "next_block": "bard", "own_vs_next_block": [-0.5, 0.1]},
        "witch": {"own_vs_in_context": [-1.0, -0.8], "next_block": "bard", "own_vs_next_block": [-0.7, -0.5]}}}
    text = report_table(rep)
    assert "smith           bard           [-0.500, +0.100]   in-context [-0.900, -0.700]" in text
    assert "own block lowest beyond noise in 2/3 rows; below in-context beyond noise in 3/3" in text


def test_a_reply_that_loops_is_counted_as_repeating():
    from neeko_npc.neeko.attribution import repeats

    assert repeats("Aye, aye, aye, aye, aye, a")  # what the base model says under a thin profile
    assert repeats("Why, I am a man of the world, and I am a man of")
    assert not repeats("What, Hal! what a pox have I to do with my hostess of the tavern?")
    assert not repeats("Aye aye.") and not repeats("")


def test_a_loop_is_cut_where_it_starts_saying_again_what_it_said():
    from neeko_npc.neeko.attribution import loop_start, until_loop

    assert until_loop("Aye, aye, aye, aye, aye, a") == "Aye,"
    assert until_loop("Why, I am a man of the world, and I am a man of") == "Why, I am a man of the world, and"
    assert loop_start("Why, I am a man of the world, and I am a man of") == 9
    line = "What, Hal! what a pox have I to do with my hostess of the tavern?"
    assert until_loop(line) == line and loop_start(line) is None  # no run of three words comes twice
    assert until_loop("") == "" and until_loop("I said it. I said it.") == "I said it."


def test_coherence_beside_prompting_is_called_worse_only_beyond_noise():
    from neeko_npc.neeko.intervals import paired_accuracy

    rng = np.random.default_rng(0)
    in_context = list(rng.random(60) < 0.3)
    louder = [x or r < 0.5 for x, r in zip(in_context, rng.random(60))]  # loops wherever prompting does, and more
    level = [x if r < 0.85 else not x for x, r in zip(in_context, rng.random(60))]  # a few replies differ either way
    rep = report()
    rep.attribution["loops_vs_in_context"] = paired_accuracy(
        {"neeko": louder, "in_context": in_context, "shared_lora": level}, "in_context")
    text = report_table(rep)
    worse = rep.attribution["loops_vs_in_context"]["systems"]["neeko"]
    assert worse["difference"] > 0.2 and worse["difference_ci"][0] > 0
    assert f"replies that loop, neeko against in-context (paired): {100 * worse['difference']:+.0f} points" in text
    assert f"{100 * worse['difference_ci'][1]:+.0f}], more, beyond noise" in text
    same = rep.attribution["loops_vs_in_context"]["systems"]["shared_lora"]
    assert same["difference_ci"][0] < 0 < same["difference_ci"][1]
    assert re.search(r"shared lora against in-context \(paired\): [+-]\d+ points \[-\d+, \+\d+\], within noise", text)
    assert loop_verdict([-0.3, -0.1]) == "fewer, beyond noise" and loop_verdict([-0.1, 0.05]) == "within noise"


@pytest.mark.slow  # loads the MiniLM encoder
def test_a_reply_that_takes_up_what_was_said_is_nearer_to_it_than_one_that_could_follow_anything():
    from neeko_npc.neeko.attribution import on_topic

    said = "How much for the longsword on the wall?"
    sims = on_topic([said, said, said, None],
                    ["That blade is forty crowns, and worth every one.", "I'm not sure.", "Aye, aye, aye, aye.",
                     "Welcome to my forge."])
    assert len(sims) == 3  # the scene the NPC opens has nothing to answer: left out
    answer, flat, loop = sims
    assert answer > flat and answer > loop
    assert on_topic([said], [said])[0] > 0.99 > answer  # repeating the line back scores highest: why real lines are shown
    assert on_topic([None], ["anything"]) == [] and on_topic(["Hello."], [""]) != []  # an empty reply is still judged


def test_on_topic_beside_prompting_is_called_only_beyond_noise():
    from neeko_npc.neeko.eval_table import topic_difference
    from neeko_npc.neeko.intervals import paired_accuracy

    rng = np.random.default_rng(0)
    in_context = list(rng.uniform(0.1, 0.4, 60))
    nearer = [x + 0.1 for x in in_context]
    level = [x + rng.normal(0, 0.05) for x in in_context]
    rep = report()
    coherence = {"base_perplexity": {"value": 9.0, "ci": [8.0, 10.0]}, "mean_words": 8.0, "repeating": 0.1}
    rep.attribution["real_lines"] = {**coherence, "on_topic": 0.31}
    for system in rep.attribution["systems"].values():
        system.update(coherence)
    rep.attribution["on_topic_vs_in_context"] = paired_accuracy(
        {"neeko": nearer, "in_context": in_context, "shared_lora": level}, "in_context")
    text = report_table(rep)
    assert "on topic: the MiniLM cosine of a reply with the line it answers (60 prompts that answer one): real lines 0.310" in text
    assert "on topic, neeko against in-context (paired): +0.100 [+0.100, +0.100], nearer, beyond noise" in text
    assert re.search(r"on topic, shared lora against in-context \(paired\): [+-]0\.\d{3} \[-0\.\d{3}, \+0\.\d{3}\], within noise", text)
    assert topic_difference({"difference": -0.1, "difference_ci": [-0.2, -0.05]}).endswith("further, beyond noise")
