"""The server as a game ships it: `neeko-npc bundle` builds the folder once (PyInstaller, the real build), and the
tests start its `neeko-npc-server` as a game would, with nothing of this machine's Python in reach: an empty
environment (PATH /usr/bin:/bin, a fresh HOME), another working directory. Real processes, real gRPC on
127.0.0.1, the real SmolLM2. Every process a test starts is gone when it ends."""

import ctypes
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neeko_npc import __version__, defaults
from neeko_npc.bundle import LEFT_OUT, MANIFEST, RUNTIME_DIR, TRAINING
from neeko_npc.bundle.build import cpu_features, cpu_variants, executable_name, folder_bytes, llama_lib_dir
from neeko_npc.roles.asset_read import read_asset
from neeko_npc.server.client import Client
from neeko_npc.server.launch import process_alive

from .conftest import run

pytestmark = pytest.mark.slow  # a PyInstaller build and the real model

ROOT = Path(__file__).resolve().parent.parent
ROLES = ROOT / "assets" / "roles"
LINE = "Can you mend my sword before the festival?"
GREEDY = dict(temperature=0.0, max_tokens=24)
SAME_START = ["--port", "0", "--threads", "2", "--pool-size", "1", "--snapshot-mib", "0", "--watch-interval", "0"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """Built with one CPU variant: the installed CPU backend (compiled for Haswell's instruction set) under that
    variant's name, so the bundle's server loads llama.cpp the way a bundle with every variant does (ggml scores
    each libggml-cpu-<variant>.so and loads the best). The 14 real variants take about 12 minutes to build here,
    too long for the suite."""
    variants = tmp_path_factory.mktemp("variants")
    shutil.copy2(llama_lib_dir() / "libggml-cpu.so", variants / "libggml-cpu-haswell.so")
    out = tmp_path_factory.mktemp("ship") / "npc-server"
    printed = run("bundle", "--out", out, "--roles", ROLES, "--cpu-variants", variants)
    assert f"bundle {out}" in printed and "runtime" in printed, printed
    assert "1 CPU variants (haswell), the best picked at start (here: the one for SSE3" in printed, printed
    return out


class Server:
    """A server process and its one stdout line; ``stop`` leaves nothing running."""

    def __init__(self, cmd, env=None, cwd=None):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
        self.ready = self._first_line(timeout=120)

    def _first_line(self, timeout):
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            self.stop()
            pytest.fail(f"no ready line within {timeout} s")
        line = self.proc.stdout.readline().decode()
        if not line:
            self.stop()
            pytest.fail("the server closed stdout without a line: " + self.proc.stderr.read().decode()[-3000:])
        return json.loads(line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        rest = self.proc.stdout.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rest


def empty_env(tmp_path, **extra):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), **extra}


def greedy_line(port, token=""):
    c = Client(f"127.0.0.1:{port}", token=token)
    try:
        return "".join(ch.text for ch in c.say("blacksmith", LINE, **GREEDY))
    finally:
        c.close()


def gone_within(pid, seconds):
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if not process_alive(pid):
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def test_the_bundle_holds_the_serving_side_and_says_how_large_it_is(bundle):
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert manifest["version"] == __version__ and (bundle / manifest["server"]).is_file()
    assert sorted(p.stem for p in (bundle / manifest["roles_dir"]).glob("*.nrole")) == sorted(p.stem for p in ROLES.glob("*.nrole"))
    assert len(manifest["role_ids"]) == 6 and manifest["model_bytes"] == folder_bytes(bundle / "model")
    assert manifest["roles_bytes"] == folder_bytes(bundle / manifest["roles_dir"])
    assert manifest["runtime_bytes"] == folder_bytes(bundle / RUNTIME_DIR) + folder_bytes(bundle / executable_name())
    inside = {p.name for p in (bundle / RUNTIME_DIR).iterdir()}
    shipped = sorted(n for n in TRAINING + LEFT_OUT + ("botocore", "pydantic", "psutil") if n in inside)
    assert shipped == [], f"training-side packages in the bundle: {shipped}"
    lib = bundle / RUNTIME_DIR / "llama_cpp" / "lib"
    assert (lib / "libggml-cpu.so").is_file()  # the installed CPU backend travels with it, and the variants given
    assert cpu_variants(lib) == manifest["cpu_variants"] == ["haswell"] and manifest["cpu_features"] == cpu_features()


def test_the_bundle_speaks_where_nothing_is_installed_as_serve_does(bundle, tmp_path):
    """Same flags, same cold state (no snapshots, one context): the bundle's greedy line is serve's."""
    token = tmp_path / "token"
    token.write_text("s3cret-from-a-file\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    shipped = Server([str(bundle / executable_name()), *SAME_START, "--token-file", str(token)],
                     env=empty_env(tmp_path), cwd=elsewhere)
    try:
        ready = shipped.ready
        assert set(ready) == {"event", "port", "pid", "roles", "version"}
        assert ready["event"] == "ready" and ready["pid"] == shipped.proc.pid and ready["roles"] == 6
        assert ready["version"] == __version__ and ready["port"] > 0
        assert "s3cret" not in " ".join(Path(f"/proc/{shipped.proc.pid}/cmdline").read_text().split("\0"))
        from_bundle = greedy_line(ready["port"], token="s3cret-from-a-file")
    finally:
        assert shipped.stop() == b"", "the ready line must be the only thing on stdout"
    dev = Server([sys.executable, "-m", "neeko_npc.cli", "serve", "--roles", str(ROLES), *SAME_START])
    try:
        from_serve = greedy_line(dev.ready["port"])
    finally:
        dev.stop()
    assert from_bundle.strip() and from_bundle == from_serve


def test_two_bundles_on_one_machine_each_get_a_port_and_sigterm_stops_them(bundle, tmp_path):
    """With their defaults: each loads the adapters and restores the roles' prefixes the bundle ships (its HOME is
    empty, and stays so), so even the first line after start reads only its scene and line. Lines are plain by default
    and no shipped role has a contrast of its own, so each of the 6 roles ships one prefix, under its own voice (a
    contrasted role would ship a second, under the base model: test_contract)."""
    assert defaults.CONTRAST == 0 and not any(read_asset(p).contrast for p in ROLES.glob("*.nrole"))
    assert len(list((bundle / "warm").glob("*.kv"))) == 6 and len(list((bundle / "warm").glob("*.gguf"))) == 5
    servers = []
    try:
        for _ in range(2):  # started one by one inside the try, so a failed second start still stops the first
            servers.append(Server([str(bundle / executable_name()), "--port", "0", "--threads", "2"], env=empty_env(tmp_path)))
        ports = [s.ready["port"] for s in servers]
        assert ports[0] != ports[1]
        c = Client(f"127.0.0.1:{ports[0]}")
        try:
            last = list(c.say("innkeeper", LINE, **GREEDY))[-1]
        finally:
            c.close()
        assert last.cached_prompt_tokens > 50 and last.prompt_tokens - last.cached_prompt_tokens < 60
        assert not (tmp_path / "home" / ".cache" / "neeko-npc" / "adapters").exists()  # nothing made at start
        for s in servers:
            t0 = time.monotonic()
            s.proc.send_signal(signal.SIGTERM)
            assert s.proc.wait(5) == 0
            assert time.monotonic() - t0 < 2.0
    finally:
        for s in servers:
            s.stop()


def test_the_server_ends_within_2s_of_its_parent(bundle, tmp_path):
    """A game that is not the server's parent (the pid is passed), then one that started it and crashed."""
    game = subprocess.Popen(["sleep", "600"])
    try:
        s = Server([str(bundle / executable_name()), *SAME_START, "--parent-pid", str(game.pid)], env=empty_env(tmp_path))
        try:
            game.kill()
            game.wait()
            t0 = time.monotonic()
            s.proc.wait(5)
            assert time.monotonic() - t0 < 2.0
        finally:
            s.stop()
    finally:
        game.kill()
        game.wait()

    # the game launches the server itself, passing its own pid, and is killed without a word
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: the orphaned server becomes ours to reap
    launcher = ("import os, subprocess, sys\n"
                f"p = subprocess.Popen([{str(bundle / executable_name())!r}, *{SAME_START!r}, '--parent-pid', str(os.getpid())],"
                " stdout=subprocess.PIPE)\n"
                "sys.stdout.write(str(p.pid) + ' ' + p.stdout.readline().decode()); sys.stdout.flush()\n"
                "import time; time.sleep(600)\n")
    game = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, env=empty_env(tmp_path))
    server_pid = 0
    try:
        pid_text, ready = game.stdout.readline().decode().split(" ", 1)
        server_pid = int(pid_text)
        assert json.loads(ready)["event"] == "ready" and process_alive(server_pid)
        game.kill()
        game.wait()
        took = gone_within(server_pid, 2.0)
        assert took is not None, "the server outlived its crashed game by 2 s"
    finally:
        game.kill()  # a no-op once it is dead; the launcher if the test failed first
        game.wait()
        if server_pid:
            if process_alive(server_pid):
                os.kill(server_pid, signal.SIGKILL)
            try:
                os.waitpid(server_pid, 0)
            except ChildProcessError:  # not ours to reap (no subreaper)
                pass
        game.stdout.close()


def test_the_bench_times_the_bundles_start_beside_serves(bundle):
    from neeko_npc.bench.startup import start_commands, startup

    cmds = start_commands(ROLES, None, bundle, 2)
    assert cmds["bundle"][0] == str(bundle / executable_name()) and cmds["serve"][1:4] == ["-m", "neeko_npc.cli", "serve"]
    got = startup({"bundle": cmds["bundle"]}, reps=1)
    assert list(got) == ["bundle, first start", "bundle, next start"]
    for row in got.values():
        assert row["errors"] == [] and 0 < row["ready_s"]["p50"] < 60 and row["stop_s"]["p50"] < 2.0
        assert row["first_ttft_ms"]["p50"] > 0 and row["first_over_follow"] > 0 and row["prepared_over_follow"] > 0
