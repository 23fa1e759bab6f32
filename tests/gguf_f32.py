"""An unquantized (f32) copy of a GGUF model: same metadata and tokenizer, every tensor dequantized.

Both llama.cpp and transformers then compute on the very same float weights, so their greedy replies
can be compared token for token.
"""

from pathlib import Path

import numpy as np


def write_f32_copy(src: Path, dst: Path) -> Path:
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name == "general.file_type":
            continue
        vtype = field.types[0]
        if vtype == GGUFValueType.ARRAY:
            writer.add_key_value(name, field.contents(), vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, field.contents(), vtype)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape))  # numpy order
        if t.tensor_type in (Q.F32, Q.F16):
            data = np.asarray(t.data, dtype=np.float32).reshape(shape)
        else:
            data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        writer.add_tensor(t.name, np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
