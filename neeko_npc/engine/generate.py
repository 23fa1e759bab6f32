"""Generation on a pool of llama.cpp contexts that share one model.

Each context (a *slot*) remembers the tokens its KV cache holds and the adapter
set and scales they were computed under (its *key*). A request reuses the
longest common token prefix only from a slot with the same key: a KV cache
computed under one adapter set is wrong under another. A request with no free
slot waits in a bounded queue, then gets :class:`PoolBusy`.
"""

from __future__ import annotations

import codecs
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .llamacpp import LlamaContext, LlamaModel


class PoolBusy(RuntimeError):
    pass


@dataclass
class GenOptions:
    max_tokens: int = 96
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Chunk:
    text: str
    done: bool = False
    finish: str = ""  # "stop", "length", "cancelled"
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float = 0.0


@dataclass
class Slot:
    index: int
    ctx: LlamaContext
    tokens: list[int] = field(default_factory=list)
    key: tuple = ()
    last_used: float = 0.0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ContextPool:
    def __init__(self, model: LlamaModel, size: int = 2, n_ctx: int = 2048, n_threads: int | None = None,
                 max_queue: int = 16):
        self.model = model
        self.n_ctx = n_ctx
        self.slots = [Slot(i, model.new_context(n_ctx, n_threads)) for i in range(size)]
        self._free = list(self.slots)
        self._cond = threading.Condition()
        self._waiting = 0
        self.max_queue = max_queue

    @property
    def size(self) -> int:
        return len(self.slots)

    def acquire(self, key: tuple, prompt: list[int], timeout: float) -> Slot:
        """The free slot with the longest reusable prefix for (key, prompt); else the least recently used."""
        deadline = time.monotonic() + timeout
        with self._cond:
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
            best = max(self._free, key=lambda s: (common_prefix(s.tokens, prompt) if s.key == key else -1, -s.last_used))
            self._free.remove(best)
            return best

    def release(self, slot: Slot) -> None:
        slot.ctx.set_adapters([], [])  # no adapter stays referenced by an idle context
        slot.last_used = time.monotonic()
        with self._cond:
            self._free.append(slot)
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every context is back in the pool."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._free) < self.size:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def busy(self) -> int:
        with self._cond:
            return self.size - len(self._free)

    def close(self) -> None:
        for s in self.slots:
            s.ctx.close()


def sample(logits: np.ndarray, opts: GenOptions, rng: np.random.Generator) -> int:
    if opts.temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / opts.temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if opts.top_p < 1.0:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, opts.top_p)) + 1]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(len(p), p=p))


def generate(model: LlamaModel, slot: Slot, adapters: list, scales: list[float], key: tuple, prompt: list[int],
             opts: GenOptions, cancelled: Callable[[], bool] = lambda: False) -> Iterator[Chunk]:
    """Stream one reply. The slot must come from ContextPool.acquire; the caller releases it."""
    t0 = time.perf_counter()
    ctx = slot.ctx
    ctx.set_adapters(adapters, scales)
    reuse = common_prefix(slot.tokens, prompt) if slot.key == key else 0
    reuse = min(reuse, len(prompt) - 1)  # at least one token must be decoded to get logits
    if reuse > 0:
        ctx.truncate(reuse)
    else:
        ctx.clear()
    slot.tokens = slot.tokens[:reuse]
    slot.key = key
    try:
        logits = ctx.decode(prompt[reuse:])
    except Exception:
        slot.tokens, slot.key = [], ()
        ctx.clear()
        raise
    slot.tokens = list(prompt)
    rng = np.random.default_rng(opts.seed)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text, sent = "", 0
    hold = max((len(s) for s in opts.stop), default=0)
    stats = dict(prompt_tokens=len(prompt), cached_tokens=reuse)
    first = True
    n = 0
    finish = "length"
    while n < opts.max_tokens:
        if cancelled():
            finish = "cancelled"
            break
        tok = sample(logits, opts, rng)
        if model.is_eog(tok):
            finish = "stop"
            break
        n += 1
        text += decoder.decode(model.piece(tok))
        cut = min((i for i in (text.find(s) for s in opts.stop if s) if i >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
            finish = "stop"
            break
        ready = len(text) - hold if hold else len(text)
        if ready > sent:
            chunk = Chunk(text[sent:ready], completion_tokens=n)
            if first:
                chunk.ttft_ms = (time.perf_counter() - t0) * 1000
                first = False
            sent = ready
            yield chunk
        if len(slot.tokens) + 1 >= slot.ctx.n_ctx:
            break
        logits = ctx.decode([tok])
        slot.tokens.append(tok)
    text += decoder.decode(b"", final=True)
    yield Chunk(text[sent:], done=True, finish=finish, completion_tokens=n,
                ttft_ms=(time.perf_counter() - t0) * 1000 if first else 0.0, **stats)
