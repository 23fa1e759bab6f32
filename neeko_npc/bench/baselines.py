"""The approaches the benchmark compares against, built in the same run on the same base model.

- base model alone: no adapter at all (the upper bound on speed);
- merged single LoRA: one role merged into the weights (export/merge.py); fast, but cannot switch;
- one merged model per NPC: switching NPC means loading another model;
- dense mixture: every block active on every request, as the public Neeko code runs it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..engine.llamacpp import LlamaModel
from ..export.fold import fold
from ..export.merge import merge_into_gguf
from ..roles.gate import gate_weights
from ..roles.asset import RoleAsset
from .stats import summary


def merged_models(assets: list[RoleAsset], base_path: Path, base, workdir: Path) -> dict[str, Path]:
    """role id -> that role merged into the base model (cached in ``workdir`` by content hash)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = {}
    for a in assets:
        path = workdir / f"merged-{a.id}-{a.sha256[:12]}.gguf"
        if not path.is_file():
            merge_into_gguf(base_path, fold(a), base, path)
        out[a.id] = path
    return out


def dense_weights(blocks: list[RoleAsset], role_id: str) -> list[float]:
    """The gate's softmax over every block with nothing cut (no top-k, no minimum weight): the dense
    mixture's weights for a role, in the order of ``blocks``."""
    E = np.stack([a.embedding for a in blocks])
    settings = replace(blocks[0].gate, top_k=len(blocks), min_weight=0.0)
    own = next(a for a in blocks if a.id == role_id)
    return [float(x) for x in gate_weights(E, own.embedding, settings)]


def copies_of_adapters(model: LlamaModel, files: list[Path], n: int) -> list:
    """n adapter handles made by loading the given GGUF LoRA files round-robin (for an M=n mixture)."""
    return [model.load_adapter(files[i % len(files)]) for i in range(n)]


def reload_per_npc(paths: list[Path], prompt: list[int], reps: int, n_ctx: int = 2048) -> dict:
    """Switching NPC when each NPC is its own merged model: free the current model, load the next one,
    make a context and prefill the prompt. Files are read once before timing (warm page cache)."""
    for p in paths:
        p.read_bytes()
    times = []
    model = None
    for i in range(reps):
        path = paths[i % len(paths)]
        t = time.perf_counter()
        if model is not None:
            model.close()
        model = LlamaModel(path)
        ctx = model.new_context(n_ctx)
        ctx.decode(prompt)
        times.append(time.perf_counter() - t)
        ctx.close()
    if model is not None:
        model.close()
    return {"switch_ms": summary(times, 1000), "model_bytes": int(np.median([p.stat().st_size for p in paths]))}
