"""What `neeko-npc bundle` refuses before it freezes anything: a role the server would skip, and a folder that is
not its own to replace. Fast: no PyInstaller run (test_bundle.py builds a real one)."""

import shutil
from pathlib import Path

from click.testing import CliRunner

from neeko_npc.cli import main

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
