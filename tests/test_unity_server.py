"""NeekoServer, the C# core's server launcher (unity_client/Runtime/Core/NeekoServer.cs), built with mono and run
against the real server (`neeko-npc serve` on the real model): it starts it, reads its ready line, gives it a token
through the environment, restarts it after a crash, and leaves no process after Dispose. This is mono, not Unity:
the Unity component that drives it from a scene needs an editor to check."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neeko_npc.server.client import Client
from neeko_npc.server.launch import process_alive

from .test_unity_client import CORE, tool

pytestmark = pytest.mark.slow  # the real model

ROOT = Path(__file__).resolve().parent.parent
ROLES = ROOT / "assets" / "roles"
def serve(roles=ROLES):
    return [sys.executable, "-m", "neeko_npc.cli", "serve", "--roles", str(roles), "--threads", "2", "--snapshot-mib", "0",
            "--watch-interval", "0"]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    out = tmp_path_factory.mktemp("driver") / "ServerDriver.exe"
    subprocess.run([tool("mcs"), "-langversion:7", "-warnaserror", f"-out:{out}", "-r:System.Core.dll",
                    *map(str, CORE), str(ROOT / "tests" / "csharp" / "ServerDriver.cs")], check=True, capture_output=True, text=True)
    return out


class Driver:
    def __init__(self, exe, max_restarts, *cmd):
        self.proc = subprocess.Popen([tool("mono"), str(exe), str(max_restarts), *cmd], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.seen = []

    def ask(self, command, answer, timeout=150):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().strip()
            assert line or self.proc.poll() is None, "driver died: " + self.proc.stderr.read()[-3000:]
            self.seen.append(line)
            if line.split(" ")[0] in answer:
                return line.split(" ")
        pytest.fail(f"no {answer} after {command}: {self.seen}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(20)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


def healthy(port, token):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    c = Client(f"127.0.0.1:{port}", token=token)
    try:
        roles = [r.id for r in c.roles().roles]
    finally:
        c.close()
    return status == health_pb2.HealthCheckResponse.SERVING and "blacksmith" in roles


def test_it_starts_the_server_restarts_it_after_a_crash_and_leaves_nothing_behind(driver, tmp_path):
    spaced = tmp_path / "My Game" / "npc roles"  # a path with spaces reaches the server as one argument
    shutil.copytree(ROLES, spaced, ignore=shutil.ignore_patterns("src"))
    d = Driver(driver, 3, *serve(spaced))
    try:
        _, port, pid, token, restarts = d.ask("wait", {"ready", "not-ready"})
        assert restarts == "0" and process_alive(int(pid)) and healthy(int(port), token)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert token.encode() not in b" ".join(cmdline) and b"--parent-pid" in cmdline  # the token went by environment
        with pytest.raises(grpc.RpcError) as e:  # and the server requires it
            Client(f"127.0.0.1:{port}").roles()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED

        d.ask("kill", {"killed"})
        _, port2, pid2, token2, restarts = d.ask("wait", {"ready", "not-ready"})
        assert "state Restarting" in d.seen and restarts == "1" and pid2 != pid
        assert port2 == port and token2 == token and healthy(int(port2), token)  # same address for the game's client

        _, state, running = d.ask("dispose", {"disposed"})
        assert state == "Stopped" and running == "0"
        assert not process_alive(int(pid)) and not process_alive(int(pid2))
    finally:
        d.close()


def test_a_server_that_cannot_start_ends_failed_with_its_own_reason(driver, tmp_path):
    d = Driver(driver, 1, *serve(), "--base-model", str(tmp_path / "missing.gguf"))
    try:
        answer = d.ask("wait", {"ready", "not-ready"})
        assert answer[:2] == ["not-ready", "Failed"] and "missing.gguf" in " ".join(answer)
        assert d.seen.count("state Restarting") == 1  # one retry, then it gave up
    finally:
        d.close()
    d = Driver(driver, 0, str(tmp_path / "no-such-server"))
    try:
        answer = d.ask("wait", {"ready", "not-ready"})
        assert answer[:2] == ["not-ready", "Failed"] and "cannot start" in " ".join(answer)
    finally:
        d.close()
