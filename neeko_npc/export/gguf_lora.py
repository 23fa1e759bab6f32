"""Write a role as a llama.cpp GGUF LoRA adapter (loadable by llama_adapter_lora_init and llama-server --lora).

Tensor names follow llama.cpp: ``blk.N.attn_q.weight.lora_a`` (r x in) and ``.lora_b``
(out x r). llama.cpp stores Q and K rows permuted for its RoPE layout (what
convert_hf_to_gguf does to the base weights), so B's rows for q/k are permuted
the same way here; A (the input side) is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..roles.asset import BaseInfo, LoraBlock

GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The row permutation llama.cpp's converter applies to llama q/k weights (HF -> GGUF layout)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf_lora(lora: LoraBlock, base: BaseInfo, path: str | Path, name: str = "neeko-role", dtype=np.float32) -> Path:
    import gguf

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    w = gguf.GGUFWriter(str(tmp), base.arch)
    w.add_string("general.type", "adapter")
    w.add_string("general.name", name)
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(lora.alpha))
    for (layer, target) in sorted(lora.A):
        A, B = lora.A[(layer, target)], lora.B[(layer, target)]
        if target == "q_proj":
            B = rope_permute(B, base.n_heads)
        elif target == "k_proj":
            B = rope_permute(B, base.n_kv_heads)
        stem = f"blk.{layer}.{GGUF_NAMES[target]}.weight"
        w.add_tensor(f"{stem}.lora_a", np.ascontiguousarray(A, dtype=dtype))
        w.add_tensor(f"{stem}.lora_b", np.ascontiguousarray(B, dtype=dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)
    return path
