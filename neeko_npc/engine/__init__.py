"""Inference backends behind one facade (facade.Engine). Nothing here imports torch unless the torch engine is asked for.

    facade.py        the facade (Engine): what callers may use, prompt assembly, abilities a backend declares
    limits.py        what a request may hold, and how its text is cleaned
    converse.py      NPC-to-NPC conversations;  memory.py  remembered exchanges
    stream.py        what replies are made of, shared by every backend
    roleset.py       the roles a daemon serves, hot-reloaded, resolved to adapters and scales
    llama_engine.py  the llama.cpp backend: llama_pool.py (adapters, contexts), llama_generate.py (a line's
                     decoding), llamacpp.py (the binding)
    torch_engine.py  the torch backend (GPU, batched decoding; needs the [train] extra)
    openai_engine.py the gateway: generation by an OpenAI-compatible server (vLLM, llama-cpp-python's server)
"""

from __future__ import annotations

from pathlib import Path

from ..defaults import ENGINES
from .facade import Engine, EngineConfig


def open_engine(kind: str, roles_dir: str | Path, base_model: str | None = None, config: EngineConfig | None = None,
                device: str | None = None, upstream=None) -> Engine:
    """Load the base model and the roles folder on the backend ``kind`` (one of ENGINES); ``openai`` needs
    ``upstream`` (an openai_engine.UpstreamConfig)."""
    if kind == "llama.cpp":
        from .llama_engine import LlamaEngine

        return LlamaEngine(roles_dir, base_model, config)
    if kind == "torch":
        from .torch_engine import TorchEngine

        return TorchEngine(roles_dir, base_model, config, device=device)
    if kind == "openai":
        from .openai_engine import OpenAIEngine

        if upstream is None:
            raise ValueError("the openai engine needs an upstream server (--upstream URL)")
        return OpenAIEngine(roles_dir, upstream, base_model, config)
    raise ValueError(f"unknown engine {kind!r}; choose from {', '.join(ENGINES)}")
