"""Beside a game: the server shares the player's PC with a game that keeps its own threads busy. This section times
a hot line (its prompt already read) and a cold one (the whole prompt read, as at start-up) on a quiet machine and
beside one and two busy neighbours, for the default ``--threads`` and for every core, in one run.

A neighbour is one process that keeps every core busy, as a game's worker threads do. ggml's threads wait for
each other at every layer, spinning: when a neighbour holds a core that one of them needs, the others spin until
the scheduler gives it back, so a server that asks for every core slows far more than its share. The default
threads (defaults.default_threads) leave cores to the game; this section is what chose it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

from .. import defaults
from .stats import ratio, summary
from .targets import InProcess

# One spinning process per core, each leaving when its parent is gone (the bench ended, however it ended).
SPIN = """import os, sys
n, parent = int(sys.argv[1]), os.getppid()
for _ in range(n - 1):
    if os.fork() == 0:
        parent = os.getppid()
        break
while os.getppid() == parent:
    for _ in range(2_000_000):
        pass
"""
LINE = "What do you know about the old mill?"


def spinner_pids() -> list[int]:
    """The processes of every busy neighbour running on this machine (pgrep on SPIN's own text): none should be
    left once a section is over, or once the bench that started them is gone."""
    out = subprocess.run(["pgrep", "-f", r"range\(2_000_000\)"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


@contextmanager
def busy_neighbours(count: int, cores: int):
    """``count`` processes, each keeping ``cores`` cores busy, for the length of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN, str(cores)], start_new_session=True) for _ in range(count)]
    try:
        time.sleep(0.5 if procs else 0)  # every spinner forked and running
        yield
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def beside_a_game(make, threads_options: dict[str, int], levels: list[int], reps: int, max_tokens: int,
                  progress=None) -> dict:
    """``make(threads)`` -> a warmed engine. For each named thread count and each number of busy neighbours: the
    hot line's and the cold line's times (whole line, ms), and each as a multiple of the quiet machine's."""
    cores = defaults.cores()
    out = {"cores": cores, "levels": levels, "runs": {}}
    for name, threads in threads_options.items():
        engine = make(threads)
        try:
            target = InProcess(engine)
            npc = target.roles[0]
            target.say(npc, LINE, "", max_tokens)  # the prompt is now held by a context: the next line is hot
            run = {"threads": threads, "levels": {}}
            for n in levels:
                with busy_neighbours(n, cores):
                    hot, cold = [], []
                    for _ in range(reps):
                        hot.append(target.say(npc, LINE, "", max_tokens))
                        target.forget_cache()
                        cold.append(target.say(npc, LINE, "", max_tokens))
                        progress and progress()
                errors = [x.error for x in hot + cold if x.error]
                run["levels"][str(n)] = {"hot_ms": summary([x.total for x in hot if not x.error], 1000),
                                         "cold_ms": summary([x.total for x in cold if not x.error], 1000),
                                         "errors": errors}
            quiet = run["levels"][str(levels[0])]
            for lv in run["levels"].values():
                lv["hot_over_quiet"] = ratio(lv["hot_ms"].get("p50", float("nan")), quiet["hot_ms"].get("p50", float("nan")))
                lv["cold_over_quiet"] = ratio(lv["cold_ms"].get("p50", float("nan")), quiet["cold_ms"].get("p50", float("nan")))
            out["runs"][name] = run
        finally:
            engine.close()
    return out
