"""Block LoRA: one LoRA whose rank is cut into non-overlapping per-role blocks.

For a target linear W0 (out x in), with M roles of rank r each::

    A: (M*r) x in        role k owns rows    [k*r, (k+1)*r)
    B: out x (M*r)       role k owns columns [k*r, (k+1)*r)

    h = W0 x + s * sum_k w_k * B_k A_k x,      s = alpha / r

The gate weights w are per row of the batch and constant over its tokens, so
one batch can mix roles row by row. The forward gathers only the *active*
blocks (those with a non-zero weight in some row) with one index_select: no
Python loop over roles, cost proportional to the blocks in use, and a role's
output does not depend on how many other blocks exist. That last property is
what keeps old roles bit-identical when a block is appended (expansion).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class GateState:
    """The gate weights of the current forward pass, shared by every block-LoRA linear.

    ``set`` is called once per forward with w of shape (batch, M); each linear then
    reads the gathered rank indices and the per-row scale without recomputing them.
    """

    def __init__(self, r: int, alpha: float):
        self.r = r
        self.scale = alpha / r
        self.rank_index: torch.Tensor | None = None  # (n_active * r,)
        self.row_scale: torch.Tensor | None = None  # (batch, 1, n_active * r)

    def set(self, w: torch.Tensor | None) -> None:
        if w is None:
            self.rank_index = self.row_scale = None
            return
        if w.dim() != 2:
            raise ValueError("gate weights must be (batch, n_blocks)")
        active = torch.nonzero(w.ne(0).any(0), as_tuple=False).flatten()
        if active.numel() == 0:
            self.rank_index = self.row_scale = None
            return
        offs = torch.arange(self.r, device=w.device)
        self.rank_index = (active[:, None] * self.r + offs[None, :]).flatten()
        per_rank = w[:, active].repeat_interleave(self.r, dim=1) * self.scale
        self.row_scale = per_rank[:, None, :]


class BlockLoRALinear(nn.Module):
    """A frozen base linear plus M rank-r LoRA blocks selected by a shared GateState."""

    def __init__(self, base: nn.Linear, state: GateState, n_blocks: int = 0):
        super().__init__()
        self.base = base
        self.state = state
        self.r = state.r
        self.in_features = base.in_features
        self.out_features = base.out_features
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.zeros(0, self.in_features))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, 0))
        if n_blocks:
            self.add_blocks(n_blocks)

    @property
    def n_blocks(self) -> int:
        return self.lora_A.shape[0] // self.r

    def add_blocks(self, n: int, generator: torch.Generator | None = None) -> None:
        """Append n blocks: A Kaiming-uniform (as litgpt and peft do), B zero, so a new block starts as a no-op.

        The old blocks' values are copied bit for bit.
        """
        new_A = torch.empty(n * self.r, self.in_features)
        bound = 1.0 / math.sqrt(self.in_features)  # kaiming_uniform_(a=sqrt(5)) on (r, in)
        new_A.uniform_(-bound, bound, generator=generator)
        new_B = torch.zeros(self.out_features, n * self.r)
        with torch.no_grad():
            A = torch.cat([self.lora_A.detach(), new_A.to(self.lora_A.dtype)], 0)
            B = torch.cat([self.lora_B.detach(), new_B.to(self.lora_B.dtype)], 1)
        self.lora_A = nn.Parameter(A)
        self.lora_B = nn.Parameter(B)

    def block(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        sl = slice(k * self.r, (k + 1) * self.r)
        return self.lora_A[sl], self.lora_B[:, sl]

    @torch.no_grad()
    def set_block(self, k: int, A: torch.Tensor, B: torch.Tensor) -> None:
        sl = slice(k * self.r, (k + 1) * self.r)
        self.lora_A[sl] = A.to(self.lora_A.dtype)
        self.lora_B[:, sl] = B.to(self.lora_B.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        idx = self.state.rank_index
        if idx is None:
            return y
        A = self.lora_A.index_select(0, idx)  # (n_active*r, in)
        B = self.lora_B.index_select(1, idx)  # (out, n_active*r)
        shape = x.shape
        x3 = x.reshape(shape[0], -1, shape[-1]).to(A.dtype)  # (batch, tokens, in)
        z = F.linear(x3, A) * self.state.row_scale  # per-row, per-block weight times alpha/r
        delta = F.linear(z, B).reshape(*shape[:-1], self.out_features)
        return y + delta.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, blocks={self.n_blocks}"
