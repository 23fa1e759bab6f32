import os
import shutil
from pathlib import Path

import pytest

# No model hub, ever: every model in the tests comes from an installed package or is built in-test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATA = Path(__file__).parent / "data" / "roles"
FAST = ["--epochs", "2", "--precision", "fp32", "--quiet", "--max-len", "256"]


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Fingerprint and adapter caches live in the test run, not in the user's home."""
    os.environ["NEEKO_NPC_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def run(*args):
    from click.testing import CliRunner

    from neeko_npc.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="session")
def gguf_base(private_cache):
    """(ref, model, tokenizer, load warnings): the session's first load of the real base for training. The cache
    holds only a damaged float copy (garbage behind a complete-looking folder), so the load warns, converts the
    GGUF and keeps a good copy: what it returns is the conversion itself, and every later load reads the copy
    (test_real_model compares the two)."""
    import logging

    from neeko_npc.neeko.load_base import COMPLETE, float_cache_dir, load_for_training
    from neeko_npc.roles.base_model import resolve_base_model

    ref = resolve_base_model(None)
    damaged = float_cache_dir(ref)
    damaged.mkdir(parents=True)
    (damaged / "config.json").write_text("{not json")
    (damaged / COMPLETE).write_text("1\n")
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("neeko_npc.neeko").addHandler(handler)
    try:
        model, tok = load_for_training(ref, "fp32")
    finally:
        logging.getLogger("neeko_npc.neeko").removeHandler(handler)
    assert (damaged / COMPLETE).is_file() and (damaged / "model.safetensors").is_file()
    return ref, model, tok, seen


@pytest.fixture(scope="session")
def baked(tmp_path_factory, gguf_base):
    """smith + bard pre-finetuned on the real SmolLM2 (kept in `before`), then fisher added by expansion in `dir`; both
    asked for the voice check (off by default), which the expansion, given no other roles' lines, cannot run."""
    root = tmp_path_factory.mktemp("roles")
    out = root / "set"
    bake_out = run("bake", DATA / "smith", DATA / "bard", "--out", out, "--seed", "1", "--voice-check", *FAST)
    before = root / "before"
    shutil.copytree(out, before)
    expand_out = run("bake-role", "--profile", DATA / "fisher" / "profile.json", "--data", DATA / "fisher" / "lines.jsonl",
                     "--roles", out, "--voice-check", *FAST)
    return {"dir": out, "before": before, "bake_out": bake_out, "expand_out": expand_out}
