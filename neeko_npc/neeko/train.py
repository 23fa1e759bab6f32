"""The training loop shared by pre-finetune (many roles) and expansion (one new role).

Every batch holds one role's examples and runs with that role's one-hot gate,
so only that role's block receives gradient; BlockAdamW then steps only that
block. The batch schedule is fixed by the seed before training starts, which
makes runs repeatable and lets a checkpoint resume at the exact step.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .. import defaults
from .data import IGNORE, Example, collate
from .model import NeekoLoRA
from .optim import BlockAdamW, cosine_lr


@dataclass
class TrainConfig:
    epochs: int = defaults.EPOCHS
    batch_size: int = defaults.BATCH_SIZE
    max_len: int = defaults.MAX_LEN
    lr: float = defaults.LR
    warmup: int = 10
    weight_decay: float = 0.0
    seed: int = defaults.SEED
    checkpoint_every: int = 20


@dataclass
class RoleRecord:
    steps: int = 0
    tokens: int = 0
    final_loss: float = float("nan")
    losses: list = field(default_factory=list)


@dataclass
class TrainResult:
    records: dict[str, RoleRecord]  # role -> its steps, tokens and losses
    steps: int  # all roles together, including any resumed from
    seconds: float  # this run only
    tokens_per_s: float
    resumed_from: int = 0  # the checkpoint's step, 0 when started fresh


def make_schedule(examples: dict[str, list[Example]], roles: list[str], cfg: TrainConfig) -> list[tuple[str, list[int]]]:
    """(role, example indices) per step: each epoch shuffles every role's examples, cuts them
    into batches, and interleaves all batches. Depends only on the data and the seed."""
    rng = random.Random(cfg.seed)
    schedule = []
    for _ in range(cfg.epochs):
        epoch = []
        for rid in roles:
            idx = list(range(len(examples[rid])))
            rng.shuffle(idx)
            epoch += [(rid, idx[i:i + cfg.batch_size]) for i in range(0, len(idx), cfg.batch_size)]
        rng.shuffle(epoch)
        schedule += epoch
    return schedule


def _run_key(neeko: NeekoLoRA, roles: list[str], examples: dict[str, list[Example]], cfg: TrainConfig, extra: str) -> str:
    h = hashlib.sha256(json.dumps([asdict(cfg), roles, neeko.role_ids, neeko.r, neeko.alpha, list(neeko.targets), extra]).encode())
    for rid in roles:
        for e in examples[rid]:
            h.update(bytes(str(e.input_ids), "ascii"))
    return h.hexdigest()


def train_blocks(neeko: NeekoLoRA, examples: dict[str, list[Example]], roles: list[str], cfg: TrainConfig,
                 pad_id: int, checkpoint: Path | None = None, resume: bool = False, run_tag: str = "",
                 progress: bool = True, groups: dict[str, list[str]] | None = None, group_weight: float = 1.0,
                 desc: str = "baking") -> dict:
    """Train the blocks of ``roles`` (all already added to ``neeko``). Returns per-role records and speed.

    ``groups`` maps a role of the schedule to several blocks that train together, all at gate weight
    ``group_weight``: M blocks of rank r trained that way are one ordinary LoRA of rank M*r, scaled
    by group_weight * alpha / r (the evaluation's shared-LoRA baseline)."""
    for rid in roles:
        if not examples.get(rid):
            raise InputError(f"role {rid!r} has no training examples")
    schedule = make_schedule(examples, roles, cfg)
    total = len(schedule)
    opt = BlockAdamW([neeko.modules[k] for k in sorted(neeko.modules)], lr=cfg.lr, weight_decay=cfg.weight_decay)
    records = {rid: RoleRecord() for rid in roles}
    key = _run_key(neeko, roles, examples, cfg, run_tag)
    start = 0
    if checkpoint is not None and resume and checkpoint.is_file():
        ck = torch.load(checkpoint, weights_only=True)
        if ck.get("key") != key:
            raise InputError(f"{checkpoint}: this checkpoint belongs to a different bake (data, roles or settings changed); "
                             "delete it or run without --resume")
        for p, saved in zip(neeko.block_parameters(), ck["params"]):
            p.data.copy_(saved)
        opt.load_state_dict(ck["optim"])
        start = int(ck["step"])
        for rid, rec in ck["records"].items():
            records[rid] = RoleRecord(**rec)
        torch.set_rng_state(ck["rng"])

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True)
    neeko.model.train()
    t0, tokens_seen = time.perf_counter(), 0
    try:
        for step in range(start, total):
            rid, idx = schedule[step]
            batch = collate([examples[rid][i] for i in idx], pad_id)
            ks = [neeko.index(b) for b in (groups or {}).get(rid, [rid])]
            w = torch.zeros(len(idx), neeko.n_blocks)
            w[:, ks] = group_weight if groups and rid in groups else 1.0
            loss = neeko.loss(w, **batch)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {step} (role {rid}); lower --lr")
            opt.zero_grad()
            loss.backward()
            for k in ks:
                opt.step(k, lr=cosine_lr(step, total, cfg.lr, cfg.warmup))
            rec = records[rid]
            rec.steps += 1
            n_tok = int(batch["attention_mask"].sum())
            rec.tokens += n_tok
            tokens_seen += n_tok
            rec.losses.append(round(loss_value, 5))
            rec.final_loss = float(sum(rec.losses[-5:]) / len(rec.losses[-5:]))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(role=rid, loss=f"{loss_value:.3f}")
            done = step + 1
            if checkpoint is not None and (done % cfg.checkpoint_every == 0 or done == total):
                _save_checkpoint(checkpoint, key, done, neeko, opt, records)
    finally:
        if bar is not None:
            bar.close()
        neeko.model.eval()
    elapsed = time.perf_counter() - t0
    return TrainResult(records, total, elapsed, tokens_seen / elapsed if elapsed > 0 else 0.0, start)


def _save_checkpoint(path: Path, key: str, step: int, neeko: NeekoLoRA, opt: BlockAdamW, records: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"key": key, "step": step, "params": [p.detach().clone() for p in neeko.block_parameters()],
                "optim": opt.state_dict(), "rng": torch.get_rng_state(),
                "records": {rid: asdict(r) for rid, r in records.items()}}, tmp)
    tmp.replace(path)


@torch.no_grad()
def heldout_sums(neeko: NeekoLoRA, examples: list[Example], weights: dict[str, float] | str | None, pad_id: int,
                 batch_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Per example: the summed NLL of its target tokens under the given gate (None: base model), and how many
    target tokens it has. Bootstrap intervals resample these; heldout_loss is their ratio."""
    sums, counts = np.zeros(len(examples)), np.zeros(len(examples))
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        batch = collate(chunk, pad_id)
        w = None if weights is None else neeko.weights([weights] * len(chunk))
        per_token = neeko.loss(w, **batch, reduction="none").double().numpy()
        rows = (batch["labels"][:, 1:] != IGNORE).nonzero()[:, 0].numpy()  # the row of each labelled token, in order
        sums[i:i + len(chunk)] = np.bincount(rows, weights=per_token, minlength=len(chunk))
        counts[i:i + len(chunk)] = np.bincount(rows, minlength=len(chunk))
    return sums, counts


def heldout_loss(neeko: NeekoLoRA, examples: list[Example], weights: dict[str, float] | str | None, pad_id: int,
                 batch_size: int = 4) -> float:
    """Mean per-token NLL of the examples' target tokens under the given gate (None: base model)."""
    if not examples:
        return float("nan")
    return mean_loss(heldout_sums(neeko, examples, weights, pad_id, batch_size))


def mean_loss(sums: tuple[np.ndarray, np.ndarray]) -> float:
    """The per-token loss of heldout_sums' (NLL sums, token counts)."""
    total, count = sums[0].sum(), sums[1].sum()
    return float(total / count) if count else math.nan
