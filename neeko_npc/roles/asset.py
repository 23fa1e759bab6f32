"""The ``.nrole`` role asset: one character, one file, safe to drop into a running daemon.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"NEEKOROL"
    8       4     format version (uint32)
    12      8     payload length in bytes (uint64)
    20      32    sha256 of the payload (the role's content hash)
    52      n     payload: one msgpack map (never pickle)

The payload map::

    kind        "block" (a trained LoRA block) or "fusion" (weights over other roles)
    profile     the RoleProfile fields
    embedding   {"model", "dim", "data": float32 bytes}: the role's gate row
    gate        {"tau", "top_k", "min_weight"}
    base        {"fingerprint", "name", "arch", "n_layers", "hidden", "n_heads", "n_kv_heads", "intermediate"}
    lora        (block) {"r", "alpha", "dtype", "targets": [...],
                         "tensors": [[layer, target, "A"|"B", [rows, cols], bytes], ...]}
    fusion      (fusion) {"weights": [{"role", "sha256", "weight"}, ...]}
    training    {"mode", "seed", "steps", "final_loss", "data_sha256", "lines", "tokens", ...}
    beats       (optional, a block) {"dim", "emotion"?, "action"?}, each {"classes": [id, ...],
                "W": float32 bytes (classes x dim), "b": float32 bytes (classes)}: roles/beats.py BeatHead
    voice       (optional, a block) {"contrast"}: the contrast its lines are decoded at when neither the request
                nor serve --contrast sets one, chosen by the bake's voice check (neeko/voice_check.py)
    created, tool

Reading and validating a file is asset_read.py's (``read_asset``).
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from .. import defaults
from . import llama
from .beats import BeatHead
from .profile import RoleProfile

MAGIC = b"NEEKOROL"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIQ32s")
SUFFIX = ".nrole"

# Bounds on what a role file may declare. A role block for a 135M model is ~2 MB;
# these caps allow 8B-class bases while rejecting absurd files before reading them.
MAX_FILE_BYTES = 1 << 30
MAX_RANK = 256
MAX_DIM = 65536
MAX_LAYERS = 512
MAX_EMBED_DIM = 8192
MAX_FUSION_REFS = 64
MAX_STR_BYTES = 1 << 16  # any one string in the payload (a profile field is at most 4000 characters)
MAX_SHORT_CHARS = 256  # names, hashes, dates, tool versions
MAX_RECORD_DEPTH = 4  # the training record: nested maps and lists
MAX_RECORD_ITEMS = 4096
MAX_RECORD_STR = 4096

# The largest magnitude a block's A or B may hold, and the largest alpha / r. Training cannot come near
# either: A starts Kaiming-uniform (|A| <= 1/sqrt(in_features) <= 1), B starts at zero, and one AdamW step
# moves a value by at most lr * (1 - beta1) / sqrt(1 - beta2) ~ 3.2 * lr. At the default lr 2e-3 a bake
# would need 10,000 worst-case steps to reach 64; the shipped roles stay below 0.11. Within the bounds a
# block's effect on a finite activation stays finite in float32, so a file that passes cannot overflow a
# decode on its own (3e38, which passes a finiteness check, turned every line into NaN).
MAX_ABS_VALUE = 64.0
MAX_HEAD_ABS = 1e4  # a beat head's weight or bias: a fitted head on standardised features stays far below
MAX_HEAD_CLASSES = 64
MAX_LORA_SCALE = 64.0
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

DTYPES = {"f32": np.float32, "f16": np.float16}


@dataclass
class BaseInfo:
    """What a role was baked against. Shapes of every block follow from it."""

    fingerprint: str
    name: str
    arch: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    intermediate: int

    def linear_shape(self, target: str) -> tuple[int, int]:
        """(out_features, in_features) of a llama linear."""
        return llama.linear_shape(target, self.hidden, self.n_heads, self.n_kv_heads, self.intermediate)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class GateSettings:
    tau: float = defaults.GATE_TAU
    top_k: int = defaults.TOP_K
    min_weight: float = defaults.MIN_WEIGHT

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class LoraBlock:
    """One role's block: per (layer, target) an A (r x in) and a B (out x r)."""

    r: int
    alpha: float
    targets: tuple[str, ...]
    A: dict[tuple[int, str], np.ndarray]
    B: dict[tuple[int, str], np.ndarray]
    dtype: str = "f32"

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def n_params(self) -> int:
        return sum(a.size for a in self.A.values()) + sum(b.size for b in self.B.values())


@dataclass
class FusionRef:
    role: str
    sha256: str
    weight: float


@dataclass
class RoleAsset:
    profile: RoleProfile
    embedding: np.ndarray
    base: BaseInfo
    gate: GateSettings = field(default_factory=GateSettings)
    block: LoraBlock | None = None
    fusion: list[FusionRef] | None = None
    training: dict = field(default_factory=dict)
    beats: BeatHead | None = None
    contrast: float | None = None  # its own contrast (a block's, from the bake's voice check); None: the daemon's
    embedding_model: str = "all-MiniLM-L6-v2"
    created: str = ""
    tool: str = ""
    sha256: str = ""  # content hash, filled on read/write
    path: str = ""

    @property
    def id(self) -> str:
        return self.profile.id

    @property
    def kind(self) -> str:
        return "block" if self.block is not None else "fusion"

    def summary(self) -> dict:
        """What the file holds, JSON-ready (``neeko-npc inspect --json``); the tensors themselves are left out."""
        info = {
            "file": self.path, "bytes": Path(self.path).stat().st_size if self.path else None, "sha256": self.sha256,
            "kind": self.kind, "profile": self.profile.to_dict(),
            "embedding": {"model": self.embedding_model, "dim": int(self.embedding.shape[0])}, "gate": self.gate.to_dict(),
            "base": self.base.to_dict(), "training": self.training, "created": self.created, "tool": self.tool,
        }
        if self.block:
            b = self.block
            info["block"] = {"r": b.r, "alpha": b.alpha, "targets": list(b.targets), "dtype": b.dtype,
                             "tensors": 2 * len(b.A), "params": b.n_params()}
            if self.beats is not None:
                info["beats"] = {k: list(c.classes) for k in ("emotion", "action") if (c := getattr(self.beats, k))}
            if self.contrast is not None:
                info["voice"] = {"contrast": self.contrast}
        else:
            info["fusion"] = [{"role": f.role, "weight": f.weight, "sha256": f.sha256} for f in self.fusion]
        return info


# -- writing -------------------------------------------------------------------


def _tool_version() -> str:
    from .. import __version__

    return f"neeko-npc {__version__}"


def encode(asset: RoleAsset) -> bytes:
    if (asset.block is None) == (asset.fusion is None):
        raise ValueError("a role asset holds exactly one of a block or fusion weights")
    emb = np.ascontiguousarray(asset.embedding, dtype=np.float32)
    payload: dict[str, Any] = {
        "kind": asset.kind,
        "profile": asset.profile.to_dict(),
        "embedding": {"model": asset.embedding_model, "dim": int(emb.shape[0]), "data": emb.tobytes()},
        "gate": asset.gate.to_dict(),
        "base": asset.base.to_dict(),
        "training": asset.training,
        "created": asset.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool": asset.tool or _tool_version(),
    }
    if asset.block is not None:
        b = asset.block
        np_dtype = DTYPES[b.dtype]
        tensors = []
        for (layer, target) in sorted(b.A):
            for which, arr in (("A", b.A[(layer, target)]), ("B", b.B[(layer, target)])):
                arr = np.ascontiguousarray(arr, dtype=np_dtype)
                tensors.append([int(layer), target, which, [int(arr.shape[0]), int(arr.shape[1])], arr.tobytes()])
        payload["lora"] = {"r": b.r, "alpha": float(b.alpha), "dtype": b.dtype, "targets": list(b.targets), "tensors": tensors}
        if asset.beats is not None:
            payload["beats"] = _encode_beats(asset.beats)
        if asset.contrast is not None:
            payload["voice"] = {"contrast": float(asset.contrast)}
    else:
        payload["fusion"] = {"weights": [{"role": f.role, "sha256": f.sha256, "weight": float(f.weight)} for f in asset.fusion]}
    body = msgpack.packb(payload, use_bin_type=True)
    digest = hashlib.sha256(body).digest()
    return HEADER.pack(MAGIC, FORMAT_VERSION, len(body), digest) + body


def write_asset(asset: RoleAsset, path: str | Path) -> Path:
    """Write atomically (temp file + rename), so a watching daemon never sees half a file."""
    path = Path(path)
    data = encode(asset)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    asset.sha256 = hashlib.sha256(data[HEADER.size:]).hexdigest()
    asset.path = str(path)
    return path


def _encode_beats(head: BeatHead) -> dict:
    out: dict[str, Any] = {"dim": int(head.dim)}
    for kind in ("emotion", "action"):
        c = getattr(head, kind)
        if c is not None:
            out[kind] = {"classes": list(c.classes), "W": np.ascontiguousarray(c.W, dtype=np.float32).tobytes(),
                         "b": np.ascontiguousarray(c.b, dtype=np.float32).tobytes()}
    return out
