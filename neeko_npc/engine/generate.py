"""Generation on a pool of llama.cpp contexts that share one model.

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
"""

from __future__ import annotations

import codecs
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .. import defaults
from .llamacpp import LlamaContext, LlamaModel


class PoolBusy(RuntimeError):
    pass


class NonFiniteLogits(RuntimeError):
    """The model's output for a reply held NaN or infinity (a broken adapter): the reply cannot go on."""


def check_finite(logits: np.ndarray) -> np.ndarray:
    if not np.isfinite(logits).all():
        raise NonFiniteLogits("the model's logits are not finite")
    return logits


@dataclass
class GenOptions:
    max_tokens: int = defaults.MAX_TOKENS
    temperature: float = defaults.TEMPERATURE
    top_p: float = defaults.TOP_P
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


@dataclass
class Slot:
    index: int
    ctx: LlamaContext
    tokens: list[int] = field(default_factory=list)
    key: tuple = ()
    last_used: float = 0.0
    adapters: tuple = ()  # the adapter handles the context holds now


class CoreBudget:
    """The CPU threads that every context's decodes share.

    A decode takes its fair share (all the threads when its context is the only busy one, else
    threads // busy, at least one) and waits until that many are free, so the decodes in flight never
    ask for more threads than there are. ggml's threads spin at barriers: on this 2-core machine, two
    2-thread decodes at once ran at 19 tokens/s together where one alone ran at 118, and four at 3."""

    def __init__(self, threads: int, busy: Callable[[], int]):
        self.threads = threads
        self._busy = busy
        self._free = threads
        self._cond = threading.Condition()

    def share(self) -> int:
        return max(1, self.threads // max(1, self._busy()))

    @contextmanager
    def use(self):
        """Hold this decode's share of the threads; yields how many it may use."""
        with self._cond:
            while True:
                n = self.share()  # asked again after each wait: the busy count may have changed
                if self._free >= n:
                    break
                self._cond.wait(0.05)
            self._free -= n
        try:
            yield n
        finally:
            with self._cond:
                self._free += n
                self._cond.notify_all()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ContextPool:
    def __init__(self, model: LlamaModel, size: int = defaults.POOL_SIZE, n_ctx: int = defaults.N_CTX,
                 n_threads: int | None = None, max_queue: int = defaults.MAX_QUEUE):
        self.model = model
        self.n_ctx = n_ctx
        self.threads = n_threads or max(1, os.cpu_count() or 1)  # shared by the contexts decoding at once
        self.slots = [Slot(i, model.new_context(n_ctx, self.threads)) for i in range(size)]
        self.cores = CoreBudget(self.threads, self.busy)
        self._free = list(self.slots)
        self._cond = threading.Condition()
        self._waiting = 0
        self.max_queue = max_queue

    @property
    def size(self) -> int:
        return len(self.slots)

    def acquire(self, key: tuple, prompt: list[int], timeout: float, adapters: list = (), scales: list[float] = ()) -> Slot:
        """The free slot with the longest reusable prefix for (key, prompt), else one already holding the
        key's adapters, else the least recently used; its context gets ``adapters`` at ``scales``."""
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
            best = max(self._free, key=lambda s: (common_prefix(s.tokens, prompt) if s.key == key else -1,
                                                   s.key == key, -s.last_used))
            self._free.remove(best)
            self._set_adapters(best, list(adapters), list(scales))
            return best

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
        """Drop the cached prefix of every free context (the benchmark's cold lines)."""
        with self._cond:
            for s in self._free:
                s.tokens, s.key = [], ()

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


class ReplyStream:
    """An iterator over a reply's chunks that runs ``on_close(finish, text)`` exactly once: when the
    reply ends, when it fails, when ``close()`` is called, or when it is garbage-collected unstarted
    (a generator's ``finally`` would not run in that last case, leaking its context)."""

    def __init__(self, chunks: Iterator[Chunk], on_close: Callable[[str, str], None]):
        self._chunks = chunks
        self._on_close = on_close
        self._text: list[str] = []
        self._finish = ""
        self._closed = False

    def __iter__(self) -> "ReplyStream":
        return self

    def __next__(self) -> Chunk:
        if self._closed:
            raise StopIteration
        try:
            chunk = next(self._chunks)
        except BaseException:
            self.close()
            raise
        self._text.append(chunk.text)
        if chunk.done:
            self._finish = chunk.finish
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close(self._finish, "".join(self._text))

    def __del__(self):
        self.close()


class TextStream:
    """The text a reply has produced so far, cut into stream-safe deltas.

    ``update`` takes the whole decoded text after each token and returns the new text that is safe to
    send: never half a character, and never the start of what might become a stop string."""

    def __init__(self, stop: tuple[str, ...] = ()):
        self.stop = tuple(s for s in stop if s)
        self.hold = max((len(s) for s in self.stop), default=0)
        self.text = ""
        self.sent = 0
        self.stopped = False

    def update(self, text: str) -> str:
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, self.stopped = text[:cut], True
        self.text = text
        ready = len(text) - self.hold
        while ready > self.sent and text[ready - 1] == "\ufffd":  # an incomplete multi-byte character
            ready -= 1
        if self.stopped or ready <= self.sent:
            return ""
        delta, self.sent = text[self.sent:ready], ready
        return delta

    def rest(self) -> str:
        """Everything not yet sent, once the reply has ended."""
        delta, self.sent = self.text[self.sent:], len(self.text)
        return delta


def generate(model: LlamaModel, slot: Slot, adapters: list, scales: list[float], key: tuple, prompt: list[int],
             opts: GenOptions, cancelled: Callable[[], bool] = lambda: False,
             cores: CoreBudget | None = None) -> Iterator[Chunk]:
    """Stream one reply. The slot must come from ContextPool.acquire; the caller releases it.
    Each decode runs on its share of ``cores`` (the pool's CoreBudget) when one is given."""
    ctx = slot.ctx

    def decode(tokens: list[int]) -> np.ndarray:
        """Finite logits after ``tokens``; on any failure the cache holds nothing reusable and is cleared."""
        try:
            if cores is None:
                return check_finite(ctx.decode(tokens))
            with cores.use() as n:
                ctx.set_threads(n)
                return check_finite(ctx.decode(tokens))
        except Exception:
            slot.tokens, slot.key = [], ()
            ctx.clear()
            raise

    ctx.set_adapters(adapters, scales)  # normally already set by acquire(); the slot is busy, its adapters pinned
    slot.adapters = tuple(adapters)
    reuse = common_prefix(slot.tokens, prompt) if slot.key == key else 0
    reuse = min(reuse, len(prompt) - 1)  # at least one token must be decoded to get logits
    if reuse > 0:
        ctx.truncate(reuse)
    else:
        ctx.clear()
    slot.tokens = slot.tokens[:reuse]
    slot.key = key
    logits = decode(prompt[reuse:])
    slot.tokens = list(prompt)
    rng = np.random.default_rng(opts.seed)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = TextStream(opts.stop)
    decoded = ""
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
        decoded += decoder.decode(model.piece(tok))
        delta = out.update(decoded)
        if out.stopped:
            finish = "stop"
            break
        if delta:
            yield Chunk(delta, completion_tokens=n)
        if len(slot.tokens) + 1 >= slot.ctx.n_ctx:
            break
        logits = decode([tok])
        slot.tokens.append(tok)
    out.update(decoded + decoder.decode(b"", final=True))
    yield Chunk(out.rest(), done=True, finish=finish, completion_tokens=n, prompt_tokens=len(prompt), cached_tokens=reuse)
