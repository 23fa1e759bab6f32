"""Rewrite a GGUF model tensor by tensor; merge a role into the base weights.

A merged model is the "one fine-tuned model per character" approach: the role's
LoRA is added into W0 (W = W0 + s B A); it cannot switch role. The changed
tensors are stored as f16, not re-quantized: re-quantizing to Q4_1 rounds most
of a role's small update away (on SmolLM2 the merged model's logits then moved
0.22 from the base on average, against 1.26 with the adapter). The benchmark
uses it as a baseline; ``export --format merged-gguf`` gives it to users who
want a single-character model for another runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from ..roles.asset import BaseInfo, LoraBlock
from ..roles.llama import gguf_name, gguf_rows

# A transform gets (tensor name, float32 array in numpy order (out x in)) and returns the new array,
# or None to keep the tensor's bytes as they are.
Transform = Callable[[str, Callable[[], np.ndarray]], "np.ndarray | None"]


def rewrite_gguf(src: str | Path, dst: str | Path, transform: Transform, dtype=np.float16,
                 file_type: int | None = None) -> Path:
    """Copy a GGUF file, replacing the tensors ``transform`` returns; they are written as ``dtype``.

    The metadata and tokenizer are copied unchanged (``file_type`` overrides general.file_type); the
    file is written next to ``dst`` and renamed."""
    import gguf

    from ..roles.gguf_file import GGUFFile

    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    src_file = GGUFFile(src)
    writer = gguf.GGUFWriter(str(tmp), src_file.value("general.architecture"))
    for name, field in src_file.fields.items():
        if name == "general.architecture" or (file_type is not None and name == "general.file_type"):
            continue
        writer.add_key_value(name, field.value, field.type, sub_type=field.item_type)
    if file_type is not None:
        writer.add_file_type(file_type)
    for t in src_file.tensors:
        new = transform(t.name, lambda t=t: src_file.as_float(t))
        if new is None:
            raw = src_file.raw(t)
            writer.add_tensor(t.name, raw, raw_shape=raw.shape, raw_dtype=t.type)
        else:
            writer.add_tensor(t.name, np.ascontiguousarray(new, dtype=dtype if new.ndim > 1 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(dst)
    return dst


def lora_deltas(lora: LoraBlock, base: BaseInfo) -> dict[str, np.ndarray]:
    """GGUF tensor name -> the dense update s * B @ A in llama.cpp's layout (q/k rows RoPE-permuted)."""
    out = {}
    for (layer, target), A in lora.A.items():
        B = gguf_rows(lora.B[(layer, target)].astype(np.float32), target, base.n_heads, base.n_kv_heads)
        out[gguf_name(layer, target)] = np.float32(lora.scale) * (B @ A.astype(np.float32))
    return out


def merge_into_gguf(base_path: str | Path, lora: LoraBlock, base: BaseInfo, dst: str | Path) -> Path:
    """The base model with one role's LoRA merged into its weights (changed tensors in f16)."""
    deltas = lora_deltas(lora, base)
    applied = set()

    def add(name: str, weight: Callable[[], np.ndarray]):
        d = deltas.get(name)
        if d is None:
            return None
        applied.add(name)
        return weight() + d

    out = rewrite_gguf(base_path, dst, add)
    missing = set(deltas) - applied
    if missing:
        out.unlink()
        raise InputError(f"{base_path}: the base has no tensors {sorted(missing)[:3]}; is this the role's base model?")
    return out
