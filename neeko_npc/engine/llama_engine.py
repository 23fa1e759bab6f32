"""The llama.cpp backend, in one place: the adapter cache, the pool of contexts, generation, the engine.

One llama.cpp model is shared by a pool of contexts (the binding is llamacpp.py).

Each context (a *slot*) remembers the tokens its KV cache holds and the adapter
set and scales they were computed under (its *key*). A request reuses the
longest common token prefix only from a slot with the same key: a KV cache
computed under one adapter set is wrong under another. A request with no free
slot waits in a bounded queue, then gets :class:`PoolBusy`.

An idle slot keeps its adapter set: changing a context's set makes llama.cpp
re-plan its compute graph at the next decode (3 to 7 ms here), so a request
goes to a slot that already holds its NPC when one is free. Before an adapter
is freed, ``drop_adapter`` detaches it from idle slots; a busy slot only holds
the adapters its own request has pinned.

With a snapshot store (snapshots.py), what a context held is not lost when the
context goes to another NPC: its state is copied out first, and a later request
restores the longest matching snapshot into whatever context is free, then reads
only the rest of its prompt. Each line says how its prompt was served: ``hot``
(the context already held a prefix), ``snapshot`` (restored) or ``cold``.

A contrasted line (GenOptions.contrast, roles/sampling.py ``contrasted``) also needs the base model's logits
for the same tokens: its slot gets a second context without adapters at its first such line, which reads the
same prompt under the empty key (its states are kept and warmed like any other) and decodes each drawn token
beside the NPC's context.
"""

from __future__ import annotations

import codecs
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .. import defaults
from ..export.fold import fold
from ..export.gguf_lora import write_gguf_lora
from ..roles.asset import BaseInfo, RoleAsset
from .facade import Abilities, Engine, EngineConfig, contrasted_line
from .roleset import adapter_key
from ..errors import PoolBusy, UnknownRole
from ..roles.beats import BeatJob, choose, continuation_logprob
from ..roles.sampling import contrasted, sample
from .llamacpp import LlamaContext, LlamaModel, binding_version, cpu_features, open_gguf_base, openmp_build
from .snapshots import Snapshot, SnapshotStore, WarmFiles, common_prefix
from ..protocol import Cache, Finish
from .stream import Chunk, GenOptions, ReplyStream, TextStream, check_finite

log = logging.getLogger("neeko_npc.engine")
MiB = 1024 * 1024


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
    threads spin at barriers: on this 2-core machine, two
    2-thread decodes at once ran at 19 tokens/s together where one alone ran at 118, and four at 3."""

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


WARM_YIELD_S = 0.1  # a warm-up waiting for the contexts to be idle looks again this often for a stop
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


# -- one reply ---------------------------------------------------------------------------------

def decode_on(ctx: LlamaContext, tokens: list[int], cores: CoreBudget | None = None) -> np.ndarray:
    """Decode ``tokens`` on ``ctx`` with its share of ``cores`` (all its threads without one); finite logits or
    NonFiniteLogits."""
    if cores is None:
        return check_finite(ctx.decode(tokens))
    with cores.use() as n:
        ctx.set_threads(n)
        return check_finite(ctx.decode(tokens))


def read_prompt(slot: Slot, key: tuple, prompt: list[int], cores: CoreBudget | None = None,
                store: SnapshotStore | None = None, logits: bool = True) -> tuple[np.ndarray | None, int, str]:
    """Make ``slot`` hold ``prompt`` under ``key`` (its adapters already set): reuse the prefix it holds, or
    restore a kept state that shares more, then read the rest. Returns the logits after the last token (None
    with ``logits`` False, when everything could be reused), the tokens reused and how: "hot", "snapshot" or
    "cold" (Cache). On any failure the context is cleared and holds nothing reusable. Hidden states are turned
    off first (with them on, llama.cpp outputs every token of a batch); a learned beat turns them on after."""
    ctx = slot.ctx
    ctx.set_embeddings(False)
    reuse = common_prefix(slot.tokens, prompt) if slot.key == key else 0
    source = Cache.HOT if reuse > 0 else Cache.COLD
    # restoring costs about what reading 16 tokens does: worth it only for more than that
    snap, shared = store.best(key, prompt, at_least=reuse + KEEP_MIN_TOKENS) if store is not None else (None, 0)
    if snap is not None:
        try:
            ctx.load_state(snap.data)
            slot.tokens, reuse, source = list(snap.tokens), shared, Cache.SNAPSHOT
        except Exception:
            log.exception("a kept state could not be restored; reading the prompt cold")
            slot.tokens, reuse, source = [], 0, Cache.COLD
    if logits:
        reuse = min(reuse, len(prompt) - 1)  # at least one token must be decoded to get logits
    if reuse > 0:
        ctx.truncate(reuse)
    else:
        ctx.clear()
    slot.tokens = slot.tokens[:reuse]
    slot.key = key
    out = decode_slot(slot, prompt[reuse:], cores) if reuse < len(prompt) else None
    slot.tokens = list(prompt)
    return out, reuse, source


def decode_slot(slot: Slot, tokens: list[int], cores: CoreBudget | None = None) -> np.ndarray:
    """Finite logits after ``tokens``; on any failure the slot's cache holds nothing reusable and is cleared."""
    try:
        return decode_on(slot.ctx, tokens, cores)
    except Exception:
        slot.tokens, slot.key = [], ()
        slot.ctx.clear()
        raise


def generate(model: LlamaModel, slot: Slot, adapters: list, scales: list[float], key: tuple, prompt: list[int],
             opts: GenOptions, cancelled: Callable[[], bool] = lambda: False,
             cores: CoreBudget | None = None, store: SnapshotStore | None = None,
             beats: BeatJob | None = None, base: Slot | None = None) -> Iterator[Chunk]:
    """Stream one reply. The slot must come from ContextPool.acquire; the caller releases it.
    Each decode runs on its share of ``cores`` (the pool's CoreBudget) when one is given; a snapshot in
    ``store`` that shares more of the prompt than the slot holds is restored first. With ``beats``, a line
    that ended (not cancelled) gets its emotion and action on the last chunk: from the role's learned head on the
    hidden state of the line's last decoded token where it covers the ask, else scored on this slot. With
    ``base`` (the slot's context without adapters, ContextPool.base_of), each token is drawn from the NPC's logits
    contrasted with the base's by ``opts.contrast``, and decoded on both."""
    slot.ctx.set_adapters(adapters, scales)  # normally already set by acquire(); the slot is busy, its adapters pinned
    slot.adapters = tuple(adapters)
    logits, reuse, source = read_prompt(slot, key, prompt, cores, store)
    learned = beats is not None and beats.learned
    slot.ctx.set_embeddings(learned)  # the learned beat reads the hidden state the line's last decode computes
    if base is not None:
        keep_state(store, base, (), prompt)
        base_logits = read_prompt(base, (), prompt, cores, store)[0]
    rng = np.random.default_rng(opts.seed)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = TextStream(opts.stop)
    decoded = ""
    n = 0
    spoke = False  # a token of the line was decoded: the context's hidden state is the line's
    finish = Finish.LENGTH
    while n < opts.max_tokens:
        if cancelled():
            finish = Finish.CANCELLED
            break
        tok = sample(logits if base is None else contrasted(logits, base_logits, opts.contrast), opts, rng)
        if model.is_eog(tok):
            finish = Finish.STOP
            break
        n += 1
        decoded += decoder.decode(model.piece(tok))
        delta = out.update(decoded)
        if out.stopped:
            finish = Finish.STOP
            break
        if delta:
            yield Chunk(delta, completion_tokens=n)
        if len(slot.tokens) + 1 >= slot.ctx.n_ctx:
            break
        logits = decode_slot(slot, [tok], cores)
        slot.tokens.append(tok)
        spoke = True
        if base is not None:
            base_logits = decode_slot(base, [tok], cores)
            base.tokens.append(tok)
    out.update(decoded + decoder.decode(b"", final=True))
    emotion = action = None
    ended = beats is not None and finish in Finish.ENDED and not cancelled()
    if ended and learned and spoke:
        emotion, action = beats.head.choose(slot.ctx.hidden(), beats.ask)
    elif ended:
        beat_prompt = beats.prompt_for(out.text.strip())
        logits, _, _ = read_prompt(slot, key, beat_prompt, cores)  # the line's tokens are mostly held already
        emotion, action = choose(SlotScorer(slot, cores), logits, beats)
    yield Chunk(out.rest(), done=True, finish=finish, completion_tokens=n, prompt_tokens=len(prompt), cached_tokens=reuse,
                cache=source, emotion=emotion, action=action)


class SlotScorer:
    """beats.Scorer on a slot: extends what it holds, and scores continuations on top of it, then trims them off."""

    def __init__(self, slot: Slot, cores: CoreBudget | None):
        self.slot, self.cores = slot, cores

    def extend(self, tokens: list[int]) -> np.ndarray:
        logits = decode_slot(self.slot, tokens, self.cores)
        self.slot.tokens += tokens
        return logits

    def continuations(self, logits: np.ndarray, conts: list[list[int]]) -> list[float]:
        """Every continuation decoded in one batch, each as a branch of its own off what the slot holds."""
        slot = self.slot
        branches = [c[:-1] for c in conts if len(c) > 1]
        rows: list = []
        if branches:
            try:
                if self.cores is None:
                    rows = slot.ctx.decode_branches(branches, len(slot.tokens))
                else:
                    with self.cores.use() as k:
                        slot.ctx.set_threads(k)
                        rows = slot.ctx.decode_branches(branches, len(slot.tokens))
                for r in rows:
                    check_finite(r)
            except Exception:
                slot.tokens, slot.key = [], ()
                slot.ctx.clear()
                raise
        it = iter(rows)
        return [continuation_logprob(logits, next(it) if len(c) > 1 else None, c) for c in conts]


# -- the engine ---------------------------------------------------------------------------------

class LlamaEngine(Engine):
    name = "llama.cpp"
    abilities = Abilities(contrast=True, beats=True, prompt_cache=True)

    def __init__(self, roles_dir: str | Path, base_model: str | None = None, config: EngineConfig | None = None):
        super().__init__(config)
        self.base, self.model, self.template = open_gguf_base(
            base_model, "the llama.cpp engine needs a .gguf base model; convert the HF folder with llama.cpp's "
            "convert_hf_to_gguf.py, or serve it with --engine torch")
        log.info("llama.cpp's CPU backend is built for %s", " ".join(cpu_features()) or "no listed instruction set")
        if openmp_build():
            log.warning("llama.cpp was built with OpenMP: replies decode 3-4x slower once several request threads "
                        "have decoded. Rebuild it with -DGGML_OPENMP=OFF (README, 'llama.cpp on CPUs ...').")
        self.store = SnapshotStore(self.config.snapshot_bytes) if self.config.snapshot_bytes > 0 else None
        self.pool = ContextPool(self.model, self.config.pool_size, self.config.n_ctx, self.config.n_threads,
                                self.config.max_queue, self.store)
        self.adapters = LlamaAdapters(self.model, self.base, before_free=self.pool.drop_adapter, store=self.store,
                                      shipped=self.config.warm_dirs)
        self._warm_lock = threading.Lock()
        self._warm_again = False
        self._warm_thread: threading.Thread | None = None
        self._open_roles(roles_dir, self.adapters)
        self.warm_files = WarmFiles([self.config.warm_save_dir or defaults.warm_dir(), *self.config.warm_dirs],
                                    self.base.fingerprint, binding_version())
        self.warm_restored = self._restore_warm() if self.store is not None else 0
        self._start_warm_up()

    def tokens(self, text: str) -> list[int]:
        return self.model.encode(text)

    def special_texts(self) -> tuple[str, ...]:
        return self.model.special_texts()

    def piece_tokens(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_special=False, parse_special=True)

    def _stream(self, adapters, scales, key, prompt, opts, stop, deadline, beats=None, npc=""):
        handles = [a.handle for a in adapters]
        slot = self.pool.acquire(key, prompt, self._queue_timeout(deadline), handles, scales)
        try:
            base = self.pool.base_of(slot) if contrasted_line(opts.contrast, handles) else None
        except BaseException:
            self.pool.release(slot)
            raise
        chunks = generate(self.model, slot, handles, scales, key, prompt, opts, stop, self.pool.cores, self.store, beats,
                          base)
        return ReplyStream(chunks, lambda finish, text: self.pool.release(slot))

    def _prefill(self, adapters, scales, key, tokens):
        if self.store is None:
            return 0, "", "kept states are off (--snapshot-mib 0)"
        handles = [a.handle for a in adapters]
        try:
            slot = self.pool.acquire(key, tokens, 0.0, handles, scales, wait=False)
        except PoolBusy as exc:
            return 0, "", str(exc)
        try:
            _, reuse, source = read_prompt(slot, key, tokens, self.pool.cores, self.store, logits=False)
            if contrasted_line(self.config.contrast, handles):  # its lines are contrasted: the base model reads the prefix too
                base = self.pool.base_of(slot)
                keep_state(self.store, base, (), tokens)
                read_prompt(base, (), tokens, self.pool.cores, self.store, logits=False)
            return len(tokens) - reuse, source, ""
        finally:
            self.pool.release(slot)

    def describe(self) -> str:
        n = self.pool.size
        kept = f", {self.store.budget / MiB:.0f} MiB of snapshots" if self.store is not None else ""
        return f"{self.name}, {n} context{'s' if n != 1 else ''}{kept}"

    def reload(self):
        result = super().reload()
        self._start_warm_up()
        return result

    def snapshot_stats(self) -> dict:
        """Kept states: count, bytes, budget and what happened to them (stored, restored, evicted, dropped)."""
        if self.store is None:
            return {}
        return {"count": len(self.store), "bytes": self.store.nbytes, "budget": self.store.budget, **self.store.stats}

    # -- warm-up: every role's profile prefix, prefilled once and kept as a snapshot ----------------------

    def _start_warm_up(self) -> None:
        """Warm the roles in the background: requests are served meanwhile, sharing the cores with it."""
        if self.store is None:
            self.warmed.set()
            return
        with self._warm_lock:
            if self._warm_thread is not None and self._warm_thread.is_alive():
                self._warm_again = True  # the running warm-up goes round once more
                return
            self.warmed.clear()
            self._warm_thread = threading.Thread(target=self._warm_up, name="neeko-warm", daemon=True)
            self._warm_thread.start()

    def _warm_up(self) -> None:
        t0 = time.perf_counter()
        done, tokens, ctx = 0, 0, None
        base_done = 0  # the base model's prefixes, for contrasted lines (not counted as roles)
        try:
            while True:
                for rid, base in self._warm_prefixes():
                    if self._closing:
                        return
                    ctx = ctx or self.model.new_context(self.config.n_ctx, self.pool.threads)
                    n = self._warm_one(rid, ctx, base)
                    done, base_done, tokens = done + (n > 0 and not base), base_done + (n > 0 and base), tokens + n
                with self._warm_lock:
                    if not self._warm_again:
                        break
                    self._warm_again = False
            self.warm_summary = (f"warm: {self.warm_restored + done} role prefix(es), {self.warm_restored} restored from saved "
                                 f"states, {done} prefilled ({tokens} tokens) in {time.perf_counter() - t0:.1f} s; "
                                 + (f"{base_done} base-model prefix(es) prefilled for contrasted lines; " if base_done else "")
                                 + f"{self.store.nbytes / MiB:.1f} MiB kept")
            log.info(self.warm_summary)
        except Exception:  # a failed warm-up costs speed, never the daemon
            log.exception("warming the roles' prompts failed")
        finally:
            if ctx is not None:
                ctx.set_adapters([], [])
                ctx.close()
            self.warmed.set()

    def _warm_prefixes(self) -> list[tuple[str, bool]]:
        """(role id, base) for every prefix to warm: each role's under its own voice and, when lines are contrasted
        by default (--contrast), the same prefix under the base model."""
        kinds = (False, True) if self.config.contrast > 0 else (False,)
        return [(rid, base) for rid in sorted(self.roles().roles) for base in kinds]

    @contextmanager
    def _warm_target(self, rid: str, base: bool = False):
        """(adapters, scales, key, prefix tokens) of a role's warm prefix, its adapters pinned meanwhile (with ``base``:
        no adapters, the base model's key); None when the role was removed or its prefix is too short to keep."""
        try:
            voice, adapters, scales = self.roleset.acquire(rid)
        except UnknownRole:  # removed meanwhile
            yield None
            return
        try:
            prefix = self.profile_prefix(voice.profile)
            used, at = ([], []) if base else (adapters, scales)
            yield (used, at, adapter_key(used, at), prefix) if len(prefix) >= KEEP_MIN_TOKENS else None
        finally:
            self.roleset.release(adapters)

    def _restore_warm(self) -> int:
        """Restore every role's saved warm prefix (WarmFiles) before the engine is ready; returns how many roles'
        (their base-model prefixes for contrasted lines are restored alongside, uncounted). Each is checked by
        restoring it into a context once: a file llama.cpp refuses is skipped, and warmed again."""
        restored, ctx = 0, None
        try:
            for rid, base in self._warm_prefixes():
                try:
                    with self._warm_target(rid, base) as target:
                        if target is None:
                            continue
                        _, _, key, prefix = target
                        data = self.warm_files.load(key, prefix)
                        if data is None:
                            continue
                        ctx = ctx or self.model.new_context(self.config.n_ctx, self.pool.threads)
                        ctx.load_state(data)
                        kept = self.store.put(Snapshot(key, tuple(prefix), data, warm=True))
                        restored += kept and not base  # role prefixes; the base model's are restored alongside
                except Exception as exc:  # noqa: BLE001 - a bad file costs one warm-up, never the start
                    log.warning("saved warm prefix of %s not restored (%s); warming it again", rid, exc)
        finally:
            if ctx is not None:
                ctx.close()
        return restored

    def _warm_one(self, rid: str, ctx, base: bool = False) -> int:
        """Prefill one role's profile prefix (``base``: under the base model) and keep it; returns the tokens
        prefilled (0: nothing to do)."""
        try:
            with self._warm_target(rid, base) as target:
                if target is None:
                    return 0
                adapters, scales, key, prefix = target
                if self.store.covers(key, prefix):
                    return 0
                while not self._closing and not self.pool.wait_idle(WARM_YIELD_S):
                    pass  # lines first: warm in the gaps between them
                try:
                    ctx.set_adapters([a.handle for a in adapters], scales)
                    ctx.clear()
                    self.pool.warming += 1
                    try:
                        decode_on(ctx, prefix, self.pool.cores)
                    finally:
                        self.pool.warming -= 1
                    state = ctx.save_state()
                    self.store.put(Snapshot(key, tuple(prefix), state, warm=True))
                    self.warm_files.save(key, prefix, state)
                    return len(prefix)
                finally:
                    ctx.set_adapters([], [])  # before the role's adapters are released
        except Exception as exc:  # this role goes cold, the others still warm
            log.warning("could not warm %s: %s", rid, exc)
            return 0

    def busy(self) -> int:
        return self.pool.busy()

    def _wait_idle(self, timeout: float) -> bool:
        return self.pool.wait_idle(timeout)

    def forget_cache(self) -> None:
        self.warmed.wait()  # a warm-up still running would keep prefixes after the forgetting
        self.pool.forget()

    def _free(self) -> None:
        if self._warm_thread is not None:
            self._warm_thread.join(30)  # it stops at the next role once closing; it decodes on this model
            if self._warm_thread.is_alive():
                log.warning("warm-up still running; not freeing the model")
                return
        self.pool.close()
        self.model.close()
