"""Exporting roles as standard LoRA adapters (GGUF for llama.cpp, PEFT for vLLM/LoRAX) or a merged model. numpy only."""

from __future__ import annotations

from pathlib import Path

from ..defaults import EXPORT_FORMATS as FORMATS
from ..errors import InputError
from ..roles.asset import LoraBlock, RoleAsset


def export_role(asset: RoleAsset, known: dict[str, RoleAsset], fmt: str, out: Path | None = None,
                base_model: str | None = None) -> tuple[LoraBlock, Path]:
    """Write ``asset`` (fused roles folded over ``known``) as ``fmt``; returns the folded LoRA and where it went.

    merged-gguf needs the GGUF base model the role was baked on (``base_model``, default: the shipped one)."""
    from .fold import fold

    lora = fold(asset, known)
    if fmt == "peft":
        from .peft import write_peft

        return lora, write_peft(lora, out or Path(f"{asset.id}-peft"), base_model_name=asset.base.name)
    if fmt == "gguf-lora":
        from .gguf_lora import write_gguf_lora

        return lora, write_gguf_lora(lora, asset.base, out or Path(f"{asset.id}.lora.gguf"), name=asset.id)
    if fmt == "merged-gguf":
        from ..roles.asset import check_base
        from ..roles.base_model import base_info, resolve_base_model
        from .merge import merge_into_gguf

        ref = resolve_base_model(base_model)
        if ref.kind != "gguf":
            raise InputError(f"{ref.path}: merged-gguf needs a .gguf base model")
        base = base_info(ref)
        check_base(asset, base)
        return lora, merge_into_gguf(ref.path, lora, base, out or Path(f"{asset.id}.merged.gguf"))
    raise InputError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
