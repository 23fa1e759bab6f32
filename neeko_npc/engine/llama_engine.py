"""The llama.cpp backend: the engine over the pool (llama_pool.py), the generation loop (llama_generate.py) and
the binding (llamacpp.py), and the warm-up that prefills every role's profile prefix once and keeps it.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .. import defaults
from ..errors import PoolBusy, UnknownRole
from .facade import Abilities, Engine, EngineConfig, contrasted_line
from .llama_generate import decode_on, generate, read_prompt
from .llama_pool import KEEP_MIN_TOKENS, ContextPool, LlamaAdapters, keep_state
from .llamacpp import binding_version, cpu_features, open_gguf_base, openmp_build
from .roleset import adapter_key
from .snapshots import Snapshot, SnapshotStore, WarmFiles
from .stream import ReplyStream

log = logging.getLogger("neeko_npc.engine")
MiB = 1024 * 1024
WARM_YIELD_S = 0.1  # a warm-up waiting for the contexts to be idle looks again this often for a stop


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
                        "have decoded. Rebuild it with -DGGML_OPENMP=OFF (docs/troubleshooting.md).")
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

    def _prefill(self, adapters, scales, key, tokens, contrast):
        if self.store is None:
            return 0, "", "kept states are off (--snapshot-mib 0)"
        handles = [a.handle for a in adapters]
        try:
            slot = self.pool.acquire(key, tokens, 0.0, handles, scales, wait=False)
        except PoolBusy as exc:
            return 0, "", str(exc)
        try:
            _, reuse, source = read_prompt(slot, key, tokens, self.pool.cores, self.store, logits=False)
            if contrasted_line(contrast, handles):  # its lines are contrasted: the base model reads the prefix too
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
        """(role id, base) for every prefix to warm: each role's under its own voice and, when its lines are
        contrasted unless a request says otherwise (line_contrast), the same prefix under the base model."""
        roles = self.roles().roles
        return [(rid, base) for rid in sorted(roles)
                for base in ((False, True) if self.line_contrast(None, roles[rid].contrast) > 0 else (False,))]

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
