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

from neeko_npc.bench.run import BenchConfig, run_bench
from neeko_npc.engine.npc_engine import EngineConfig, LlamaEngine
from neeko_npc.server.app import Daemon, ServerConfig
from tests.conftest import run

pytestmark = pytest.mark.slow  # the real model

SHIPPED = Path(__file__).parent.parent / "assets" / "roles"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    text = run("bench", "--quick", "--roles", SHIPPED, "--json", d / "bench.json", "--plot", d / "bench.png", "--quiet")
    return text, json.loads((d / "bench.json").read_text()), d / "bench.png"


def test_bench_quick_measures_every_section(quick_report):
    text, r, _ = quick_report
    roles = r["roles"]
    assert r["mode"] == "in-process" and r["quick"] and len(roles) == 6 and r["problems"] == {}

    t = r["ttft"]
    assert t["errors"] == [] and t["first_line_ms"]["n"] == 3
    # A first line starts cold; the follow-up reuses the conversation's prefix; the cold replay has the same prompt.
    assert all(row["first_cached_tokens"] == 0 for row in t["rows"])
    assert all(0 < row["follow_cached_tokens"] < row["follow_prompt_tokens"] for row in t["rows"])
    assert all("cold_same_ms" in row for row in t["rows"]) and t["follow_over_cold"] > 0

    sw = r["switching"]
    assert sw["errors"] == [] and set(sw) >= {"repeat", "alternate_2", "rotate_all"}
    assert sw["repeat"]["cached_tokens"]["p50"] > 0  # the NPC's system prompt stayed cached
    assert sw["repeat"]["extra_ms_vs_repeat"] == 0

    c = r["concurrency"]
    assert sorted(c, key=int) == ["1", "2", "4", "8"]
    for k, v in c.items():
        assert v["errors"] == 0 and v["lines"] == int(k) and v["completion_tokens"] > 0 and v["aggregate_tok_s"] > 0

    dec = r["decode"]
    names = list(dec)
    assert names[0] == "base model alone" and names[1].startswith("neeko: one role")
    assert any(n.startswith("neeko: fused role") for n in names) and any(n.startswith("merged single LoRA") for n in names)
    dense = [n for n in names if n.startswith("dense mixture")]
    assert len(dense) == 2 and dec[dense[-1]]["blocks"] == 10  # --quick: 10 blocks, copies of the trained ones
    assert all(v["decode_tok_s"]["p50"] > 0 and v["decode_tok_s"]["n"] == 2 for v in dec.values())
    assert dec["base model alone"]["blocks"] == 0 and dec[names[1]]["blocks"] == 1

    sw1 = r["adapter_switch"]
    assert sw1["repeat_ms"]["n"] == 10 and sw1["set_adapters_us"]["p50"] > 0 and sw1["prompt_tokens"] == 16
    assert r["reload_per_npc"]  # the one-model-per-NPC baseline ran

    mem = r["memory"]
    rows = {row["count"]: row for row in mem["rows"]}
    assert sorted(rows) == [0, 1, 3] and all(rows[n]["roles"] == n for n in rows)  # the daemon said "ready: n roles"
    assert all(row["rss_bytes"] > 100 * MiB for row in rows.values())
    assert rows[0]["nrole_bytes"] == 0 and rows[3]["nrole_bytes"] > rows[1]["nrole_bytes"] > 0
    assert rows[3]["adapter_cache_bytes"] > 0 and mem["nrole_bytes_per_role"] > 0
    merged = mem["merged_models"]
    assert [m["count"] for m in merged] == [1, 2] and merged[1]["disk_bytes"] == pytest.approx(2 * merged[0]["disk_bytes"], rel=0.01)

    for line in ("time to first token", "decode", "targets"):
        assert line in text.lower()


def test_bench_targets_follow_from_the_figures(quick_report):
    from neeko_npc.bench.report import targets

    _, r, _ = quick_report
    got = {t["target"]: t for t in targets(r)}
    dec = r["decode"]
    one = next(v for k, v in dec.items() if k.startswith("neeko: one role"))
    share = one["decode_tok_s"]["p50"] / dec["base model alone"]["decode_tok_s"]["p50"]
    t = next(v for k, v in got.items() if k.startswith("decode with one role"))
    assert t["value"] == pytest.approx(share) and t["met"] == (share >= 0.9)
    t = next(v for k, v in got.items() if k.startswith("no errors"))
    assert t["value"] == 0 and t["met"] is True
    assert len(got) == 6


def test_bench_writes_a_png_plot(quick_report):
    _, _, png = quick_report
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bench_through_a_running_daemon(baked, tmp_path):
    """--address: the conversation sections go over real gRPC to a daemon on 127.0.0.1."""
    roles = tmp_path / "roles"
    shutil.copytree(baked["before"], roles)
    config = ServerConfig(port=0, watch_interval=0)
    d = Daemon(config, lambda: LlamaEngine(roles, config=EngineConfig(pool_size=2, n_threads=1))).start()
    try:
        assert d.loaded.wait(120), d.service.load_error
        sizes = dict(ttft_reps=2, switch_reps=2, levels=[1, 2], per_stream=1)
        r = run_bench(BenchConfig(address=d.address, sizes=sizes))
    finally:
        d.stop(0)
    assert r["mode"] == "daemon" and r["roles"] == ["bard", "smith"]
    assert r["ttft"]["errors"] == [] and all(row["follow_cached_tokens"] > 0 for row in r["ttft"]["rows"])
    assert r["switching"]["errors"] == [] and "alternate_2" in r["switching"]
    assert all(v["errors"] == 0 and v["completion_tokens"] > 0 for v in r["concurrency"].values())
    assert "decode" not in r and r["skipped"]


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
