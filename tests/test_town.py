"""Kept conversation states (KV snapshots) on the real model: a restored state speaks exactly as the hot context it
came from, a state is never restored under another adapter set, the budget holds, and a reloaded role's states go."""

import shutil

import pytest

from neeko_npc.engine.facade import EngineConfig
from neeko_npc.engine.llama_engine import LlamaEngine
from neeko_npc.engine.stream import GenOptions
from neeko_npc.roles.profile import RoleProfile
from neeko_npc.roles.prompt import SceneInfo

pytestmark = pytest.mark.slow  # the real model

MiB = 1024 * 1024
SCENE = SceneInfo(location="the smithy", time_of_day="dusk")


@pytest.fixture(scope="module")
def roles(baked, tmp_path_factory):
    d = tmp_path_factory.mktemp("town") / "roles"
    shutil.copytree(baked["before"], d)  # smith and bard
    return d


@pytest.fixture
def engine(roles):
    engines = []

    def make(folder=roles, **cfg):
        # contrast 0: these tests count kept states and warm files, one a role (contrast keeps the base model's too)
        e = LlamaEngine(folder, config=EngineConfig(pool_size=1, n_threads=2, **{"contrast": 0.0, **cfg}))
        engines.append(e)
        assert e.warmed.wait(120)
        return e

    yield make
    for e in engines:
        e.close()


def line(e, npc, text, session="", **kw):
    """(reply text, last chunk) of a greedy line."""
    reply = e.say(npc, text, SCENE, GenOptions(temperature=0.0, max_tokens=20), session=session, **kw)
    chunks = list(reply.chunks)
    return "".join(c.text for c in chunks), chunks[-1]


def kept_keys(e):
    return [s.key for s in e.store._items.values()]


def test_the_first_line_after_start_up_reads_only_its_scene_and_line(engine):
    e = engine()
    assert e.warm_summary.startswith("warm: 2 role prefix(es)") and e.snapshot_stats()["count"] == 2
    _, last = line(e, "smith", "Good evening.")
    prefix = e.profile_prefix(e.role("smith").asset.profile)
    assert last.cache == "snapshot" and last.cached_tokens == len(prefix) > 50
    _, last = line(e, "bard", "Good evening.")  # the one context held the smith: the bard's prefix comes from its snapshot
    assert last.cache == "snapshot" and last.cached_tokens == len(e.profile_prefix(e.role("bard").asset.profile))


def test_a_restored_state_speaks_exactly_as_the_hot_context_did(engine):
    e = engine()
    e.forget_cache()
    first = line(e, "smith", "Can you mend my sword?", "hot")
    hot = line(e, "smith", "How much will it cost?", "hot")
    assert hot[1].cache == "hot" and hot[1].cached_tokens > first[1].prompt_tokens

    e.forget_cache()
    assert line(e, "smith", "Can you mend my sword?", "kept") == first  # the same cold start
    line(e, "bard", "Sing us something.")  # the only context goes to the bard; the smith's conversation is kept
    restored = line(e, "smith", "How much will it cost?", "kept")
    assert restored[1].cache == "snapshot" and restored[1].cached_tokens == hot[1].cached_tokens
    assert restored[0] == hot[0] and hot[0].strip()


def test_a_state_is_never_restored_under_another_adapter_set(engine):
    e = engine()
    smith = e.role("smith").asset.profile
    echo = RoleProfile(id="smith_echo", name=smith.name, persona=smith.persona, style=smith.style,
                       knowledge=smith.knowledge, example_lines=list(smith.example_lines))
    blend = [("smith", 0.5), ("bard", 0.5)]
    # the procedural NPC's prompt is the smith's, token for token: only the adapter set differs
    assert e.build_prompt(echo, "", "smith_echo", "Hello there.", SCENE, 20) == e.build_prompt(smith, "", "smith", "Hello there.", SCENE, 20)
    e.forget_cache()
    line(e, "smith", "Hello there.")
    smith_key = (( e.role("smith").asset.sha256, 1.0),)
    mixed = line(e, "smith_echo", "Hello there.", blend=blend, profile=echo)
    assert smith_key in kept_keys(e)  # the smith's state for those very tokens was kept when the context went ...
    assert mixed[1].cache == "cold" and mixed[1].cached_tokens == 0  # ... and not used
    e.forget_cache()
    assert line(e, "smith_echo", "Hello there.", blend=blend, profile=echo)[0] == mixed[0]  # a cold line, same text


def test_eviction_keeps_the_budget(engine):
    budget = 6 * MiB  # two or so conversations of this length
    e = engine(snapshot_bytes=budget)
    for i in range(6):
        line(e, ("smith", "bard")[i % 2], f"Tell me story number {i}.", session=f"s{i}")
        assert e.store.nbytes <= budget
    stats = e.snapshot_stats()
    assert stats["evicted"] > 0 and stats["stored"] > stats["count"] > 0


def test_a_reloaded_role_takes_its_states_with_it(engine, roles, tmp_path):
    folder = tmp_path / "roles"
    shutil.copytree(roles, folder)
    e = engine(folder)
    smith_sha, bard_sha = e.role("smith").asset.sha256, e.role("bard").asset.sha256
    line(e, "smith", "Can you mend my sword?", "s")
    line(e, "bard", "Sing us something.")  # the smith's conversation is kept beside the smith's warm prefix
    assert sum(smith_sha in dict(k) for k in kept_keys(e)) == 2
    (folder / "smith.nrole").unlink()
    assert e.reload().removed == ["smith"]
    keys = kept_keys(e)
    assert not any(smith_sha in dict(k) for k in keys) and any(bard_sha in dict(k) for k in keys)
    assert e.snapshot_stats()["dropped"] == 2


def test_a_line_asked_for_during_the_warm_up_is_served_at_once(roles, tmp_path):
    """24 roles take the warm-up many seconds; a line asked for as soon as the engine is up is served meanwhile,
    on its own context, not queued behind the warm-up."""
    from neeko_npc.bench.town import town_roles
    from neeko_npc.roles.folder import load_role_assets

    blocks, _ = load_role_assets(roles)
    npcs = town_roles(blocks, 24, tmp_path / "town")
    e = LlamaEngine(tmp_path / "town", config=EngineConfig(pool_size=2, n_threads=2, contrast=0.0))  # as the fixture's
    try:
        assert not e.warmed.is_set()
        text, last = line(e, npcs[-1], "Good morning!")
        assert text.strip() and last.finish in ("stop", "length")
        assert not e.warmed.is_set()  # the line ended while the warm-up was still going
        assert e.warmed.wait(300) and e.warm_summary.startswith("warm: 24 role prefix(es)")
    finally:
        e.close()


def kept_p50(tw: dict) -> float:
    return tw["runs"]["snapshots"]["levels"]["1"]["ttft_ms"]["p50"]


def test_the_bench_town_day_with_and_without_kept_states(roles, tmp_path):
    """`bench`'s town section, small: every line served and counted, the warm prefixes serve the first visits, the
    baseline keeps nothing, kept states stay in budget, and the table shows the runs and the town's targets."""
    from neeko_npc.bench.report import table, targets
    from neeko_npc.bench.run import BenchConfig, BenchResult, machine, run_town
    from neeko_npc.roles.folder import load_role_assets

    blocks, _ = load_role_assets(roles)
    cfg = BenchConfig(quick=True, sizes=dict(town_npcs=4, town_levels=[1, 2], town_stops=3, town_tokens=8, town_walk_s=0.5))
    tw = run_town(cfg, blocks, tmp_path / "town")
    assert tw["npcs"] == 4 and list(tw["runs"]) == ["snapshots", "baseline", "walks", "pool 8", "beside a game"]
    beside = tw["runs"]["beside a game"]  # the day of one player again, beside a neighbour keeping every core busy
    assert list(beside["levels"]) == ["1"] and beside["neighbours"] == 1
    assert tw["beside_over_quiet"] == beside["levels"]["1"]["ttft_ms"]["p50"] / kept_p50(tw)
    kept, base = tw["runs"]["snapshots"]["levels"], tw["runs"]["baseline"]["levels"]
    assert list(kept) == list(base) == ["1", "2"] and list(tw["runs"]["pool 8"]["levels"]) == ["8"]
    for one_run in tw["runs"].values():
        for k, v in one_run["levels"].items():
            assert v["errors"] == 0 and v["lines"] == int(k) * 5  # 3 stops: two conversations of two lines, one bark
            assert sum(v["served"].values()) == v["lines"]
            assert not one_run["snapshots"] or 0 < v["snapshot_bytes_peak"] <= v["snapshot_budget"]
    one = kept["1"]
    assert one["served"] == {"hot": 2, "snapshot": 3, "cold": 0}  # first visits and the bark from warm prefixes
    assert one["ttft_ms_by_kind"]["follow-up"]["n"] == 2 and one["ttft_ms_by_kind"]["first visit"]["n"] == 2
    assert base["1"]["served"] == {"hot": 2, "snapshot": 0, "cold": 3}  # the baseline reads each first line whole
    assert all(v["snapshots"] == 0 for v in base.values())
    # the first engine warms from nothing (the run's own folder, not an earlier run's files); the next restore it
    assert tw["runs"]["snapshots"]["warm_up"].startswith("warm: 4 role prefix(es), 0 restored from saved states, 4 prefilled")
    assert tw["runs"]["walks"]["warm_up"].startswith("warm: 4 role prefix(es), 4 restored from saved states, 0 prefilled")
    assert len(list((tmp_path / "town" / "warm").iterdir())) >= 4
    # walking up: every visit (first, repeat, bark) was prepared; at 1 player none was skipped and each line,
    # first visits included, read only itself from a hot context
    walks = tw["runs"]["walks"]["levels"]
    assert walks["1"]["prepared"]["calls"] == 3 and walks["1"]["prepared"]["skipped"] == 0
    assert walks["1"]["served"] == {"hot": 5, "snapshot": 0, "cold": 0}
    assert walks["2"]["prepared"]["calls"] == 6 and not kept["1"]["prepared"]

    r = BenchResult(machine(), "in-process", True, town=tw)
    text = table(r)
    assert "Town: 4 NPCs" in text and "baseline (pool 4)" in text and "pool 8 (pool 8)" in text
    assert "walks, 1 player(s): 3 visits prepared 0.5 s ahead, 0 skipped" in text
    got = {t.key: t for t in targets(r)}
    assert set(got) == {"town_1", "town_first", "town_1_walks", "town_first_walks", "town_8_ttft", "town_8_rate",
                        "town_8_errors", "town_budget", "town_beside"}
    assert got["town_budget"].met and got["town_8_errors"].met
    for t in got.values():
        assert f"[{'met' if t.met else 'MISSED'}] {t.target}: {t.shown}" in text


def test_a_prepared_line_reads_only_itself(engine):
    """The player walks up: prepare reads the NPC's prompt up to the player's line (its warm profile prefix
    restored, then the scene), and the line that follows starts from there, like a follow-up."""
    e = engine()
    profile = len(e.profile_prefix(e.role("smith").asset.profile))
    p = e.prepare("smith", SCENE, session="walk")
    assert p.skipped == "" and p.role_id == "smith" and p.cache == "snapshot"
    assert p.read_tokens == p.prompt_tokens - profile > 0  # the scene, and the chat markup before the line
    again = e.prepare("smith", SCENE, session="walk")
    assert (again.cache, again.read_tokens, again.prompt_tokens) == ("hot", 0, p.prompt_tokens)
    _, last = line(e, "smith", "Can you mend my sword?", "walk")
    assert last.cache == "hot" and last.cached_tokens == p.prompt_tokens < last.prompt_tokens

    # the next visit: the context went to the bard meanwhile, and the session now remembers an exchange
    line(e, "bard", "Sing us something.")
    p2 = e.prepare("smith", SCENE, session="walk")
    assert p2.cache == "snapshot" and p2.prompt_tokens > last.prompt_tokens  # the remembered exchange is in it
    assert 0 < p2.read_tokens < p2.prompt_tokens - p.prompt_tokens  # most of the conversation came back from its state
    _, last = line(e, "smith", "How much will it cost?", "walk")
    assert last.cache == "hot" and last.cached_tokens == p2.prompt_tokens

    # a bark (the NPC speaks first) is prepared the same way
    p3 = e.prepare("bard", SCENE)
    _, last = line(e, "bard", "")
    assert last.cache == "hot" and last.cached_tokens == p3.prompt_tokens > 0


def test_prepare_is_a_hint_that_never_waits_and_checks_like_say(engine):
    from neeko_npc.errors import BadRequest, UnknownRole

    e = engine()
    reply = e.say("smith", "Tell me about your forge.", SCENE, GenOptions(temperature=0.0, max_tokens=16))
    chunks = iter(reply.chunks)
    next(chunks)  # the one context is streaming the smith's line
    p = e.prepare("bard", SCENE)
    assert p.read_tokens == 0 and p.cache == "" and "busy" in p.skipped
    assert list(chunks)[-1].finish in ("stop", "length")  # the line in flight was not disturbed
    with pytest.raises(UnknownRole):
        e.prepare("nobody", SCENE)
    with pytest.raises(BadRequest):
        e.prepare("smith", SceneInfo(location="x" * 9000))
    assert e.prepare("bard", SCENE).skipped == ""  # the context is free again

    off = engine(snapshot_bytes=0)
    assert "--snapshot-mib 0" in off.prepare("smith", SCENE).skipped


def test_a_second_start_restores_the_saved_warm_prefixes_and_speaks_alike(engine, tmp_path):
    """The first start prefills each role's prefix and saves it; the next start on the same folders restores them
    instead (nothing prefilled), and a line served from a restored prefix is the line served from a computed one."""
    saved = tmp_path / "warm"
    first = engine(warm_save_dir=saved)
    assert first.warm_restored == 0 and len(list(saved.glob("*.kv"))) == 2
    text, last = line(first, "smith", "Good evening.")
    assert last.cache == "snapshot"
    again = engine(warm_save_dir=saved)
    assert again.warm_restored == 2 and again.warm_summary.startswith("warm: 2 role prefix(es), 2 restored")
    text2, last2 = line(again, "smith", "Good evening.")
    assert last2.cache == "snapshot" and last2.cached_tokens == last.cached_tokens and text2 == text
    # a damaged file is not restored: that role is prefilled again, the other still restored
    victim = sorted(saved.glob("*.kv"))[0]
    victim.write_bytes(victim.read_bytes()[:-4096])
    third = engine(warm_save_dir=saved)
    assert third.warm_restored == 1 and third.warm_summary.startswith("warm: 2 role prefix(es), 1 restored")
