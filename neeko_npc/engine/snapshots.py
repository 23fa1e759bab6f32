"""Conversation states kept in host memory, so a line can start on any free context.

A snapshot is one llama.cpp sequence's state (the KV of its tokens, copied out with
``llama_state_seq_get_data``) with the tokens it holds and the key it was computed under: the adapter
set and scales. A KV cache is valid only under that key, so a snapshot is only ever offered to a
request with the very same key, and dropped when any adapter of its key is retired (a role reloaded
or removed).

The store is an LRU with a byte budget (``serve --snapshot-mib``). ``best`` finds the snapshot that
shares the longest token prefix with a prompt; restoring it and trimming to that prefix gives the
very KV the original context held for those tokens (the next logits were bit-identical here).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Snapshot:
    key: tuple  # ((adapter sha256, scale), ...): the adapter set its KV was computed under
    tokens: tuple[int, ...]
    data: bytes  # llama_state_seq_get_data of sequence 0
    warm: bool = False  # a role's profile prefix, prefilled at load: evicted only after every other snapshot

    @property
    def nbytes(self) -> int:
        return len(self.data)


def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class SnapshotStore:
    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._items: OrderedDict[tuple, Snapshot] = OrderedDict()  # (key, tokens) -> snapshot, oldest first
        self._bytes = 0
        self._lock = threading.Lock()
        self._retired: set[str] = set()  # adapters whose role was reloaded or removed: no snapshot under them
        self.stats = {"stored": 0, "restored": 0, "evicted": 0, "dropped": 0}

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def put(self, snap: Snapshot) -> bool:
        """Keep ``snap`` (replacing any snapshot it extends); False when it is larger than the whole budget."""
        if snap.nbytes > self.budget or not snap.tokens:
            return False
        with self._lock:
            if any(sha in self._retired for sha, _ in snap.key):
                return False  # computed by a stream that outlived its role's reload
            for k, old in list(self._items.items()):
                if old.key == snap.key and len(old.tokens) <= len(snap.tokens) and snap.tokens[:len(old.tokens)] == old.tokens:
                    if old.warm and not snap.warm:
                        continue  # a role's warm prefix stays, whatever conversations grow from it
                    self._remove(k)
            k = (snap.key, snap.tokens)
            if k in self._items:
                self._remove(k)
            self._items[k] = snap
            self._bytes += snap.nbytes
            self.stats["stored"] += 1
            self._evict(keep=k)
            return True

    def covers(self, key: tuple, tokens) -> bool:
        """Whether a kept snapshot already holds ``tokens`` (or more) under ``key``: no need to save them again."""
        tokens = tuple(tokens)
        with self._lock:
            return any(s.key == key and s.tokens[:len(tokens)] == tokens for s in self._items.values())

    def best(self, key: tuple, prompt: list[int], at_least: int = 0) -> tuple[Snapshot | None, int]:
        """The snapshot under ``key`` sharing the longest prefix with ``prompt`` (and that prefix's length), if the
        prefix is longer than ``at_least``; it becomes the most recently used."""
        found, n = None, at_least
        with self._lock:
            for k, s in self._items.items():
                if s.key != key:
                    continue
                c = common_prefix(s.tokens, prompt)
                if c > n:
                    found, n = s, c
            if found is None:
                return None, 0
            self._items.move_to_end((found.key, found.tokens))
            self.stats["restored"] += 1
            return found, n

    def revive(self, sha256: str) -> None:
        """An adapter is loaded (again): snapshots under it may be kept."""
        with self._lock:
            self._retired.discard(sha256)

    def drop_adapter(self, sha256: str) -> int:
        """Forget every snapshot computed with this adapter, and keep none from now on (its role was reloaded or
        removed; ``revive`` undoes that if the very same adapter is loaded again)."""
        with self._lock:
            self._retired.add(sha256)
            gone = [k for k, s in self._items.items() if any(sha == sha256 for sha, _ in s.key)]
            for k in gone:
                self._remove(k)
            self.stats["dropped"] += len(gone)
            return len(gone)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def _remove(self, k) -> None:
        self._bytes -= self._items.pop(k).nbytes

    def _evict(self, keep) -> None:
        """Least recently used first; warm prefixes only once no other conversation is left; never ``keep``."""
        while self._bytes > self.budget:
            others = [(k, s) for k, s in self._items.items() if k != keep]
            victim = next((k for k, s in others if not s.warm), None) or others[0][0]
            self._remove(victim)
            self.stats["evicted"] += 1


class WarmFiles:
    """Roles' warm prefixes saved to disk, so a server's next start restores them instead of prefilling them.

    A file is named by a hash of everything its KV depends on: the base model's fingerprint, the llama.cpp build
    that wrote it, the key (adapters by content hash, and scales) and the tokens. Its header repeats them, and a
    file whose header differs in any of them, or that llama.cpp will not restore, is ignored (and replaced by
    the next warm-up). ``folders`` are searched in order (a bundle ships its own, read-only); new files go to
    the first one, the cache."""

    MAGIC = b"NEEKO-WARM\x00\x01"

    def __init__(self, folders: list, fingerprint: str, build: str):
        self.folders = [Path(f) for f in folders if f]
        self.fingerprint = fingerprint
        self.build = build

    def _header(self, key: tuple, tokens) -> bytes:
        return json.dumps({"fingerprint": self.fingerprint, "build": self.build, "key": [list(k) for k in key],
                           "tokens": list(tokens)}, separators=(",", ":")).encode()

    def name(self, key: tuple, tokens) -> str:
        return hashlib.sha256(self._header(key, tokens)).hexdigest()[:32] + ".kv"

    def load(self, key: tuple, tokens) -> bytes | None:
        """The saved state for (key, tokens), or None."""
        header, name = self._header(key, tokens), self.name(key, tokens)
        for folder in self.folders:
            try:
                raw = (folder / name).read_bytes()
            except OSError:
                continue
            start = len(self.MAGIC) + 4
            if raw[: len(self.MAGIC)] != self.MAGIC or len(raw) < start:
                continue
            (n,) = struct.unpack("<I", raw[len(self.MAGIC):start])
            if raw[start:start + n] == header and len(raw) > start + n:
                return raw[start + n:]
        return None

    def save(self, key: tuple, tokens, data: bytes) -> bool:
        """Write the state to the first folder (atomically); False if it cannot be written (a read-only disk)."""
        if not self.folders:
            return False
        header = self._header(key, tokens)
        path = self.folders[0] / self.name(key, tokens)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(self.MAGIC + struct.pack("<I", len(header)) + header + data)
            os.replace(tmp, path)
            return True
        except OSError:
            try:
                tmp.unlink()  # a half-written file, if the write got that far
            except OSError:
                pass
            return False
