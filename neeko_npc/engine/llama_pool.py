"""The llama.cpp backend's pool: role blocks as llama.cpp adapters, and the contexts that lines decode on.

One llama.cpp model is shared by a pool of contexts (the binding is llamacpp.py).

Each context (a *slot*) remembers the tokens its KV cache holds and the adapter
set and scales they were computed under (its *key*). A request reuses the
longest common token prefix only from a slot with the same key: a KV cache
computed under one adapter set is wrong under another. A request with no free
slot waits in a bounded queue, then gets :class:`PoolBusy`.

An idle slot keeps its adapter set: changing a context's set makes llama.cpp
re-plan its compute graph at the next decode, so a request goes to a slot that
already holds its NPC when one is free. Before an adapter is freed,
``drop_adapter`` detaches it from idle slots; a busy slot only holds the
adapters its own request has pinned.

With a snapshot store (snapshots.py), what a context held is not lost when the
context goes to another NPC: its state is copied out first (``keep_state``),
and a later request restores the longest matching snapshot into whatever
context is free (llama_generate.py).

A contrasted line (GenOptions.contrast) also needs the base model's logits for the same tokens: its slot gets a
second context without adapters at its first such line (``base_of``).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import defaults
from ..errors import PoolBusy
from ..export.fold import fold
from ..export.gguf_lora import write_gguf_lora
from ..roles.asset import BaseInfo, RoleAsset
from .llamacpp import LlamaContext, LlamaModel
from .snapshots import Snapshot, SnapshotStore, common_prefix

log = logging.getLogger("neeko_npc.engine")


# -- role blocks as llama.cpp adapters -------------------------------------------------------------

def default_cache_dir() -> Path:
    return defaults.cache_root() / "adapters"


class LlamaAdapters:
    """llama.cpp backend: each block exported to a cached GGUF LoRA and loaded with llama_adapter_lora_init."""

    def __init__(self, model: LlamaModel, base: BaseInfo, cache_dir: Path | None = None, before_free=None,
                 store: SnapshotStore | None = None, shipped: tuple = ()):
        self.model, self.base = model, base
        self.cache_dir = cache_dir or default_cache_dir()
        self.shipped = tuple(Path(d) for d in shipped)  # read-only folders of ready adapters (a bundle's warm/)
        self.before_free = before_free  # detaches the adapter from idle contexts (ContextPool.drop_adapter)
        self.store = store  # KV snapshots: dropped when their adapter retires

    def path(self, asset: RoleAsset) -> Path:
        """The GGUF LoRA of a block role (named by its content hash): a shipped one, or the cache's."""
        name = f"{asset.sha256}.gguf"
        return next((d / name for d in self.shipped if (d / name).is_file()), self.cache_dir / name)

    def load(self, asset: RoleAsset):
        path = self.path(asset)
        if not path.is_file():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            write_gguf_lora(fold(asset), self.base, path, name=asset.id)
        handle = self.model.load_adapter(path)
        if self.store is not None:
            self.store.revive(asset.sha256)
        return handle

    def retire(self, sha256: str) -> None:
        if self.store is not None:
            self.store.drop_adapter(sha256)

    def free(self, handle) -> None:
        if self.before_free is not None:
            self.before_free(handle)
        self.model.free_adapter(handle)


# -- the pool of contexts ------------------------------------------------------------------

@dataclass
class Slot:
    index: int
    ctx: LlamaContext
    tokens: list[int] = field(default_factory=list)
    key: tuple = ()
    last_used: float = 0.0
    adapters: tuple = ()  # the adapter handles the context holds now
    base: "Slot | None" = None  # contrasted lines: a context without adapters, made at the slot's first such line


class CoreBudget:
    """The CPU threads that every context's decodes share.

    A decode takes its fair share (all the threads when its context is the only busy one, else
    threads // busy, at least one) and waits until that many are free, so the decodes in flight never
    ask for more threads than there are; decodes get their threads in the order they asked for them. ggml's
    threads spin at barriers, so decodes that together ask for more threads than there are cores run far slower
    than one alone (tests/test_scheduling.py; the bench's concurrency section)."""

    def __init__(self, threads: int, busy: Callable[[], int]):
        self.threads = threads
        self._busy = busy
        self._free = threads
        self._cond = threading.Condition()
        self._next = 0  # tickets: decodes get their threads in the order they asked, so no stream starves
        self._serving = 0

    def share(self) -> int:
        return max(1, self.threads // max(1, self._busy()))

    @contextmanager
    def use(self):
        """Hold this decode's share of the threads; yields how many it may use."""
        with self._cond:
            ticket = self._next
            self._next += 1
            try:
                while True:
                    n = self.share()  # asked again after each wait: the busy count may have changed
                    if self._serving == ticket and self._free >= n:
                        break
                    self._cond.wait(0.05)
            finally:
                self._serving += 1  # the next ticket's turn (also if this wait was interrupted)
                self._cond.notify_all()
            self._free -= n
        try:
            yield n
        finally:
            with self._cond:
                self._free += n
                self._cond.notify_all()


KEEP_MIN_TOKENS = 16  # a context's state shorter than this (or only this much longer than a kept one) is not worth a snapshot


class ContextPool:
    def __init__(self, model: LlamaModel, size: int = defaults.POOL_SIZE, n_ctx: int = defaults.N_CTX,
                 n_threads: int | None = None, max_queue: int = defaults.MAX_QUEUE, store: SnapshotStore | None = None):
        self.model = model
        self.n_ctx = n_ctx
        self.store = store
        self.threads = n_threads or defaults.default_threads()  # shared by the contexts decoding at once
        self.slots = [Slot(i, model.new_context(n_ctx, self.threads)) for i in range(size)]
        self.warming = 0  # warm-up prefills in flight: they share the cores like a busy context
        self.cores = CoreBudget(self.threads, lambda: self.busy() + self.warming)
        self._free = list(self.slots)
        self._cond = threading.Condition()
        self._waiting = 0
        self.max_queue = max_queue

    @property
    def size(self) -> int:
        return len(self.slots)

    def acquire(self, key: tuple, prompt: list[int], timeout: float, adapters: list = (), scales: list[float] = (),
                wait: bool = True) -> Slot:
        """The free slot with the longest reusable prefix for (key, prompt), else one already holding the
        key's adapters, else the least recently used; its context gets ``adapters`` at ``scales``. With
        ``wait`` False, PoolBusy at once when none is free (and no place in the queue is taken)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if not self._free and not wait:
                raise PoolBusy(f"all {self.size} contexts are busy")
            if not self._free:
                if self._waiting >= self.max_queue:
                    raise PoolBusy(f"all {self.size} contexts are busy and {self._waiting} requests are queued "
                                   f"(--max-queue {self.max_queue}); try again shortly")
                self._waiting += 1
                try:
                    while not self._free:
                        left = deadline - time.monotonic()
                        if left <= 0 or not self._cond.wait(left):
                            if not self._free:
                                raise PoolBusy(f"no free context within {timeout:.1f} s ({self.size} contexts, "
                                               f"--pool-size); try again shortly")
                finally:
                    self._waiting -= 1
            best = max(self._free, key=lambda s: (common_prefix(s.tokens, prompt) if s.key == key else -1,
                                                   s.key == key, not s.tokens, -s.last_used))
            self._free.remove(best)
            keep_state(self.store, best, key, prompt)
            self._set_adapters(best, list(adapters), list(scales))
            return best

    def base_of(self, slot: Slot) -> Slot:
        """``slot``'s context without adapters (the base model), made at its first contrasted line. Only the request
        holding ``slot`` calls it."""
        if slot.base is None:
            slot.base = Slot(slot.index, self.model.new_context(self.n_ctx, self.threads))
        return slot.base

    def _set_adapters(self, slot: Slot, adapters: list, scales: list[float]) -> None:
        """Called under the lock: every change of a context's adapter set is serialised with drop_adapter."""
        slot.ctx.set_adapters(adapters, scales)  # a no-op in llama.cpp when the set and scales are unchanged
        slot.adapters = tuple(adapters)

    def release(self, slot: Slot) -> None:
        slot.last_used = time.monotonic()
        with self._cond:
            self._free.append(slot)
            self._cond.notify_all()

    def drop_adapter(self, handle) -> None:
        """Detach an adapter about to be freed from every idle context (and forget their cached prefix)."""
        with self._cond:
            for s in self._free:
                if handle in s.adapters:
                    self._set_adapters(s, [], [])
                    s.tokens, s.key = [], ()

    def forget(self) -> None:
        """Drop the cached prefix of every free context and every snapshot (the benchmark's cold lines)."""
        with self._cond:
            for s in self._free:
                s.tokens, s.key = [], ()
                if s.base is not None:
                    s.base.tokens = []
            if self.store is not None:
                self.store.clear()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every context is back in the pool."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._free) == self.size, timeout)

    def busy(self) -> int:
        with self._cond:
            return self.size - len(self._free)

    def close(self) -> None:
        for s in self.slots:
            s.ctx.close()
            if s.base is not None:
                s.base.ctx.close()


def keep_state(store: SnapshotStore | None, slot: Slot, key: tuple, prompt: list[int]) -> None:
    """Before a slot's state is overwritten for (key, prompt), copy out what would be lost (a few ms)."""
    if store is None or not slot.tokens:
        return
    keep = common_prefix(slot.tokens, prompt) if slot.key == key else 0
    if len(slot.tokens) - keep < KEEP_MIN_TOKENS or store.covers(slot.key, slot.tokens):
        return
    try:
        store.put(Snapshot(slot.key, tuple(slot.tokens), slot.ctx.save_state()))
    except Exception:  # a state that cannot be copied is simply not kept
        log.exception("could not keep a context's state")
