"""The launch contract a game engine holds the server to (``serve`` and the shipped ``neeko-npc-server`` alike).

- **One line on stdout.** ``claim_stdout`` takes the process's standard output for the launcher alone: from then
  on every other write, Python's or a C library's, goes to stderr. Exactly one JSON line is written there:
  ``{"event": "ready", "port": N, "pid": P, "roles": K, "version": "..."}`` once the model and roles are loaded,
  or ``{"event": "failed", "error": "..."}`` if they never will be (the process then exits 1).
- **The token never on a command line**: ``read_token`` takes it from a file or the environment.
- **A crashed game leaves nothing behind**: ``watch_parent`` calls back once the given process is gone
  (polled every ``PARENT_POLL_S``), and the daemon stops as on SIGTERM.
- **Stopping is bounded**: ``exit_within`` ends the process ``STOP_S`` seconds after a stop began, whatever a
  stuck decode or client is doing.

Standard library only, so the launcher's own code adds nothing to the bundle.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, TextIO

from .. import defaults
from ..errors import InputError

READY = "ready"  # the event of the line a launcher waits for
FAILED = "failed"  # the event of the line that says the server will never be ready
PARENT_POLL_S = 0.25  # how often --parent-pid is checked
STOP_S = 1.5  # a stop that has not finished by then ends the process (the contract says 2 s)


def claim_stdout() -> TextIO:
    """Standard output, for the launcher's JSON line only; fd 1 and ``sys.stdout`` now write to stderr.

    Where stdout is no real file (an embedding host, a test runner) only ``sys.stdout`` is moved."""
    sys.stdout.flush()
    try:
        fd = os.dup(1)
        os.dup2(2, 1)  # C libraries writing to fd 1 (llama.cpp, gRPC) now reach stderr
    except OSError:
        out, sys.stdout = sys.stdout, sys.stderr
        return out
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", encoding="utf-8", buffering=1)


def event_line(event: str, **fields) -> str:
    return json.dumps({"event": event, **fields}, separators=(", ", ": "))


def announce(out: TextIO, event: str, **fields) -> None:
    out.write(event_line(event, **fields) + "\n")
    out.flush()


def read_token(token: str, token_file: Path | None) -> str:
    """The bearer token from ``--token-file`` (first line, whitespace stripped) or as given (the environment)."""
    if token_file is None:
        return token
    if token:
        raise InputError(f"give the token once: --token-file or {defaults.TOKEN_ENV}/--token, not both")
    try:
        lines = Path(token_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--token-file {token_file}: cannot read it ({exc})") from None
    got = lines[0].strip() if lines else ""
    if not got:
        raise InputError(f"--token-file {token_file} is empty: write the token on its first line")
    return got


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, dead but not yet reaped, counts as gone)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":  # pragma: no cover - not run here (only Linux is built and tested)
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        if not handle:
            return False
        try:
            return kernel32.WaitForSingleObject(handle, 0) == 0x102  # WAIT_TIMEOUT: still running
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    try:  # Linux: a zombie's state is Z
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] not in "ZX"
    except (OSError, ValueError, IndexError):
        return True


def watch_parent(pid: int, on_gone: Callable[[], None]) -> threading.Thread:
    """Call ``on_gone`` once process ``pid`` has ended (or this process was handed to another parent, where
    ``pid`` was its parent). A pid that is not running now is refused: the caller passed the wrong one."""
    if not process_alive(pid):
        raise InputError(f"--parent-pid {pid}: no such process is running")
    was_parent = os.getppid() == pid if hasattr(os, "getppid") else False

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if (was_parent and os.getppid() != pid) or not process_alive(pid):
                on_gone()
                return

    t = threading.Thread(target=watch, name="neeko-parent-watch", daemon=True)
    t.start()
    return t


def exit_within(seconds: float = STOP_S, code: int = 0) -> None:
    """Make sure the process ends ``seconds`` from now, even if a clean stop hangs."""

    def force() -> None:
        time.sleep(seconds)
        sys.stderr.flush()
        os._exit(code)

    threading.Thread(target=force, name="neeko-exit-guard", daemon=True).start()


def stop_signals(on_stop: Callable[[], None]) -> None:
    """SIGTERM, SIGINT and (Windows) Ctrl-Break all stop the server the same way."""
    import signal

    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda *_: on_stop())
