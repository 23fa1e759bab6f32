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
    distinct: float = defaults.DISTINCT  # weight of the distinct term (distinct_penalty); 0 is off


@dataclass
class RoleRecord:
    steps: int = 0
    tokens: int = 0
    final_loss: float = float("nan")
    losses: list = field(default_factory=list)
    distinct: list = field(default_factory=list)  # the distinct term at each of the role's steps, when on


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


def negative_batch(negatives: dict[str, list[Example]], rid: str, step: int, cfg: TrainConfig) -> tuple[str, list[int]] | None:
    """The other role's examples that step ``step`` (training ``rid``) holds its block away from: one role
    drawn from the others, then a batch of its examples. Depends only on the seed and the step, so a resumed
    bake draws the same. None when no other role has examples."""
    others = sorted(o for o, exs in negatives.items() if o != rid and exs)
    if not others:
        return None
    rng = random.Random(f"{cfg.seed}:{step}")
    o = rng.choice(others)
    return o, rng.sample(range(len(negatives[o])), min(cfg.batch_size, len(negatives[o])))


def distinct_penalty(block_nll: torch.Tensor, base_nll: float) -> torch.Tensor:
    """d = max(0, L_base(x_o) - L_k(x_o)): how far block k lowers the per-token loss of another role's lines
    x_o below what the base model gives them (each under its own role's profile prompt). Added as
    ``distinct * d`` to the step's loss, it lets block k learn what its role shares with the base model and
    with its own lines, but not what it would share with the other roles: their lines under block k stay no
    likelier than under no block. Only block k's gradient changes, so blocks stay isolated."""
    return torch.clamp(base_nll - block_nll, min=0.0)


def _run_key(neeko: NeekoLoRA, roles: list[str], examples: dict[str, list[Example]], cfg: TrainConfig, extra: str,
             negatives: dict[str, list[Example]] | None = None) -> str:
    """What a checkpoint must match to be resumed: the settings, the blocks, the examples and any negatives."""
    h = hashlib.sha256(json.dumps([asdict(cfg), roles, neeko.role_ids, neeko.r, neeko.alpha, list(neeko.targets), extra]).encode())
    for label, sets, ids in (("", examples, roles), ("negatives", negatives or {}, sorted(negatives or {}))):
        for rid in ids:
            if label:
                h.update(f":{label}:{rid}".encode())
            for e in sets[rid]:
                h.update(bytes(str(e.input_ids), "ascii"))
    return h.hexdigest()


def train_blocks(neeko: NeekoLoRA, examples: dict[str, list[Example]], roles: list[str], cfg: TrainConfig,
                 pad_id: int, checkpoint: Path | None = None, resume: bool = False, run_tag: str = "",
                 progress: bool = True, groups: dict[str, list[str]] | None = None, group_weight: float = 1.0,
                 desc: str = "baking", negatives: dict[str, list[Example]] | None = None) -> dict:
    """Train the blocks of ``roles`` (all already added to ``neeko``). Returns per-role records and speed.

    ``groups`` maps a role of the schedule to several blocks that train together, all at gate weight
    ``group_weight``: M blocks of rank r trained that way are one ordinary LoRA of rank M*r, scaled
    by group_weight * alpha / r (the evaluation's shared-LoRA baseline).

    With ``cfg.distinct`` above 0 and ``negatives`` (each role's own lines), each step also adds
    ``cfg.distinct * distinct_penalty`` on a batch of another role's lines (negative_batch)."""
    for rid in roles:
        if not examples.get(rid):
            raise InputError(f"role {rid!r} has no training examples")
    schedule = make_schedule(examples, roles, cfg)
    total = len(schedule)
    opt = BlockAdamW([neeko.modules[k] for k in sorted(neeko.modules)], lr=cfg.lr, weight_decay=cfg.weight_decay)
    records = {rid: RoleRecord() for rid in roles}
    use_negatives = cfg.distinct > 0 and bool(negatives)
    key = _run_key(neeko, roles, examples, cfg, run_tag, negatives if use_negatives else None)
    base_cache: dict[tuple[str, int], tuple[float, int]] = {}  # (role, example) -> its NLL sum and tokens, base model
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
            neg = negative_batch(negatives, rid, step, cfg) if use_negatives else None
            if neg is not None:
                d = _distinct_term(neeko, negatives, neg, w[:1], pad_id, base_cache)
                loss = loss + cfg.distinct * d
                records[rid].distinct.append(round(float(d.detach()), 5))
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
                bar.set_postfix(role=rid, loss=f"{loss_value:.3f}",
                                **({"distinct": f"{rec.distinct[-1]:.3f}"} if neg is not None else {}))
            done = step + 1
            if checkpoint is not None and (done % cfg.checkpoint_every == 0 or done == total):
                _save_checkpoint(checkpoint, key, done, neeko, opt, records)
    finally:
        if bar is not None:
            bar.close()
        neeko.model.eval()
    elapsed = time.perf_counter() - t0
    return TrainResult(records, total, elapsed, tokens_seen / elapsed if elapsed > 0 else 0.0, start)


def _distinct_term(neeko: NeekoLoRA, negatives: dict[str, list[Example]], neg: tuple[str, list[int]], w_row: torch.Tensor,
                   pad_id: int, base_cache: dict) -> torch.Tensor:
    """distinct_penalty on the batch ``neg``: the base model's loss of each example is computed once and kept."""
    o, idx = neg
    todo = [i for i in idx if (o, i) not in base_cache]
    if todo:
        sums, counts = heldout_sums(neeko, [negatives[o][i] for i in todo], None, pad_id, batch_size=len(todo))
        for i, s_, c in zip(todo, sums, counts):
            base_cache[(o, i)] = (float(s_), int(c))
    base_nll = sum(base_cache[(o, i)][0] for i in idx) / max(1, sum(base_cache[(o, i)][1] for i in idx))
    batch = collate([negatives[o][i] for i in idx], pad_id)
    return distinct_penalty(neeko.loss(w_row.expand(len(idx), -1), **batch), base_nll)


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
