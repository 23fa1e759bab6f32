"""The llama layout, once: which linears a block may target, where they sit, their shapes, their names in a
GGUF file, and the row order llama.cpp stores q and k in. numpy only.

Used by the role file (shapes), the tuner (where each linear sits in a transformers llama), and the exports
(PEFT keeps the Hugging Face layout; GGUF LoRA and merged GGUF need llama.cpp's names and q/k row order).
"""

from __future__ import annotations

import numpy as np

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")  # in ``self_attn``; the others are in ``mlp``
GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def submodule(target: str) -> str:
    """The transformers llama submodule that holds ``target``: ``self_attn`` or ``mlp``."""
    return "self_attn" if target in ATTN else "mlp"


def linear_shape(target: str, hidden: int, n_heads: int, n_kv_heads: int, intermediate: int) -> tuple[int, int]:
    """(out_features, in_features) of a llama linear."""
    kv = n_kv_heads * (hidden // n_heads)
    return {
        "q_proj": (hidden, hidden),
        "k_proj": (kv, hidden),
        "v_proj": (kv, hidden),
        "o_proj": (hidden, hidden),
        "gate_proj": (intermediate, hidden),
        "up_proj": (intermediate, hidden),
        "down_proj": (hidden, intermediate),
    }[target]


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The row permutation llama.cpp's converter applies to llama q/k weights (HF -> GGUF layout)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_rows(w: np.ndarray, target: str, n_heads: int, n_kv_heads: int) -> np.ndarray:
    """A matrix whose rows are ``target``'s outputs (a LoRA B, or a dense update), in llama.cpp's row order."""
    if target == "q_proj":
        return rope_permute(w, n_heads)
    if target == "k_proj":
        return rope_permute(w, n_kv_heads)
    return w


def gguf_name(layer: int, target: str) -> str:
    """The GGUF name of a llama linear's weight, e.g. ``blk.3.attn_q.weight``."""
    return f"blk.{layer}.{GGUF_NAMES[target]}.weight"
