"""Loading the base model for training: a llama-family GGUF or a Hugging Face folder, offline.

transformers turns a GGUF into float weights and a fast tokenizer, slowly: it parses the file three times (once
now: ``_gguf_parsed_once``). The first load keeps the result
as a Hugging Face folder in the cache (``defaults.cache_root()/hf/<fingerprint>``: float32 safetensors, 540 MB for
SmolLM2-135M), written once and atomically; every later bake, bake-role and eval loads that in under a second.
The weights and the tokenizer are the very same: a test compares them with the conversion. bf16 is a cast of the
same float32 weights at load time, as transformers does when it converts the GGUF itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .. import defaults
from ..errors import InputError
from ..roles.base_model import BaseModelRef, base_info

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRECISIONS = defaults.PRECISIONS


def resolve_precision(precision: str) -> str:
    """"auto" is bf16 where the hardware computes in it (a CUDA GPU, or a CPU with AVX512-BF16 or AMX), else fp32.
    Without those instructions torch emulates bf16, about ten times slower than fp32 (docs/making-roles.md)."""
    if precision != "auto":
        if precision not in DTYPES:
            raise InputError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
        return precision
    if torch.cuda.is_available():
        return "bf16"
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return "bf16" if {"avx512_bf16", "amx_bf16"} & set(flags.split()) else "fp32"


COMPLETE = "neeko-complete"  # written last: a folder without it is a write that did not finish

log = logging.getLogger("neeko_npc.neeko")


def float_cache_dir(ref: BaseModelRef) -> Path:
    """Where the float copy of a GGUF base lives, named by the GGUF's weights' fingerprint."""
    return defaults.cache_root() / "hf" / base_info(ref).fingerprint[:32]


def load_for_training(ref: BaseModelRef, precision: str = "fp32", cache: bool = True):
    """Return (model, tokenizer). GGUF weights are dequantized to float by transformers, once (see above)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    dtype = DTYPES[resolve_precision(precision)]
    if ref.kind == "gguf":
        model, tok = _load_gguf(ref, dtype, cache)
    else:
        model, tok = _load_folder(Path(ref.path), dtype)
    if model.config.model_type not in ("llama", "mistral"):
        raise InputError(f"{ref.path}: model_type {model.config.model_type!r} is not a llama-family model")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise InputError(f"{ref.path}: the tokenizer has no chat template; neeko-npc needs an instruct/chat model")
    model.eval()
    return model, tok


def _load_folder(folder: Path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype), AutoTokenizer.from_pretrained(str(folder))


def _load_gguf(ref: BaseModelRef, dtype, cache: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = float_cache_dir(ref) if cache else None
    if folder is not None and (folder / COMPLETE).is_file():
        try:
            return _load_folder(folder, dtype)
        except Exception as exc:  # a damaged cache is rebuilt, never fatal
            log.warning("%s: unreadable float copy of the base (%s); converting the GGUF again", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
    gguf_folder, name = str(ref.path.parent), ref.path.name
    with _gguf_parsed_once():
        tok = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=name, dtype=torch.float32)
    # The GGUF quantizer marker blocks training and saving; the weights are plain floats now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if folder is not None:
        _keep(model, tok, folder)
    return model.to(dtype), tok


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers parses the GGUF three times (tokenizer, config, weights; mostly its vocabulary strings) and
    rebuilds gguf-py's tensor-name map once per module. Within one conversion both are pure functions of their
    arguments, so each is computed once, with every tensor equal to transformers' own three-parse conversion and
    the same vocabulary, chat template and token ids (the tests check the result against llama.cpp: the
    trainer's tokens against the daemon's, the torch engine's greedy reply against llama.cpp's). gguf-py's
    functions are looked up at call time by transformers, so wrapping the module attributes is enough; the
    originals are put back."""
    import functools

    import gguf

    saved = {name: getattr(gguf, name, None) for name in ("GGUFReader", "get_tensor_name_map")}
    if None in saved.values():  # another gguf-py: convert the slow way
        yield
        return
    readers = {}

    def reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = saved["GGUFReader"](path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(saved["get_tensor_name_map"])
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(gguf, name, value)


def _keep(model, tok, folder: Path) -> None:
    """Write the float copy beside its final place, then move it there in one step."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / COMPLETE).write_text("1\n")
        try:
            tmp.rename(folder)
        except OSError:  # another process got there first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:  # a full or read-only disk costs speed, not the bake
        log.warning("could not keep a float copy of the base in %s (%s); the next load converts the GGUF again", folder, exc)
