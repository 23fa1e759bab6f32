"""Start-up as a game meets it: a server process started with ``--port 0``, the time to its ready line (the
launch contract, server/launch.py), then an NPC's first line and a hot follow-up in the same session, another
NPC's first line after a Prepare (as the Unity package's NpcVoice prepares when the player walks up), then
SIGTERM and the time to exit. Each way of starting (the shipped bundle, ``neeko-npc serve``) runs on an empty
cache (the first launch on a player's machine) and again on what that left (every later launch), rep after
rep, interleaved, so machine noise hits them alike."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from .speed import FOLLOW_UP, OPENING
from .stats import ratio, summary
from .targets import Remote

READY_TIMEOUT_S = 300.0


def start_commands(roles_dir: Path, base_model: str | None, bundle: Path | None, threads: int | None) -> dict[str, list[str]]:
    """name -> the command line, without --port. The bundle serves its own model and ``roles_dir``."""
    common = ["--roles", str(roles_dir)] + (["--threads", str(threads)] if threads else [])
    cmds = {"serve": [sys.executable, "-m", "neeko_npc.cli", "serve", *common]
            + (["--base-model", str(base_model)] if base_model else [])}
    if bundle is not None:
        from ..bundle.build import executable_name

        cmds["bundle"] = [str(Path(bundle) / executable_name()), *common]
    return cmds


def read_ready(proc: subprocess.Popen, timeout: float) -> dict:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    line = proc.stdout.readline().decode() if sel.select(timeout) else ""
    sel.close()
    event = json.loads(line) if line.strip() else {"event": "failed", "error": f"no ready line in {timeout:.0f} s"}
    if event.get("event") != "ready":
        raise RuntimeError(f"{proc.args[0]}: {event.get('error', event)}")
    return event


def one_start(cmd: list[str], cache: Path, rep: int, max_tokens: int) -> dict:
    """Start ``cmd`` with ``cache`` as its cache, wait for the ready line, say an opening line and a follow-up, let
    the warm-up finish, stop it."""
    from .. import defaults
    from ..server.client import Client

    log = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--port", "0"], stdout=subprocess.PIPE, stderr=log,
                            env={**os.environ, defaults.CACHE_ENV: str(cache)})
    try:
        ready = read_ready(proc, READY_TIMEOUT_S)
        ready_s = time.perf_counter() - t0
        client = Client(f"127.0.0.1:{ready['port']}")
        try:
            target = Remote(client)
            npc = target.roles[rep % ready["roles"]]
            session = f"startup-{uuid.uuid4().hex[:8]}"
            first = target.say(npc, OPENING[rep % len(OPENING)], session, max_tokens)
            follow = target.say(npc, FOLLOW_UP[rep % len(FOLLOW_UP)], session, max_tokens)
            # another NPC as the game meets it: prepared as the player walks up (NpcVoice), then spoken to
            other, walk = target.roles[(rep + 1) % ready["roles"]], f"startup-{uuid.uuid4().hex[:8]}"
            target.prepare(other, walk)
            prepared = target.say(other, OPENING[(rep + 1) % len(OPENING)], walk, max_tokens)
        finally:
            client.close()
        wait_for_warm_up(log, proc, READY_TIMEOUT_S)  # as a session of play would: the next start finds it all saved
        t1 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        return {"npc": npc, "ready_s": ready_s, "first_ttft_ms": first.ttft * 1000, "first_line_ms": first.total * 1000,
                "follow_ttft_ms": follow.ttft * 1000, "prepared_ttft_ms": prepared.ttft * 1000,
                "stop_s": time.perf_counter() - t1, "error": first.error or follow.error or prepared.error}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        log.close()


def wait_for_warm_up(log, proc: subprocess.Popen, timeout: float) -> None:
    """Until the server has logged its warm-up summary (``warm: ...``), it exits, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        log.seek(0)
        if b"\nwarm: " in b"\n" + log.read():
            return
        time.sleep(0.1)


def startup(commands: dict[str, list[str]], reps: int, max_tokens: int = 16, progress=None) -> dict:
    """Each way of starting, first on an empty cache (a player's first launch) and then again on the cache that
    start left (every later launch). name -> summaries of the ready time (s), the first line's and the
    follow-up's time to first token (ms), the first over the follow-up, and the time from SIGTERM to exit (s)."""
    rows: dict[str, list[dict]] = {}
    for rep in range(reps):
        for name, cmd in commands.items():
            with tempfile.TemporaryDirectory(prefix="neeko-startup-") as cache:
                for when in ("first start", "next start"):
                    rows.setdefault(f"{name}, {when}", []).append(one_start(cmd, Path(cache), rep, max_tokens))
                    if progress:
                        progress()
    out = {}
    for name, rs in rows.items():
        first, follow = summary([r["first_ttft_ms"] for r in rs]), summary([r["follow_ttft_ms"] for r in rs])
        prepared = summary([r["prepared_ttft_ms"] for r in rs])
        out[name] = {"ready_s": summary([r["ready_s"] for r in rs]), "first_ttft_ms": first, "follow_ttft_ms": follow,
                     "first_line_ms": summary([r["first_line_ms"] for r in rs]),
                     "first_over_follow": ratio(first["p50"], follow["p50"]),
                     "prepared_ttft_ms": prepared, "prepared_over_follow": ratio(prepared["p50"], follow["p50"]),
                     "stop_s": summary([r["stop_s"] for r in rs]), "errors": [r["error"] for r in rs if r["error"]]}
    return out
