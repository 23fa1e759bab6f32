"""Role fidelity: does each role's block fit its own held-out lines best?

The confusion matrix holds the held-out loss of role j's lines (under role j's
own profile prompt) with role i's block active. The diagonal should win in
every row. The in-context baseline (the base model with the profile in the
prompt, no block) sits beside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..roles.base_model import BaseModelRef
from ..roles.folder import load_role_assets
from .bake import RoleSource
from .data import encode_scene
from .model import NeekoLoRA
from .train import heldout_loss


@dataclass
class EvalReport:
    roles: list[str]  # roles with held-out lines (matrix rows)
    blocks: list[str]  # trained blocks (matrix columns)
    confusion: list[list[float]]  # [row: lines of role j][column: block i]
    in_context: dict[str, float]  # base model + profile, no block
    diagonal_wins: float  # share of rows whose own block has the lowest loss
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def confusion_matrix(base_ref: BaseModelRef, roles_dir: Path, src_dir: Path, holdout: float = 0.2, max_len: int = 320,
                     precision: str = "fp32", max_scenes: int | None = None, progress: bool = True) -> EvalReport:
    from .base import load_for_training

    assets, errors = load_role_assets(roles_dir)
    blocks = [a for a in assets if a.block is not None]
    if not blocks:
        raise ValueError(f"{roles_dir} has no trained roles" + (f" ({errors[0]})" if errors else ""))
    sources = {}
    for a in blocks:
        folder = src_dir / a.id
        if (folder / "lines.jsonl").is_file():
            sources[a.id] = RoleSource.from_dir(folder, holdout)
    if not sources:
        raise ValueError(f"no role in {roles_dir} has lines in {src_dir}/<id>/lines.jsonl to hold out")
    model, tok = load_for_training(base_ref, precision)
    first = blocks[0].block
    neeko = NeekoLoRA(model, first.r, first.alpha, tuple(first.targets))
    for a in blocks:
        neeko.load_block(a.id, a.block)
    rows = sorted(sources)
    cols = [a.id for a in blocks]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows) * (len(cols) + 1), desc="evaluating", unit="pass")
    matrix, in_context = [], {}
    for rid in rows:
        src = sources[rid]
        held = src.held[:max_scenes] if max_scenes else src.held
        examples = [ex for s in held for ex in encode_scene(tok, src.profile, s, max_len)]
        in_context[rid] = heldout_loss(neeko, examples, None, tok.pad_token_id)
        row = []
        for cid in cols:
            row.append(heldout_loss(neeko, examples, cid, tok.pad_token_id))
            if bar:
                bar.update(1)
        matrix.append(row)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    wins = sum(1 for rid, row in zip(rows, matrix) if min(range(len(cols)), key=lambda i: row[i]) == cols.index(rid))
    return EvalReport(rows, cols, matrix, in_context, wins / len(rows) if rows else math.nan,
                      settings={"holdout": holdout, "max_len": max_len, "precision": precision, "max_scenes": max_scenes})
