"""`neeko-npc bench` on the real model: every section runs and its figures hang together.

Nothing here is timed against a threshold (timings belong to the benchmark's own report); the tests
check that each section measured what it says: prefixes were reused, no stream failed, the baselines
were built and run, the memory rows come from daemons that loaded the asked number of roles.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from neeko_npc.bench.run import QUICK, BenchConfig, run_bench
from neeko_npc.engine.facade import EngineConfig
from neeko_npc.engine.llama_engine import LlamaEngine
from neeko_npc.server.app import Daemon, ServerConfig
from tests.conftest import run

pytestmark = pytest.mark.slow  # the real model

SHIPPED = Path(__file__).parent.parent / "assets" / "roles"
MiB = 1024 * 1024


# `bench --quick` through the CLI, with fewer repetitions still: every section and every code path runs, each fewer
# times (what the tests check is that each section measured what it says, not how precisely).
SMALLER = dict(ttft_reps=1, switch_reps=2, levels=[1, 4], decode_tokens=8, decode_rounds=1, adapter_switch_reps=6,
               reload_reps=1, mixture_blocks=6, neighbour_reps=1)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("neeko_npc.bench.run.QUICK", {**QUICK, **SMALLER})
        text = run("bench", "--quick", "--no-town", "--roles", SHIPPED, "--json", d / "bench.json", "--plot",
                   d / "bench.png", "--quiet")  # the town section: test_town.py
    return text, json.loads((d / "bench.json").read_text()), d / "bench.png"


def test_bench_quick_measures_every_section(quick_report):
    text, r, _ = quick_report
    roles = r["roles"]
    assert r["mode"] == "in-process" and r["quick"] and len(roles) == 6 and r["problems"] == {}

    t = r["ttft"]
    assert t["errors"] == [] and t["first_line_ms"]["n"] == SMALLER["ttft_reps"]
    # A first line starts cold; the follow-up reuses the conversation's prefix; the cold replay has the same prompt.
    assert all(row["first_cached_tokens"] == 0 for row in t["rows"])
    assert all(0 < row["follow_cached_tokens"] < row["follow_prompt_tokens"] for row in t["rows"])
    assert all("cold_same_ms" in row for row in t["rows"]) and t["follow_over_cold"] > 0

    sw = r["switching"]
    assert sw["errors"] == [] and set(sw) >= {"repeat", "alternate_2", "rotate_all"}
    assert sw["repeat"]["cached_tokens"]["p50"] > 0  # the NPC's system prompt stayed cached
    assert sw["alternate_2"]["cached_tokens"]["p50"] > 0  # two NPCs, four contexts: both stay cached

    c = r["concurrency"]
    assert sorted(c, key=int) == ["1", "4"]
    for k, v in c.items():
        assert v["errors"] == 0 and v["lines"] == int(k) and v["completion_tokens"] > 0 and v["aggregate_tok_s"] > 0

    b = r["beats"]  # the same greedy line without a beat, with the question and with the NPC's learned beat
    assert b["errors"] == [] and b["same_lines"] and b["line_ms"]["n"] == b["with_beats_ms"]["n"] == QUICK["beat_reps"]
    # what a beat adds is paired: each round's beat time minus its own line's (rounds differ in NPC and line)
    assert b["extra_ms"] == b["extra"]["p50"] and b["extra"]["n"] == QUICK["beat_reps"]
    assert b["extra"]["min"] > 0  # the question is read after its own line, so in every round it adds time
    assert b["with_learned_ms"]["n"] == QUICK["beat_reps"]  # the first roles (blacksmith, guard captain) learned theirs
    assert b["learned_extra_ms"] == b["learned_extra"]["p50"] and "with its learned beat" in text

    cv = r["converse"]  # changing speaker between the turns of a Converse, every turn a new speaker
    assert cv["errors"] == [] and sorted(k for k in cv if k != "errors") == ["2", "3"]
    for k in ("2", "3"):
        assert cv[k]["turns"] == QUICK["converse_turns"] and cv[k]["changes"] == QUICK["converse_turns"] - 1
        assert cv[k]["gap_ms"]["n"] == QUICK["converse_turns"] - 1 and cv[k]["gap_ms"]["p50"] > 0
    assert "Converse: from one turn's end" in text

    dec = {row["key"]: row for row in r["decode"]}
    assert list(dec) == ["base", "one_role", "one_role_contrast", "fused", "merged", "dense", "dense_many"]
    assert dec["base"]["name"] == "base model alone" and dec["one_role"]["name"].startswith("neeko: one role")
    assert dec["base"]["blocks"] == 0 and dec["one_role"]["blocks"] == 1 and dec["merged"]["blocks"] == 0
    assert dec["one_role_contrast"]["name"].startswith("neeko: one role, contrast 1 ") and dec["one_role_contrast"]["blocks"] == 1
    assert dec["fused"]["blocks"] == 3  # young_guard mixes three blocks
    assert dec["dense"]["blocks"] == 5 and dec["dense_many"]["blocks"] == 6  # the 5 trained and a copy of one
    assert all(v["decode_tok_s"]["p50"] > 0 and v["decode_tok_s"]["n"] == SMALLER["decode_rounds"] for v in dec.values())

    sw1 = r["adapter_switch"]
    assert sw1["repeat_ms"]["n"] == SMALLER["adapter_switch_reps"] and sw1["set_adapters_us"]["p50"] > 0 and sw1["prompt_tokens"] == 16
    assert r["reload_per_npc"]  # the one-model-per-NPC baseline ran

    mem = r["memory"]
    rows = {row["count"]: row for row in mem["rows"]}
    assert sorted(rows) == [0, 2] and all(rows[n]["roles"] == n for n in rows)  # each daemon listed n roles
    assert all(row["rss_bytes"] > 100 * MiB for row in rows.values())
    assert rows[0]["nrole_bytes"] == 0 and rows[2]["nrole_bytes"] > 0 and rows[2]["adapter_cache_bytes"] > 0
    # the rows' roles are copies of the shipped blocks under new ids: each file the size of a shipped block file
    assert mem["nrole_bytes_per_role"] == pytest.approx((SHIPPED / "blacksmith.nrole").stat().st_size, rel=0.01)
    merged = mem["merged_models"]
    assert [m["count"] for m in merged] == [1, 2] and merged[1]["disk_bytes"] == pytest.approx(2 * merged[0]["disk_bytes"], rel=0.01)

    assert r["town"] == {} and "Town:" not in text  # --no-town
    st = r["startup"]  # `neeko-npc serve` started twice, on an empty cache and on what the first start left
    assert list(st) == ["serve, first start", "serve, next start"] and "Start-up: a server process" in text
    for row in st.values():
        assert row["errors"] == [] and row["ready_s"]["n"] == 1 and 0 < row["ready_s"]["p50"] < 120
        assert row["first_ttft_ms"]["p50"] > 0 and row["follow_ttft_ms"]["p50"] > 0 and row["stop_s"]["p50"] < 2.0
    nb = r["neighbours"]  # hot and cold lines on a quiet machine and beside a busy neighbour, per thread count
    from neeko_npc import defaults

    assert list(nb["runs"])[0] == f"--threads {defaults.default_threads()} (default)" and nb["levels"] == [0, 1]
    assert len(nb["runs"]) == (1 if defaults.cores() == defaults.default_threads() else 2)
    for by_threads in nb["runs"].values():
        for lv in by_threads["levels"].values():
            assert lv["errors"] == [] and lv["hot_ms"]["n"] == lv["cold_ms"]["n"] == 1
            assert lv["cold_ms"]["p50"] > 0 and lv["hot_ms"]["p50"] > 0
        # on the quiet machine a cold line reads its whole prompt first, so it is the slower; beside a neighbour one
        # line each cannot say so: threads spinning for a core the neighbour holds can stall either line many times
        # over (every core beside one neighbour once gave a hot line of 21.5 s and a cold one of 8.6 s)
        assert by_threads["levels"]["0"]["cold_ms"]["p50"] > by_threads["levels"]["0"]["hot_ms"]["p50"]
        assert by_threads["levels"]["0"]["hot_over_quiet"] == 1.0
    assert "Beside a game:" in text
    from neeko_npc.bench.neighbours import spinner_pids

    assert spinner_pids() == []  # every busy neighbour is gone
    # every step is timed, in the order it ran, and the table says where the time went
    assert list(r["seconds"])[:4] == ["loading the model", "time to first token", "switching NPC", "concurrency"]
    assert "memory: daemon RSS by role count" in r["seconds"] and all(v > 0 for v in r["seconds"].values())
    assert f"{sum(r['seconds'].values()):.0f} s in all" in text

    for line in ("time to first token", "decode", "targets"):
        assert line in text.lower()


def test_bench_targets_follow_from_the_figures(quick_report):
    """The JSON's targets agree with its figures, and the table shows each one with its verdict."""
    text, r, _ = quick_report
    got = {t["key"]: t for t in r["targets"]}
    starts = {f"startup_serve_{when}_start_{what}" for when in ("first", "next") for what in ("ready", "first", "prepared")}
    beside = {f"neighbours_1_{kind}" for kind in ("hot", "cold")}  # quick: a quiet machine and one busy neighbour
    assert set(got) == ({"decode_one_role", "switch_engine", "switch_adapters", "follow_up", "throughput", "no_errors",
                         "beat_learned"} | starts | beside)
    lv = next(iter(r["neighbours"]["runs"].values()))["levels"]["1"]
    assert got["neighbours_1_hot"]["value"] == lv["hot_over_quiet"] and got["neighbours_1_hot"]["met"] == (lv["hot_over_quiet"] <= 2)
    ready = r["startup"]["serve, next start"]["ready_s"]["p50"]
    assert got["startup_serve_next_start_ready"]["value"] == ready and got["startup_serve_next_start_ready"]["met"] == (ready <= 2)
    prepared = r["startup"]["serve, first start"]["prepared_over_follow"]  # another NPC, prepared as the player walked up
    assert got["startup_serve_first_start_prepared"]["value"] == prepared > 0
    assert got["startup_serve_first_start_prepared"]["met"] == (prepared <= 2)
    dec = {row["key"]: row for row in r["decode"]}
    share = dec["one_role"]["decode_tok_s"]["p50"] / dec["base"]["decode_tok_s"]["p50"]
    assert got["decode_one_role"]["value"] == pytest.approx(share) and got["decode_one_role"]["met"] == (share >= 0.9)
    assert got["follow_up"]["value"] == r["ttft"]["follow_over_cold"]
    assert got["switch_adapters"]["value"] == r["adapter_switch"]["extra_ms"]
    assert got["no_errors"]["value"] == 0 and got["no_errors"]["met"] is True
    lb = r["beats"]["learned_extra_ms"]
    assert got["beat_learned"]["value"] == lb and got["beat_learned"]["met"] == (lb <= 50)
    for t in got.values():
        assert f"[{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['shown']}" in text


def test_bench_writes_a_png_plot(quick_report):
    _, _, png = quick_report
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bench_through_a_running_daemon(baked, tmp_path):
    """--address: the conversation sections go over real gRPC to a daemon on 127.0.0.1."""
    roles = tmp_path / "roles"
    shutil.copytree(baked["before"], roles)
    config = ServerConfig(port=0, watch_interval=0)
    d = Daemon(config, lambda: LlamaEngine(roles, config=EngineConfig(pool_size=2, n_threads=2))).start()
    try:
        assert d.loaded.wait(120), d.service.load_error
        sizes = dict(ttft_reps=2, switch_reps=2, levels=[1, 2], per_stream=1, beat_reps=2, converse_turns=2)
        r = run_bench(BenchConfig(address=d.address, sizes=sizes))
    finally:
        d.stop(0)
    assert r.mode == "daemon" and r.roles == ["bard", "smith"]
    assert r.ttft["errors"] == [] and all(row["follow_cached_tokens"] > 0 for row in r.ttft["rows"])
    assert r.switching["errors"] == [] and "alternate_2" in r.switching
    assert all(v["errors"] == 0 and v["completion_tokens"] > 0 for v in r.concurrency.values())
    assert r.beats["errors"] == [] and r.beats["same_lines"] and r.beats["line_ms"]["n"] > 0  # beats over gRPC too
    assert r.converse["errors"] == [] and r.converse["2"]["changes"] == 1  # a Converse over gRPC (2 turns)
    assert r.decode == [] and r.skipped


def test_merged_gguf_export_matches_the_adapter(baked, tmp_path):
    """export --format merged-gguf: the role folded into the base weights gives the logits of the base
    with the role's adapter, far closer than the base alone does."""
    from neeko_npc.engine.llamacpp import LlamaModel
    from neeko_npc.roles.base_model import resolve_base_model

    out = run("export", "smith", "--roles", baked["before"], "--format", "merged-gguf", "--out", tmp_path / "smith.gguf")
    assert "smith" in out
    lora = tmp_path / "smith-lora.gguf"
    run("export", "smith", "--roles", baked["before"], "--format", "gguf-lora", "--out", lora)
    base = LlamaModel(resolve_base_model(None).path)
    merged = LlamaModel(tmp_path / "smith.gguf")
    try:
        prompt = base.tokenize("<|im_start|>system\nYou are the smith.<|im_end|>\n<|im_start|>user\nMend my sword?<|im_end|>\n"
                               "<|im_start|>assistant\n", add_special=True, parse_special=True)
        assert merged.tokenize("Mend my sword?", add_special=False) == base.tokenize("Mend my sword?", add_special=False)
        handle = base.load_adapter(lora)
        ctx = base.new_context(512)
        plain = ctx.decode(prompt).copy()
        ctx.clear()
        ctx.set_adapters([handle], [1.0])
        with_adapter = ctx.decode(prompt).copy()
        mctx = merged.new_context(512)
        folded = mctx.decode(prompt).copy()
        ctx.set_adapters([], [])
        ctx.close()
        mctx.close()
        base.free_adapter(handle)
    finally:
        merged.close()
        base.close()
    role_effect = np.abs(with_adapter - plain).mean()
    merge_error = np.abs(folded - with_adapter).mean()
    assert role_effect > 0.05  # the block does change the logits
    assert merge_error < 0.5 * role_effect
