"""CLI behaviour that needs no model: clear errors, exit code 1, no tracebacks."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from neeko_npc.cli import main
from neeko_npc.roles.asset import write_asset
from tests.helpers import block_asset


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_inspect_a_good_and_a_corrupt_file(tmp_path):
    path = write_asset(block_asset("smith"), tmp_path / "smith.nrole")
    res = invoke("inspect", path)
    assert res.exit_code == 0 and "smith" in res.output and "checksum ok" in res.output and "r=4" in res.output
    assert "voice       the daemon's contrast (no voice check)" in res.output
    res = invoke("inspect", write_asset(block_asset("bard", contrast=0.5), tmp_path / "bard.nrole"))
    assert "voice       contrast 0.5 (its bake's voice check)" in res.output
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    res = invoke("inspect", path)
    assert res.exit_code == 1
    assert "checksum mismatch" in res.output and str(path) in res.output and "Traceback" not in res.output


def test_bake_role_needs_data_or_fuse(tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text('{"id": "x", "name": "X", "persona": "p"}')
    res = invoke("bake-role", "--profile", prof, "--roles", tmp_path)
    assert res.exit_code == 2 and "--data lines.jsonl (expansion) or --fuse" in res.output


def test_bake_reports_a_missing_profile(tmp_path):
    (tmp_path / "role").mkdir()
    res = invoke("bake", tmp_path / "role", "--out", tmp_path / "out")
    assert res.exit_code == 1 and "needs profile.json and lines.jsonl" in res.output


def test_a_distinct_bake_of_one_role_is_refused_before_any_work(tmp_path):
    res = invoke("bake", Path(__file__).parent / "data" / "roles" / "smith", "--distinct", "1", "--out", tmp_path / "out")
    assert res.exit_code == 1 and "needs at least two roles" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_bad_base_model_path(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"not a model")
    prof = tmp_path / "p.json"
    prof.write_text('{"id": "x", "name": "X", "persona": "p"}')
    res = invoke("bake-role", "--fuse", "--profile", prof, "--roles", tmp_path, "--base-model", f)
    assert res.exit_code == 1 and "not a GGUF file" in res.output


def test_export_unknown_role(tmp_path):
    write_asset(block_asset("smith"), tmp_path / "smith.nrole")
    res = invoke("export", "nobody", "--roles", tmp_path, "--format", "gguf-lora")
    assert res.exit_code == 1 and "no role 'nobody'" in res.output and "known: smith" in res.output


def test_every_option_says_what_it_does_and_defaults_come_from_one_place():
    import click

    from neeko_npc import defaults
    from neeko_npc.engine.facade import EngineConfig, Limits

    bare = [(name, p.opts[0]) for name, cmd in main.commands.items() for p in cmd.params
            if isinstance(p, click.Option) and not p.help]
    assert bare == []
    serve = {p.name: p.default for p in main.commands["serve"].params}
    assert serve["pool_size"] == EngineConfig().pool_size == defaults.POOL_SIZE
    assert serve["max_blend"] == Limits().max_blend and serve["max_scene_chars"] == Limits().max_scene_chars
    fuse = {p.name: p.default for p in main.commands["bake-role"].params}
    assert fuse["tau"] == defaults.FUSE_TAU != defaults.GATE_TAU


def test_the_cli_reference_in_docs_is_what_the_commands_print():
    from pathlib import Path

    from neeko_npc.cli.reference import reference

    page = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    made = reference()
    assert page.read_text() == made, "docs/cli.md is stale: python -m neeko_npc.cli.reference > docs/cli.md"
    assert all(f"\n## {name}\n" in made for name in main.commands)  # every command has its section


def test_serve_flags_named_as_config_fields_reach_the_daemons_configs():
    from dataclasses import fields

    from neeko_npc.cli.serving import serve_configs
    from neeko_npc.engine.limits import Limits

    flags = ["--max-scene-chars", "123", "--max-converse-turns", "7", "--pool-size", "3", "--threads", "2",
             "--snapshot-mib", "1", "--port", "0", "--max-converse", "2", "--contrast", "0.5"]
    server, config = serve_configs(main.commands["serve"].make_context("serve", flags).params)
    assert (config.limits.max_scene_chars, config.limits.max_converse_turns) == (123, 7)
    assert (config.pool_size, config.n_threads, config.snapshot_bytes, config.contrast) == (3, 2, 1024 * 1024, 0.5)
    assert (server.port, server.max_converse) == (0, 2)
    # every serve flag named like a limit is one: none is read and dropped
    limit_flags = {p.name for p in main.commands["serve"].params} & {f.name for f in fields(Limits)}
    assert {"max_scene_chars", "max_blend", "max_actions", "max_interjections"} <= limit_flags


def documented_commands():
    """Every `neeko-npc ...` line in a bash block of the README and docs/ (cli.md aside), comments cut."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if page.name == "cli.md":
            continue
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").split("\n"):
                line = line.split(" # ")[0].split("  #")[0].strip()
                m = re.search(r"(?:^|&& )neeko-npc (.*)$", line)
                if m:
                    yield page.name, m.group(1)


def test_every_documented_command_parses_with_the_options_it_names():
    """Each command line in the README and docs/ names a real command, real options and valid values; a folder
    that only an earlier step makes (a bake's output, a bundle) may be missing here."""
    import shlex

    import click

    lines = list(documented_commands())
    assert len(lines) >= 25 and any(page == "README.md" for page, _ in lines)
    bad = []
    for page, args in lines:
        argv = shlex.split(args)
        cmd = main.commands.get(argv[0])
        if cmd is None:
            bad.append(f"{page}: neeko-npc {args}: no such command")
            continue
        try:
            cmd.make_context(argv[0], argv[1:])
        except click.BadParameter as exc:
            if "does not exist" not in str(exc):
                bad.append(f"{page}: neeko-npc {args}: {exc}")
        except click.ClickException as exc:
            bad.append(f"{page}: neeko-npc {args}: {exc}")
    assert bad == []
    # and the check has teeth: an option no command has is caught
    with pytest.raises(click.ClickException):
        main.commands["say"].make_context("say", ["blacksmith", "hi", "--no-such-option"])
