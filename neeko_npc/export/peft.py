"""Write a role as a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors).

vLLM (--enable-lora), LoRAX and transformers+peft load this directly. Tensors stay
in the Hugging Face layout (no RoPE permutation).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..roles.asset import LoraBlock
from ..roles.llama import submodule


def write_peft(lora: LoraBlock, folder: str | Path, base_model_name: str = "") -> Path:
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for (layer, target), A in lora.A.items():
        stem = f"base_model.model.model.layers.{layer}.{submodule(target)}.{target}"
        tensors[f"{stem}.lora_A.weight"] = np.ascontiguousarray(A, dtype=np.float32)
        tensors[f"{stem}.lora_B.weight"] = np.ascontiguousarray(lora.B[(layer, target)], dtype=np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.r, "lora_alpha": lora.alpha,
        "target_modules": list(lora.targets), "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "base_model_name_or_path": base_model_name, "use_rslora": False, "use_dora": False,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder
