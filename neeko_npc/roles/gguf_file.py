"""A GGUF file's header in one pass: its metadata and its tensor index, the tensors' bytes left on disk.

gguf-py's GGUFReader builds a numpy view for every element of every metadata array; SmolLM2-135M carries its
vocabulary and its merges as two arrays of about 49,000 strings each, and reading its header that way took 3.0 s
on a 2-core machine, every time a base was fingerprinted or a model rewritten. This reads the same header with
``struct`` from a memory map in well under a second. A tensor's bytes are a read-only view of the map, read only
when used. Little-endian GGUF, versions 2 and 3 (what llama.cpp and gguf-py write).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..errors import GGUFFormatError

DEFAULT_ALIGNMENT = 32  # general.alignment, when the file does not say
_SCALARS = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
            GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
            GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d"}
# element types whose bytes are plain numpy numbers; every other tensor type is blocks of quantized values
_PLAIN = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16, GGMLQuantizationType.F64: np.float64,
          GGMLQuantizationType.I8: np.int8, GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
          GGMLQuantizationType.I64: np.int64}


@dataclass(frozen=True)
class Field:
    name: str
    type: GGUFValueType
    value: object  # str, int, float, bool, or for an ARRAY a list of them
    item_type: GGUFValueType | None = None  # an ARRAY's element type


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple[int, ...]  # GGUF order: dims[0] moves fastest (numpy's shape is this reversed)
    type: GGMLQuantizationType
    start: int  # byte offset of the tensor's data in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order (rows, columns) of the elements."""
        return tuple(reversed(self.dims))


class GGUFFile:
    """``fields`` (name -> Field, in file order) and ``tensors`` (in file order) of one GGUF file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with self.path.open("rb") as f:
            try:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # an empty file
                raise GGUFFormatError(f"{self.path}: empty file, not a GGUF model") from None
        self._pos = 0
        try:
            self._read_header()
        except (struct.error, UnicodeDecodeError, ValueError) as exc:
            if isinstance(exc, GGUFFormatError):
                raise
            raise GGUFFormatError(f"{self.path}: damaged GGUF header ({exc})") from None

    # -- header ------------------------------------------------------------------------------------------------

    def _take(self, fmt: str):
        (v,) = struct.unpack_from("<" + fmt, self._map, self._pos)
        self._pos += struct.calcsize("<" + fmt)
        return v

    def _string(self) -> str:
        n = self._take("Q")
        if self._pos + n > len(self._map):
            raise GGUFFormatError(f"{self.path}: truncated GGUF header (a string runs past the end)")
        s = self._map[self._pos:self._pos + n].decode("utf-8")
        self._pos += n
        return s

    def _value(self, vtype: GGUFValueType):
        if vtype == GGUFValueType.STRING:
            return self._string()
        if vtype == GGUFValueType.ARRAY:
            raise GGUFFormatError(f"{self.path}: nested GGUF arrays are not supported")
        return self._take(_SCALARS[vtype])

    def _array(self, item: GGUFValueType, n: int) -> list:
        if item in _SCALARS and item != GGUFValueType.BOOL:  # numbers: one numpy read for the whole array
            fmt = "<" + _SCALARS[item]
            size = struct.calcsize(fmt)
            if self._pos + n * size > len(self._map):
                raise GGUFFormatError(f"{self.path}: truncated GGUF header (an array runs past the end)")
            out = np.frombuffer(self._map, dtype=np.dtype(fmt), count=n, offset=self._pos).tolist()
            self._pos += n * size
            return out
        return [self._value(item) for _ in range(n)]

    def _read_header(self) -> None:
        if self._map[:4] != b"GGUF":
            raise GGUFFormatError(f"{self.path}: not a GGUF file")
        self._pos = 4
        version = self._take("I")
        if version not in (2, 3):
            hint = " (a big-endian file?)" if version > 0xFFFF else ""
            raise GGUFFormatError(f"{self.path}: GGUF version {version}{hint}; neeko-npc reads versions 2 and 3")
        n_tensors, n_kv = self._take("Q"), self._take("Q")
        self.fields: dict[str, Field] = {}
        for _ in range(n_kv):
            name = self._string()
            vtype = GGUFValueType(self._take("I"))
            if vtype == GGUFValueType.ARRAY:
                item = GGUFValueType(self._take("I"))
                self.fields[name] = Field(name, vtype, self._array(item, self._take("Q")), item)
            else:
                self.fields[name] = Field(name, vtype, self._value(vtype))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            dims = tuple(self._take("Q") for _ in range(self._take("I")))
            infos.append((name, dims, GGMLQuantizationType(self._take("I")), self._take("Q")))
        align = int(self.value("general.alignment", DEFAULT_ALIGNMENT))
        data = -(-self._pos // align) * align
        self.tensors: list[Tensor] = []
        for name, dims, qtype, offset in infos:
            block, size = GGML_QUANT_SIZES[qtype]
            n = int(np.prod(dims, dtype=np.int64)) if dims else 1
            t = Tensor(name, dims, qtype, data + offset, n // block * size)
            if t.start + t.nbytes > len(self._map):
                raise GGUFFormatError(f"{self.path}: truncated (tensor {name} runs past the end of the file)")
            self.tensors.append(t)

    # -- values --------------------------------------------------------------------------------------------------

    def value(self, name: str, default=None):
        f = self.fields.get(name)
        return default if f is None else f.value

    def raw(self, t: Tensor) -> np.ndarray:
        """The tensor's bytes, as gguf-py's reader shapes them: plain types as numbers in numpy order, quantized
        types as uint8 rows of blocks (rows, bytes a row)."""
        plain = _PLAIN.get(t.type)
        if plain is not None:
            return np.frombuffer(self._map, dtype=plain, count=t.nbytes // np.dtype(plain).itemsize,
                                 offset=t.start).reshape(t.shape)
        block, size = GGML_QUANT_SIZES[t.type]
        return np.frombuffer(self._map, dtype=np.uint8, count=t.nbytes, offset=t.start).reshape(
            *t.shape[:-1], t.shape[-1] // block * size)

    def as_float(self, t: Tensor) -> np.ndarray:
        """The tensor's values as float32, numpy order (quantized types dequantized)."""
        from gguf.quants import dequantize

        if t.type in _PLAIN:
            return self.raw(t).astype(np.float32)
        return dequantize(self.raw(t), t.type).astype(np.float32).reshape(t.shape)
