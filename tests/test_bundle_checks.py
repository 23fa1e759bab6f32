"""What `neeko-npc bundle` refuses before it freezes anything: a role the server would skip, and a folder that is
not its own to replace. Fast: no PyInstaller run (test_bundle.py builds a real one)."""

import shutil
from pathlib import Path

from click.testing import CliRunner

from neeko_npc.bundle.build import cpu_features, cpu_variants, llama_lib_dir
from neeko_npc.bundle.server_main import with_bundle_defaults
from neeko_npc.cli import main
from neeko_npc.roles import base_model
from neeko_npc.roles.base_model import base_info, resolve_base_model

ROLES = Path(__file__).resolve().parent.parent / "assets" / "roles"


def bundle(*args):
    return CliRunner().invoke(main, ["bundle", *map(str, args)])


def test_a_role_that_would_not_load_stops_the_build_and_names_the_file(tmp_path):
    roles = tmp_path / "roles"
    shutil.copytree(ROLES, roles, ignore=shutil.ignore_patterns("src"))
    (roles / "innkeeper.nrole").write_bytes(b"NROLE" + b"\0" * 64)  # damaged
    out = tmp_path / "out"
    res = bundle("--out", out, "--roles", roles)
    assert res.exit_code == 1 and "1 role file(s)" in res.output and "innkeeper.nrole" in res.output
    assert not out.exists()


def test_a_folder_that_holds_something_else_is_never_replaced(tmp_path):
    out = tmp_path / "my-game-build"
    out.mkdir()
    (out / "game.exe").write_text("keep me")
    res = bundle("--out", out, "--roles", ROLES)
    assert res.exit_code == 1 and "holds no earlier bundle" in res.output
    assert (out / "game.exe").read_text() == "keep me"


def test_a_cpu_variants_folder_without_variants_stops_the_build_before_freezing(tmp_path):
    (tmp_path / "variants").mkdir()
    (tmp_path / "variants" / "libggml-cpu.so").write_bytes(b"not a variant's name")
    out = tmp_path / "out"
    res = bundle("--out", out, "--roles", ROLES, "--cpu-variants", tmp_path / "variants")
    assert res.exit_code == 1 and "no libggml-cpu-*.so there" in res.output and "build_cpu_variants.sh" in res.output
    assert not out.exists()


def test_a_cpu_variant_loads_by_its_name_alone(tmp_path):
    """ggml finds a variant by its file name (libggml-cpu-<variant>.so) and asks it whether this CPU can run it. Here
    the variant is the installed CPU backend, compiled for Haswell's instruction set, under that variant's name, in a
    folder without the plain libggml-cpu.so: the 14 real variants take about 12 minutes to build
    (scripts/build_cpu_variants.sh), too long for the suite."""
    installed = llama_lib_dir() / "libggml-cpu.so"
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy2(installed, lib / "libggml-cpu-haswell.so")
    assert cpu_variants(lib) == ["haswell"] and cpu_variants(tmp_path) == []
    assert cpu_features(lib) == cpu_features() and {"AVX2", "FMA", "F16C"} <= set(cpu_features(lib))


def shipped_bundle(tmp_path, base):
    """A bundle's model and manifest as the builder writes them (no runtime: server_main is called in-process)."""
    import json
    from dataclasses import asdict

    root = tmp_path / "bundle"
    (root / "model").mkdir(parents=True)
    model = root / "model" / base.path.name
    shutil.copyfile(base.path, model)
    info = asdict(base_info(base))
    (root / "bundle.json").write_text(json.dumps({"model": f"model/{model.name}", "roles_dir": "roles",
                                                  "base": {"size": model.stat().st_size, **info}}))
    return root, model, base_info(base)


def test_a_bundle_first_start_takes_its_fingerprint_from_the_manifest_and_never_hashes_the_weights(
        tmp_path, monkeypatch):
    base = resolve_base_model(None)
    root, model, built = shipped_bundle(tmp_path, base)
    monkeypatch.setenv("NEEKO_NPC_CACHE", str(tmp_path / "players-cache"))  # a player's first start: nothing cached
    hashed = []
    monkeypatch.setattr(base_model, "_hash_gguf", lambda g: hashed.append(g) or "not the shipped one")
    args = with_bundle_defaults([], root)
    assert args[args.index("--base-model") + 1] == str(model)
    assert base_info(resolve_base_model(model)) == built and hashed == []


def test_a_bundle_model_of_another_size_than_built_is_fingerprinted_as_usual(tmp_path, monkeypatch):
    base = resolve_base_model(None)
    root, model, _ = shipped_bundle(tmp_path, base)
    with model.open("ab") as f:
        f.write(b"\0" * 32)  # replaced or damaged after the build
    monkeypatch.setenv("NEEKO_NPC_CACHE", str(tmp_path / "players-cache"))
    hashed = []
    monkeypatch.setattr(base_model, "_hash_gguf", lambda g: hashed.append(g) or "hashed here")
    with_bundle_defaults([], root)
    assert base_info(resolve_base_model(model)).fingerprint == "hashed here" and len(hashed) == 1
