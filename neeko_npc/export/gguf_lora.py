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
from ..roles.llama import gguf_name, gguf_rows


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
        A = lora.A[(layer, target)]
        B = gguf_rows(lora.B[(layer, target)], target, base.n_heads, base.n_kv_heads)
        stem = gguf_name(layer, target)
        w.add_tensor(f"{stem}.lora_a", np.ascontiguousarray(A, dtype=dtype))
        w.add_tensor(f"{stem}.lora_b", np.ascontiguousarray(B, dtype=dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)
    return path
