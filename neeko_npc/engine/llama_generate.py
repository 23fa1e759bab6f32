"""The llama.cpp backend's generation loop: a line read and decoded on a slot of the pool (llama_pool.py).

Each line says how its prompt was served: ``hot`` (the context already held a prefix), ``snapshot`` (a kept
state was restored) or ``cold``. Every decode goes through ``guarded``: it runs on the context's share of the
cores (CoreBudget), and on any failure the slot is cleared so that nothing half-read is reused.

A contrasted line (GenOptions.contrast, roles/sampling.py ``contrasted``) reads the same prompt on the slot's
base-model context under the empty key, and decodes each drawn token there too.
"""

from __future__ import annotations

import codecs
import logging
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import numpy as np

from ..protocol import Cache, Finish
from ..roles.beats import BeatJob, choose, continuation_logprob
from ..roles.sampling import contrasted, sample
from .llama_pool import KEEP_MIN_TOKENS, CoreBudget, Slot, keep_state
from .llamacpp import LlamaContext, LlamaModel
from .snapshots import SnapshotStore, common_prefix
from .stream import Chunk, GenOptions, TextStream, check_finite

log = logging.getLogger("neeko_npc.engine")
T = TypeVar("T")


@contextmanager
def on_cores(ctx: LlamaContext, cores: CoreBudget | None):
    """Hold ``ctx``'s share of ``cores`` for one decode (all its threads without a budget)."""
    if cores is None:
        yield
        return
    with cores.use() as n:
        ctx.set_threads(n)
        yield


def decode_on(ctx: LlamaContext, tokens: list[int], cores: CoreBudget | None = None) -> np.ndarray:
    """Decode ``tokens`` on ``ctx`` with its share of ``cores``; finite logits or NonFiniteLogits."""
    with on_cores(ctx, cores):
        return check_finite(ctx.decode(tokens))


def guarded(slot: Slot, cores: CoreBudget | None, decode: Callable[[LlamaContext], T]) -> T:
    """The one guarded decode: ``decode(slot.ctx)`` on the slot's share of ``cores``. On any failure (llama.cpp
    refused, the output went non-finite, the thread was interrupted) the slot holds nothing reusable and is
    cleared before the error goes on."""
    try:
        with on_cores(slot.ctx, cores):
            return decode(slot.ctx)
    except Exception:
        slot.tokens, slot.key = [], ()
        slot.ctx.clear()
        raise


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
    """Finite logits after ``tokens`` (``guarded``)."""
    return guarded(slot, cores, lambda ctx: check_finite(ctx.decode(tokens)))


def generate(model: LlamaModel, slot: Slot, adapters: list, scales: list[float], key: tuple, prompt: list[int],
             opts: GenOptions, cancelled: Callable[[], bool] = lambda: False,
             cores: CoreBudget | None = None, store: SnapshotStore | None = None,
             beats: BeatJob | None = None, base: Slot | None = None) -> Iterator[Chunk]:
    """Stream one reply. The slot must come from ContextPool.acquire; the caller releases it.
    Each decode runs on its share of ``cores`` (the pool's CoreBudget) when one is given; a snapshot in
    ``store`` that shares more of the prompt than the slot holds is restored first. With ``beats``, a line
    that ended (not cancelled) gets its emotion and action on the last chunk: from the NPC's learned beats (its own
    head, or its blocks' heads mixed) on the hidden state of the line's last decoded token where they cover the ask,
    else scored on this slot. With
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

        def decode(ctx: LlamaContext) -> list[np.ndarray]:
            return [check_finite(r) for r in ctx.decode_branches(branches, len(slot.tokens))]

        rows = guarded(slot, self.cores, decode) if branches else []
        it = iter(rows)
        return [continuation_logprob(logits, next(it) if len(c) > 1 else None, c) for c in conts]
