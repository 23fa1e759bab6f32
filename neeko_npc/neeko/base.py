"""Loading the base model for training: a llama-family GGUF or a Hugging Face folder, offline."""

from __future__ import annotations

import os

import torch

from ..errors import InputError
from ..roles.base_model import BaseModelRef

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load_for_training(ref: BaseModelRef, precision: str = "fp32"):
    """Return (model, tokenizer). GGUF weights are dequantized to float by transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    dtype = DTYPES[precision]
    if ref.kind == "gguf":
        folder, name = str(ref.path.parent), ref.path.name
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
        # The GGUF quantizer marker blocks training and saving; the weights are plain floats now.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    else:
        tok = AutoTokenizer.from_pretrained(str(ref.path))
        model = AutoModelForCausalLM.from_pretrained(str(ref.path), dtype=dtype)
    if model.config.model_type not in ("llama", "mistral"):
        raise InputError(f"{ref.path}: model_type {model.config.model_type!r} is not a llama-family model")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise InputError(f"{ref.path}: the tokenizer has no chat template; neeko-npc needs an instruct/chat model")
    model.eval()
    return model, tok
