"""The launch contract's pieces (server/launch.py, bundle/server_main.py) on real processes, no model: one JSON
line on stdout whatever else writes there, the token from a file, a parent's end noticed, a stop that cannot
hang. The whole contract on the real server is in test_bundle.py."""

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from pathlib import Path

from neeko_npc.bundle import MANIFEST
from neeko_npc.bundle.server_main import with_bundle_defaults
from neeko_npc.errors import InputError
from neeko_npc.server.launch import PARENT_POLL_S, event_line, process_alive, read_token, watch_parent


def python(code, **kw):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=30, **kw)


def test_only_the_launcher_line_reaches_stdout():
    out = python("""
        import os, sys
        from neeko_npc.server.launch import announce, claim_stdout
        launcher = claim_stdout()
        print("a python print")
        os.write(1, b"a C library writing to fd 1\\n")
        announce(launcher, "ready", port=50123, pid=os.getpid(), roles=6, version="x")
        print("after the line")
    """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["event"] == "ready" and json.loads(lines[0])["port"] == 50123
    assert "a python print" in out.stderr and "a C library writing to fd 1" in out.stderr and "after the line" in out.stderr


def test_event_lines_are_one_line_of_json():
    line = event_line("failed", error="two\nlines and a \"quote\"")
    assert "\n" not in line and json.loads(line) == {"event": "failed", "error": "two\nlines and a \"quote\""}


def test_the_token_comes_from_the_first_line_of_a_file(tmp_path):
    f = tmp_path / "token"
    f.write_text("  abc123  \nignored\n")
    assert read_token("", f) == "abc123"
    assert read_token("from-env", None) == "from-env"
    f.write_text("\n")
    with pytest.raises(InputError, match="empty"):
        read_token("", f)
    with pytest.raises(InputError, match="not both"):
        read_token("from-env", f)
    with pytest.raises(InputError, match="cannot read"):
        read_token("", tmp_path / "missing")


def test_a_dead_or_zombie_process_is_not_alive():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process_alive(child.pid):  # exited but not reaped: a zombie
        time.sleep(0.02)
    assert not process_alive(child.pid)
    child.wait()
    assert not process_alive(child.pid)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert process_alive(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_watch_parent_calls_back_once_the_process_ends():
    with pytest.raises(InputError, match="no such process"):
        watch_parent(999999999, lambda: None)
    game = subprocess.Popen(["sleep", "30"])
    gone = threading.Event()
    watch_parent(game.pid, gone.set)
    assert not gone.wait(3 * PARENT_POLL_S)
    game.kill()
    game.wait()
    assert gone.wait(4 * PARENT_POLL_S)


def test_a_stop_that_hangs_still_ends_the_process():
    t0 = time.monotonic()
    out = python("""
        import time
        from neeko_npc.server.launch import exit_within
        exit_within(0.3)
        time.sleep(30)  # a stuck clean-up
    """)
    assert out.returncode == 0 and time.monotonic() - t0 < 10


def test_the_shipped_server_defaults_to_the_bundles_model_and_roles(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"model": "model/m.gguf", "roles_dir": "roles"}))
    assert with_bundle_defaults(["--port", "0"], tmp_path) == [
        "--roles", str(tmp_path / "roles"), "--base-model", str(tmp_path / "model" / "m.gguf"), "--port", "0"]
    mine = ["--roles=/game/npcs", "--base-model", "/game/m.gguf"]
    assert with_bundle_defaults(mine, tmp_path) == mine
    with pytest.raises(SystemExit, match="manifest"):
        with_bundle_defaults([], tmp_path / "nowhere")


ROLES = Path(__file__).resolve().parent.parent / "assets" / "roles"


def serve_fails(*flags):
    """`neeko-npc serve` that cannot start (before any model is loaded): (exit code, stdout, stderr)."""
    out = subprocess.run([sys.executable, "-m", "neeko_npc.cli", "serve", "--roles", str(ROLES), *flags],
                         capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout, out.stderr


def test_a_dead_parent_or_a_taken_port_is_one_failed_line_and_exit_1():
    code, stdout, stderr = serve_fails("--port", "0", "--parent-pid", "999999999")
    assert code == 1 and json.loads(stdout) == {"event": "failed", "error": "--parent-pid 999999999: no such process is running"}
    assert "Error: --parent-pid 999999999: no such process is running" in stderr and "Traceback" not in stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stdout, stderr = serve_fails("--port", str(port))
    assert code == 1 and json.loads(stdout) == {"event": "failed", "error": f"cannot listen on 127.0.0.1:{port} (port in use?)"}
    assert "Traceback" not in stderr
