"""Fold one role into a plain LoRA: (rank, alpha, A and B per layer and target).

A trained role is its own block. A fused role, sum_k w_k s_k B_k A_k, becomes one
adapter of rank sum_k r_k: A stacks the A_k, B stacks the w_k s_k B_k, and the
exported alpha equals that rank so the adapter's own scale alpha/r is 1.
"""

from __future__ import annotations

import numpy as np

from ..roles.asset import LoraBlock, RoleAsset
from ..errors import AssetError
from ..roles.folder import resolve_fusion


def fold(asset: RoleAsset, known: dict[str, RoleAsset] | None = None) -> LoraBlock:
    """A float32 LoraBlock equal to the role: its own block, or its fusion folded into one."""
    if asset.block is not None:
        b = asset.block
        return LoraBlock(b.r, b.alpha, tuple(b.targets), {k: v.astype(np.float32) for k, v in b.A.items()},
                         {k: v.astype(np.float32) for k, v in b.B.items()})
    parts = resolve_fusion(asset, known or {})
    targets = tuple(parts[0][0].block.targets)
    if any(tuple(src.block.targets) != targets for src, _ in parts):
        raise AssetError(asset.path or asset.id, "the fused roles target different modules", "re-bake them as one set")
    rank = sum(src.block.r for src, _ in parts)
    A, B = {}, {}
    for key in parts[0][0].block.A:
        A[key] = np.concatenate([src.block.A[key].astype(np.float32) for src, _ in parts], 0)
        B[key] = np.concatenate([src.block.B[key].astype(np.float32) * np.float32(w * src.block.scale) for src, w in parts], 1)
    return LoraBlock(rank, float(rank), targets, A, B)
