"""Resident memory of a real daemon process with 0, 1, 10, 50 ... roles loaded, and role bytes on disk.

Each count starts ``neeko-npc serve`` on a folder of that many roles (copies of the shipped blocks
under new ids: each is its own file and its own adapter), says one line so the weights are touched,
then reads VmRSS from /proc. The one-model-per-NPC baseline loads that many merged models into one
process the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from .. import defaults
from ..roles.asset import RoleAsset, write_asset
from ..roles.base_model import info_cache_file


def rss_bytes(pid: int | str = "self") -> int | None:
    """VmRSS of a process (Linux); None elsewhere."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def synthetic_roles(blocks: list[RoleAsset], n: int, folder: Path) -> list[Path]:
    """n role files: the given block roles round-robin, each copy under its own id."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        src = blocks[i % len(blocks)]
        rid = src.id if i < len(blocks) else f"{src.id}-{i}"
        copy = replace(src, profile=replace(src.profile, id=rid), sha256="", path="")
        out.append(write_asset(copy, folder / f"{rid}.nrole"))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_rss(roles_dir: Path, base_model: str | None, cache_dir: Path, timeout: float = 300) -> dict:
    """Start a daemon on ``roles_dir``, wait until its health check says SERVING, say one line, and read its
    resident memory."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from ..server.app import SERVICE_NAME
    from ..server.client import Client

    address = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "neeko_npc.cli", "serve", "--roles", str(roles_dir), "--port", address.rsplit(":", 1)[1],
           "--watch-interval", "0"]
    if base_model:
        cmd += ["--base-model", str(base_model)]
    env = dict(os.environ, **{defaults.CACHE_ENV: str(cache_dir)})
    t0 = time.perf_counter()
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stderr=log, stdout=subprocess.DEVNULL, text=True, env=env)
    client = Client(address)
    try:
        health = health_pb2_grpc.HealthStub(client.channel)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"the daemon did not start: {' '.join(cmd)} (exit {proc.poll()}): {log.read()[-500:]}")
            try:
                req = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
                if health.Check(req, timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass  # not listening yet
            time.sleep(0.1)
        ready_s = time.perf_counter() - t0
        ids = sorted(r.id for r in client.roles().roles)
        if ids:
            for _ in client.say(ids[0], "Hello.", max_tokens=4, timeout=120):
                pass
        return {"roles": len(ids), "rss_bytes": rss_bytes(proc.pid), "ready_s": ready_s}
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def models_rss(paths: list[Path]) -> int | None:
    """Resident memory of a fresh process that loads every given model and decodes one token on each."""
    code = ("import sys\n"
            "from neeko_npc.engine.llamacpp import LlamaModel\n"
            "from neeko_npc.bench.memory import rss_bytes\n"
            "keep = []\n"
            "for p in sys.argv[1:]:\n"
            "    m = LlamaModel(p); c = m.new_context(2048); c.decode(m.tokenize('Hello', add_special=True)); keep.append((m, c))\n"
            "print(rss_bytes())\n")
    out = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"loading {len(paths)} merged model(s) failed: {out.stderr.strip()[-300:]}")
    v = out.stdout.strip().splitlines()[-1]
    return None if v == "None" else int(v)


def memory_by_role_count(blocks: list[RoleAsset], counts: list[int], base_model: str | None, workdir: Path,
                         progress=None) -> dict:
    rows = []
    for n in counts:
        folder = Path(tempfile.mkdtemp(prefix=f"roles{n}-", dir=workdir))
        cache = Path(tempfile.mkdtemp(prefix="cache-", dir=workdir))
        known = info_cache_file()  # the base model's fingerprint and shape, already read: the daemon
        if known.is_file():        # starts as on a machine that has served before
            shutil.copy(known, cache / known.name)
        files = synthetic_roles(blocks, n, folder)
        r = daemon_rss(folder, base_model, cache)
        adapters = list((cache / "adapters").glob("*.gguf")) if (cache / "adapters").is_dir() else []
        r.update(count=n, nrole_bytes=sum(f.stat().st_size for f in files), adapter_cache_bytes=sum(f.stat().st_size for f in adapters))
        rows.append(r)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        if progress:
            progress()
    out = {"rows": rows}
    have = [r for r in rows if r["rss_bytes"] and r["count"] > 0]
    if len(have) >= 2:
        lo, hi = have[0], have[-1]
        out["rss_bytes_per_role"] = (hi["rss_bytes"] - lo["rss_bytes"]) / (hi["count"] - lo["count"])
    if have:
        out["nrole_bytes_per_role"] = have[-1]["nrole_bytes"] / have[-1]["count"]
        out["adapter_cache_bytes_per_role"] = have[-1]["adapter_cache_bytes"] / have[-1]["count"]
    return out
