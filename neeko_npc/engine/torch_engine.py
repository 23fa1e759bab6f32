"""The torch engine (``serve --engine torch``): the same service on the torch block LoRA.

For GPUs, and for batching: requests that arrive together are prefilled as one
left-padded batch and decoded in lockstep, one forward pass per token for all of
them, each row under its own gate weights (the block LoRA takes weights per
row). This is static batching: a request that arrives while a batch runs waits
for the next one. A batch with a contrasted row (GenOptions.contrast) also runs the base
model alone over the same tokens, on a cache of its own. Needs the ``[train]`` extra (torch, transformers).

Beats (roles/beats.py) as the llama.cpp engine gives them: each forward keeps every row's final-norm state at its
last token, so a role's learned head reads the state of the line's last token for free. An ask the head does not
cover takes the beat question, scored by :class:`TorchScorer` under the row's gate weights while the rest of the
batch waits.
"""

from __future__ import annotations

import collections
import inspect
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..neeko.load_base import load_for_training
from ..neeko.model import NeekoLoRA
from ..roles.asset import RoleAsset
from ..roles.base_model import base_info, resolve_base_model
from ..roles.beats import BeatJob, choose, continuation_logprob
from ..roles.prompt import ChatTemplate
from ..roles.sampling import contrasted, sample
from .facade import Abilities, Engine, EngineConfig, contrasted_line
from ..protocol import Finish
from .stream import Chunk, GenOptions, InFlight, ReplyStream, TextStream, check_finite
from ..errors import NonFiniteLogits, PoolBusy


class TorchBlocks:
    """RoleSet backend: a role's block becomes one block of the model's block LoRA; its handle is the index."""

    def __init__(self, engine: "TorchEngine"):
        self.engine = engine

    def load(self, asset: RoleAsset) -> int:
        e = self.engine
        with e.lock:
            if e.neeko is None:
                b = asset.block
                e.neeko = NeekoLoRA(e.model, b.r, b.alpha, tuple(b.targets))
            k = e.neeko.load_block(asset.sha256, asset.block)
            for mod in e.neeko.modules.values():
                mod.lora_A.data = mod.lora_A.data.to(e.device)
                mod.lora_B.data = mod.lora_B.data.to(e.device)
            return k

    def free(self, k: int) -> None:
        """Blocks are never removed (indices must stay stable); a freed block is zeroed and its memory kept."""
        e = self.engine
        with e.lock:
            for mod in e.neeko.modules.values():
                A, B = mod.block(k)
                mod.set_block(k, torch.zeros_like(A), torch.zeros_like(B))


@dataclass
class _Request:
    prompt: list[int]
    blocks: list[int]
    scales: list[float]
    opts: GenOptions
    stop: Callable[[], bool]
    beats: BeatJob | None = None
    out: "queue.Queue[Chunk | BaseException]" = field(default_factory=queue.Queue)
    closed: bool = False  # the consumer dropped the stream: stop its row at the next token

    @property
    def learned(self) -> bool:
        return self.beats is not None and self.beats.learned


class BatchScheduler:
    """Collects requests and runs them in batches of up to ``max_batch`` on one thread."""

    def __init__(self, engine: "TorchEngine", max_batch: int, max_queue: int, window: float = 0.01):
        self.engine = engine
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.window = window
        self._pending: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self.inflight = InFlight(self._cond)  # under the queue's lock: a request counts from the moment it queues
        self._stopped = False
        self.batch_sizes: list[int] = []  # one entry per batch run, for tests and benchmarks
        self._thread = threading.Thread(target=self._loop, name="neeko-torch-batch", daemon=True)
        self._thread.start()

    def submit(self, req: _Request) -> None:
        with self._cond:
            if len(self._pending) >= self.max_queue + self.max_batch:
                raise PoolBusy(f"{len(self._pending)} requests are already waiting for the next batch "
                               f"(--max-queue {self.max_queue}); try again shortly")
            self._pending.append(req)
            self.inflight.add()

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
            time.sleep(self.window)  # let requests that arrive together share the batch
            with self._cond:
                batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            try:
                self._run(batch)
            except BaseException as exc:  # a failed batch fails its requests, never the thread
                for r in batch:
                    r.out.put(exc)
            finally:
                self.inflight.done(len(batch))

    @torch.no_grad()
    def _run(self, reqs: list[_Request]) -> None:
        e = self.engine
        self.batch_sizes.append(len(reqs))
        B, L = len(reqs), max(len(r.prompt) for r in reqs)
        ids = torch.full((B, L), e.pad_id, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for i, r in enumerate(reqs):  # left padding: every row's next token goes in the same column
            ids[i, L - len(r.prompt):] = torch.tensor(r.prompt)
            mask[i, L - len(r.prompt):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        w = torch.zeros(B, e.neeko.n_blocks)
        for i, r in enumerate(reqs):
            for k, s in zip(r.blocks, r.scales):
                w[i, k] = s
        w = w.to(e.device)
        contrasted_rows = [contrasted_line(r.opts.contrast, r.blocks) for r in reqs]
        contrast = any(contrasted_rows)  # then the base model's logits too, on a cache of its own

        def forward(gate, **step):
            """(cache, logits, final-norm states) at each row's last token."""
            out, h, logits = e.forward(gate, slice(-1, None), attention_mask=mask.to(e.device),
                                       position_ids=pos.to(e.device), use_cache=True, **step)
            return _cache(out), logits[:, 0], h[:, 0].float().cpu().numpy()

        past, logits, hidden = forward(w, input_ids=ids.to(e.device))
        base_past, base_logits, _ = forward(None, input_ids=ids.to(e.device)) if contrast else (None, None, None)
        rows = [dict(gen=[], text=TextStream(r.opts.stop), rng=np.random.default_rng(r.opts.seed), done=False,
                     decoded=0, pending="") for r in reqs]
        step = 0
        while True:
            nxt = []
            for i, (r, row) in enumerate(zip(reqs, rows)):
                if row["done"]:
                    nxt.append(e.pad_id)
                    continue
                if row["pending"]:  # the line's last token is now decoded: its state is the line's
                    self._end(r, row, row["pending"], hidden[i], w[i])
                    nxt.append(e.pad_id)
                    continue
                finish = ""
                try:
                    check_finite(logits[i])
                except NonFiniteLogits as exc:  # a broken block: this row fails, the others go on
                    row["done"] = True
                    r.out.put(exc)
                    nxt.append(e.pad_id)
                    continue
                mine = contrasted(logits[i], base_logits[i], r.opts.contrast) if contrasted_rows[i] else logits[i]
                tok = sample(mine, r.opts, row["rng"])
                if r.closed or r.stop():
                    finish = Finish.CANCELLED
                elif tok in e.eos_ids:
                    finish = Finish.STOP
                else:
                    row["gen"].append(tok)
                    delta = row["text"].update(e.tok.decode(row["gen"], skip_special_tokens=True))
                    if row["text"].stopped:
                        finish = Finish.STOP
                    elif delta:
                        r.out.put(Chunk(delta, completion_tokens=len(row["gen"])))
                    if not finish and (len(row["gen"]) >= r.opts.max_tokens or L + step + 1 >= e.config.n_ctx):
                        finish = Finish.LENGTH
                if finish == Finish.LENGTH and r.learned and L + step + 1 < e.config.n_ctx:
                    row["pending"] = finish  # decode the line's last token first, as llama.cpp does
                elif finish:
                    self._end(r, row, finish, hidden[i], w[i])
                nxt.append(tok)
            if all(row["done"] for row in rows):
                return
            step += 1
            mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long)], 1)
            pos = pos[:, -1:] + 1
            step_ids = torch.tensor(nxt)[:, None].to(e.device)
            past, logits, hidden = forward(w, input_ids=step_ids, **{e.cache_kwarg: past})
            for row in rows:
                if not row["done"]:
                    row["decoded"] = len(row["gen"])
            if contrast:
                base_past, base_logits, _ = forward(None, input_ids=step_ids, **{e.cache_kwarg: base_past})

    def _end(self, r: _Request, row: dict, finish: str, h: np.ndarray, weights: torch.Tensor) -> None:
        """The row's last chunk, with its beat when one was asked and the line ended: from the NPC's learned beats
        on the state of the line's last decoded token where they cover the ask, else the beat question (TorchScorer)."""
        row["done"] = True
        emotion = action = None
        if r.beats is not None and finish in Finish.ENDED:
            if r.learned and row["decoded"]:
                emotion, action = r.beats.head.choose(h, r.beats.ask)
            else:
                scorer = TorchScorer(self.engine, weights)
                try:
                    logits = scorer.extend(r.beats.prompt_for(row["text"].text.strip()))
                    emotion, action = choose(scorer, logits, r.beats)
                except NonFiniteLogits as exc:  # this row's question failed; the batch goes on
                    r.out.put(exc)
                    return
        r.out.put(Chunk(row["text"].rest(), done=True, finish=finish, completion_tokens=len(row["gen"]),
                        prompt_tokens=len(r.prompt), emotion=emotion, action=action))


class TorchScorer:
    """beats.Scorer on the torch model under one row's gate weights. It keeps no cache: each call reads its
    tokens from the start (the continuations in one right-padded batch; a causal model never looks at the padding
    after a row), so a beat question costs a few forwards over the beat prompt."""

    def __init__(self, engine: "TorchEngine", weights: torch.Tensor):
        self.engine, self.weights, self.tokens = engine, weights, []

    def _logits(self, seqs: list[list[int]], start: int) -> np.ndarray:
        """Logits after each position from ``start`` on, (rows, positions, vocab)."""
        e = self.engine
        n = max(len(s) for s in seqs)
        ids = torch.tensor([s + [e.pad_id] * (n - len(s)) for s in seqs], device=e.device)
        return e.forward(self.weights[None].expand(len(seqs), -1), slice(start, None), input_ids=ids)[2]

    def extend(self, tokens: list[int]) -> np.ndarray:
        self.tokens = self.tokens + list(tokens)
        return check_finite(self._logits([self.tokens], len(self.tokens) - 1)[0, 0])

    def continuations(self, logits: np.ndarray, conts: list[list[int]]) -> list[float]:
        held = len(self.tokens)
        branches = [c for c in conts if len(c) > 1]
        rows = iter(self._logits([self.tokens + c[:-1] for c in branches], held) if branches else [])
        return [continuation_logprob(logits, check_finite(next(rows)[:len(c) - 1]) if len(c) > 1 else None, c)
                for c in conts]


def _cache(out):
    return getattr(out, "cache", None) or out.past_key_values


class TorchEngine(Engine):
    name = "torch"
    abilities = Abilities(contrast=True, beats=True)

    def __init__(self, roles_dir: str | Path, base_model: str | None = None, config: EngineConfig | None = None,
                 device: str | None = None, precision: str = "fp32"):
        super().__init__(config)
        ref = resolve_base_model(base_model)
        self.base = base_info(ref)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.tok = load_for_training(ref, precision)
        self.model.to(self.device).eval()
        self.template = ChatTemplate(self.tok.chat_template, self.tok.bos_token or "", self.tok.eos_token or "")
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        eos = {self.tok.eos_token_id, *np.atleast_1d(self.model.config.eos_token_id or []).tolist()}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        self.eos_ids = {int(x) for x in eos | set(np.atleast_1d(gen_eos if gen_eos is not None else []).tolist()) if x is not None}
        # transformers renamed past_key_values to cache; pass whichever this version takes
        params = inspect.signature(self.model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.lock = threading.RLock()
        self.neeko: NeekoLoRA | None = None
        self.batcher = BatchScheduler(self, max_batch=self.config.max_batch, max_queue=self.config.max_queue)
        self._open_roles(roles_dir, TorchBlocks(self))

    def special_texts(self) -> tuple[str, ...]:
        """Every added token, special or not: the tokenizer matches each as a whole in text."""
        return tuple(t for t in self.tok.get_added_vocab() if t.strip())

    def tokens(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if getattr(self.tok, "add_bos_token", False) and self.tok.bos_token_id is not None and not text.startswith(self.template.bos):
            ids = [self.tok.bos_token_id] + ids
        return ids

    @torch.no_grad()
    def forward(self, gate, keep: slice, **inputs):
        """The model under gate weights ``gate`` (None: the base model alone): (its output, the final-norm states
        at the ``keep`` positions, their logits as float32 numpy). The one place that reads logits off the states,
        so a beat's state and its line's logits are the same forward's."""
        with self.lock, self.neeko.gate(gate):
            out = self.model.base_model(**inputs)
            h = out.last_hidden_state[:, keep]
            return out, h, self.model.lm_head(h).float().cpu().numpy()

    def piece_tokens(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _stream(self, adapters, scales, key, prompt, opts, stop, deadline, beats=None, npc=""):
        req = _Request(prompt, [a.handle for a in adapters], list(scales), opts, stop, beats)
        self.batcher.submit(req)

        def chunks():
            while True:
                item = req.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.done:
                    return

        def close(finish, text):
            req.closed = True

        return ReplyStream(chunks(), close)

    def describe(self) -> str:
        return f"{self.name} on {self.device}, batches of up to {self.batcher.max_batch}"

    def busy(self) -> int:
        return self.batcher.inflight.count()

    def _wait_idle(self, timeout: float) -> bool:
        return self.batcher.inflight.wait_idle(timeout)

    def _free(self) -> None:
        self.batcher.close()
