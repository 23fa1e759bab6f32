"""An unquantized (f32) copy of a GGUF model: same metadata and tokenizer, every tensor dequantized.

Both llama.cpp and transformers then compute on the very same float weights, so their greedy replies
can be compared token for token.
"""

from pathlib import Path


def write_f32_copy(src: Path, dst: Path) -> Path:
    import gguf
    import numpy as np

    from neeko_npc.export.merge import rewrite_gguf

    return rewrite_gguf(src, dst, lambda name, weight: weight(), dtype=np.float32, file_type=gguf.LlamaFileType.ALL_F32)
