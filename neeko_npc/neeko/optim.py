"""AdamW that steps one role's block at a time.

torch's AdamW over the whole A/B tensors would move every block on every step:
its momentum keeps pushing blocks whose gradient is now zero, and weight decay
shrinks them. Here each block has its own moments and step count, and
``step(k)`` touches only the rows/columns that block k owns, so training role
k's lines changes block k and nothing else, bit for bit.
"""

from __future__ import annotations

import math

import torch

from .blocks import BlockLoRALinear


class BlockAdamW:
    def __init__(self, modules: list[BlockLoRALinear], lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.modules = modules
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.state: dict[str, torch.Tensor | int] = {}

    def _slices(self, mod: BlockLoRALinear, k: int):
        r = mod.r
        return ((mod.lora_A, mod.lora_A.data[k * r:(k + 1) * r], 0), (mod.lora_B, mod.lora_B.data[:, k * r:(k + 1) * r], 1))

    @torch.no_grad()
    def step(self, k: int, lr: float | None = None) -> None:
        lr = self.lr if lr is None else lr
        b1, b2 = self.betas
        t = int(self.state.get(f"step.{k}", 0)) + 1
        self.state[f"step.{k}"] = t
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        for mi, mod in enumerate(self.modules):
            r = mod.r
            for pi, (param, p, dim) in enumerate(self._slices(mod, k)):
                if param.grad is None:
                    continue
                g = param.grad.narrow(dim, k * r, r)
                key = f"{mi}.{pi}.{k}"
                m = self.state.get(f"m.{key}")
                if m is None:
                    m = self.state[f"m.{key}"] = torch.zeros_like(p)
                    self.state[f"v.{key}"] = torch.zeros_like(p)
                v = self.state[f"v.{key}"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                if self.weight_decay:
                    p.mul_(1 - lr * self.weight_decay)
                denom = (v / c2).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-lr / c1)

    def zero_grad(self) -> None:
        for mod in self.modules:
            mod.lora_A.grad = None
            mod.lora_B.grad = None

    def state_dict(self) -> dict:
        return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in self.state.items()}

    def load_state_dict(self, sd: dict) -> None:
        self.state = dict(sd)


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
