"""Reading a ``.nrole`` file (the format: asset.py), safely: nothing in a file is trusted.

Reading validates everything before a tensor is allocated: size and header
first, then the checksum, then msgpack with hard limits, then the schema and
every declared shape against the bytes present and against sane bounds, then
every value (finite, and within :data:`MAX_ABS_VALUE`). Each failure is an
:class:`AssetError` naming the file and how to fix it; nothing else is raised.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from .. import defaults
from ..errors import AssetError, ProfileError
from .asset import (DTYPES, FORMAT_VERSION, HEADER, MAGIC, MAX_ABS_VALUE, MAX_DIM, MAX_EMBED_DIM, MAX_FILE_BYTES,
                    MAX_FUSION_REFS, MAX_HEAD_ABS, MAX_HEAD_CLASSES, MAX_LAYERS, MAX_LORA_SCALE, MAX_RANK,
                    MAX_RECORD_DEPTH, MAX_RECORD_ITEMS, MAX_RECORD_STR, MAX_SHORT_CHARS, MAX_STR_BYTES, SHA256_RE, BaseInfo,
                    FusionRef, GateSettings, LoraBlock, RoleAsset)
from .beats import BeatHead, Classifier
from .llama import TARGETS
from .prompt import BEAT_ID_RE, EMOTIONS
from .profile import ROLE_ID_RE, RoleProfile


def read_asset(path: str | Path, expect_base: BaseInfo | None = None) -> RoleAsset:
    """Read and validate one role file. Raises :class:`AssetError`; never a raw exception."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AssetError(path, f"cannot open ({exc.strerror})") from None
    if size > MAX_FILE_BYTES:
        raise AssetError(path, f"file is {size} bytes, over the {MAX_FILE_BYTES} byte limit for a role", "this is not a role asset")
    if size < HEADER.size:
        raise AssetError(path, f"file is {size} bytes, shorter than the {HEADER.size}-byte header", "the file is truncated or not a .nrole; copy it again or re-bake it")
    with path.open("rb") as f:
        head = f.read(HEADER.size)
        magic, version, length, digest = HEADER.unpack(head)
        if magic != MAGIC:
            raise AssetError(path, "not a neeko-npc role asset (bad magic bytes)", "only files made by `neeko-npc bake` or `bake-role` belong in the roles folder")
        if version != FORMAT_VERSION:
            raise AssetError(
                path,
                f"format version {version} is not supported; this build reads version {FORMAT_VERSION}",
                "upgrade neeko-npc" if version > FORMAT_VERSION else "re-bake the role with this version",
            )
        if length != size - HEADER.size:
            raise AssetError(path, f"header declares a {length}-byte payload but {size - HEADER.size} bytes follow", "the file is truncated or was modified; copy it again or re-bake it")
        body = f.read(length)
    if hashlib.sha256(body).digest() != digest:
        raise AssetError(path, "checksum mismatch: the file is corrupt", "copy it again or re-bake it")
    try:
        payload = msgpack.unpackb(
            body, raw=False, strict_map_key=True, max_bin_len=length, max_str_len=MAX_STR_BYTES,
            max_array_len=1 << 20, max_map_len=4096, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several types for malformed data
        raise AssetError(path, f"payload is not valid msgpack ({type(exc).__name__}: {str(exc)[:120]})", "re-bake the role") from None
    asset = _parse_payload(path, payload)
    asset.sha256 = digest.hex()
    asset.path = str(path)
    if expect_base is not None:
        check_base(asset, expect_base)
    return asset


_SHAPE_FIELDS = ("arch", "n_layers", "hidden", "n_heads", "n_kv_heads", "intermediate")


def check_base(asset: RoleAsset, base: BaseInfo) -> None:
    """The role was baked for this base model: same fingerprint and same shape (a file that copies the
    fingerprint but declares other shapes would otherwise pass its own shape checks)."""
    if asset.base.fingerprint != base.fingerprint:
        raise AssetError(
            asset.path,
            f"role {asset.id!r} was baked for base model {asset.base.name!r} (fingerprint {asset.base.fingerprint[:12]}), "
            f"but the loaded base model is {base.name!r} (fingerprint {base.fingerprint[:12]})",
            "re-bake the role against this base model with `neeko-npc bake-role --base-model ...`, or start with the base it was baked for",
        )
    wrong = [f for f in _SHAPE_FIELDS if getattr(asset.base, f) != getattr(base, f)]
    if wrong:
        raise AssetError(asset.path, f"role {asset.id!r} declares the base model's fingerprint but another shape "
                         f"({', '.join(f'{f} {getattr(asset.base, f)} vs {getattr(base, f)}' for f in wrong)})",
                         "the file is damaged or forged; re-bake the role")


def _req(path: Path, d: Any, key: str, typ: type | tuple, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise AssetError(path, f"field {where}.{key} is missing", "re-bake the role")
    v = d[key]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
        raise AssetError(path, f"field {where}.{key} has the wrong type", "re-bake the role")
    return v


def _short(path: Path, d: Any, key: str, where: str, default: str | None = None) -> str:
    """A short string field (a name, hash, date or version)."""
    if default is not None and isinstance(d, dict) and key not in d:
        return default
    v = _req(path, d, key, str, where)
    if len(v) > MAX_SHORT_CHARS:
        raise AssetError(path, f"field {where}.{key} has {len(v)} characters; the limit is {MAX_SHORT_CHARS}", "the file is damaged or not made by neeko-npc")
    return v


def _check_record(path: Path, v: Any, where: str, depth: int = 0) -> int:
    """The free-form training record: plain values in maps and lists, bounded in depth, size and string length.
    Returns how many items it holds."""
    if depth > MAX_RECORD_DEPTH:
        raise AssetError(path, f"{where} is nested more than {MAX_RECORD_DEPTH} levels deep", "the file is damaged or not made by neeko-npc")
    if isinstance(v, dict):
        items = list(v.values())
    elif isinstance(v, list):
        items = v
    elif isinstance(v, str):
        if len(v) > MAX_RECORD_STR:
            raise AssetError(path, f"{where} holds a string of {len(v)} characters", "the file is damaged or not made by neeko-npc")
        return 1
    elif v is None or isinstance(v, (bool, int, float)):
        return 1
    else:
        raise AssetError(path, f"{where} holds a value of type {type(v).__name__}", "the file is damaged or not made by neeko-npc")
    n = 1 + sum(_check_record(path, x, where, depth + 1) for x in items)
    if n > MAX_RECORD_ITEMS:
        raise AssetError(path, f"{where} holds more than {MAX_RECORD_ITEMS} values", "the file is damaged or not made by neeko-npc")
    return n


def _bounded(path: Path, v: int, lo: int, hi: int, what: str) -> int:
    if not lo <= v <= hi:
        raise AssetError(path, f"{what} = {v} is outside the sane range [{lo}, {hi}]", "the file is damaged or not made by neeko-npc")
    return v


def _parse_payload(path: Path, p: Any) -> RoleAsset:
    if not isinstance(p, dict):
        raise AssetError(path, "payload is not a map", "re-bake the role")
    kind = _req(path, p, "kind", str, "")
    if kind not in ("block", "fusion"):
        raise AssetError(path, f"unknown role kind {kind[:64]!r}", "re-bake the role")
    pd = _req(path, p, "profile", dict, "")
    if "spec" in pd:
        raise AssetError(path, "the profile is a character card, not a baked profile", "re-bake the role")
    try:
        profile = RoleProfile.from_dict(pd, source="profile")
    except ProfileError as exc:
        raise AssetError(path, str(exc), "fix the profile and re-bake") from None

    e = _req(path, p, "embedding", dict, "")
    dim = _bounded(path, _req(path, e, "dim", int, "embedding"), 1, MAX_EMBED_DIM, "embedding.dim")
    edata = _req(path, e, "data", bytes, "embedding")
    if len(edata) != dim * 4:
        raise AssetError(path, f"embedding declares {dim} floats but holds {len(edata)} bytes", "re-bake the role")
    embedding = np.frombuffer(edata, dtype=np.float32).copy()
    if not np.all(np.isfinite(embedding)):
        raise AssetError(path, "embedding holds NaN or infinite values", "re-bake the role")
    norm = float(np.linalg.norm(embedding.astype(np.float64)))
    if not 0.99 <= norm <= 1.01:  # the encoder writes unit-length rows
        raise AssetError(path, f"embedding has length {norm:.4g}, not 1", "re-bake the role")

    g = _req(path, p, "gate", dict, "")
    gate = GateSettings(
        tau=_req(path, g, "tau", float, "gate"), top_k=_req(path, g, "top_k", int, "gate"), min_weight=_req(path, g, "min_weight", float, "gate")
    )
    if not (0 < gate.tau <= 1e3 and 1 <= gate.top_k <= MAX_FUSION_REFS and 0 <= gate.min_weight < 1):
        raise AssetError(path, f"gate settings out of range: {gate}", "0 < tau <= 1000, 1 <= top_k <= 64, 0 <= min_weight < 1")

    b = _req(path, p, "base", dict, "")
    base = BaseInfo(
        fingerprint=_short(path, b, "fingerprint", "base"), name=_short(path, b, "name", "base"),
        arch=_short(path, b, "arch", "base"),
        n_layers=_bounded(path, _req(path, b, "n_layers", int, "base"), 1, MAX_LAYERS, "base.n_layers"),
        hidden=_bounded(path, _req(path, b, "hidden", int, "base"), 1, MAX_DIM, "base.hidden"),
        n_heads=_bounded(path, _req(path, b, "n_heads", int, "base"), 1, MAX_DIM, "base.n_heads"),
        n_kv_heads=_bounded(path, _req(path, b, "n_kv_heads", int, "base"), 1, MAX_DIM, "base.n_kv_heads"),
        intermediate=_bounded(path, _req(path, b, "intermediate", int, "base"), 1, 4 * MAX_DIM, "base.intermediate"),
    )
    if base.hidden % base.n_heads or base.n_heads % base.n_kv_heads:
        raise AssetError(path, "base shape is inconsistent (hidden, heads, kv heads)", "the file is damaged")

    training = p.get("training", {})
    if not isinstance(training, dict):
        raise AssetError(path, "field training must be a map", "re-bake the role")
    _check_record(path, training, "field training")

    asset = RoleAsset(
        profile=profile, embedding=embedding, base=base, gate=gate, training=training,
        embedding_model=_short(path, e, "model", "embedding", ""), created=_short(path, p, "created", "", ""),
        tool=_short(path, p, "tool", "", ""),
    )
    if kind == "block":
        asset.block = _parse_block(path, _req(path, p, "lora", dict, ""), base)
        if "beats" in p:
            asset.beats = _parse_beats(path, _req(path, p, "beats", dict, ""), base)
        if "voice" in p:
            asset.contrast = _parse_contrast(path, _req(path, p, "voice", dict, ""))
    else:
        asset.fusion = _parse_fusion(path, _req(path, p, "fusion", dict, ""), profile.id)
    return asset


def _parse_fusion(path: Path, f: dict, own_id: str) -> list[FusionRef]:
    refs = _req(path, f, "weights", list, "fusion")
    fix = "re-fuse the role with `bake-role --fuse`"
    if not 1 <= len(refs) <= MAX_FUSION_REFS:
        raise AssetError(path, f"fusion references {len(refs)} roles; allowed 1..{MAX_FUSION_REFS}", fix)
    out: list[FusionRef] = []
    for r in refs:
        role = _short(path, r, "role", "fusion.weights[]")
        sha = _short(path, r, "sha256", "fusion.weights[]")
        w = _req(path, r, "weight", float, "fusion.weights[]")
        if not ROLE_ID_RE.match(role):
            raise AssetError(path, f"fusion references {role[:80]!r}, which is not a role id", fix)
        if role == own_id:
            raise AssetError(path, f"fused role {own_id!r} references itself", fix)
        if any(x.role == role for x in out):
            raise AssetError(path, f"fusion references role {role!r} twice", fix)
        if not SHA256_RE.match(sha):
            raise AssetError(path, f"fusion reference to {role!r} has no valid sha256", fix)
        if not (math.isfinite(w) and 0 <= w <= 1):
            raise AssetError(path, f"fusion weight {w} of {role!r} is not in [0, 1]", fix)
        out.append(FusionRef(role, sha, w))
    total = sum(x.weight for x in out)
    if abs(total - 1) > 1e-3:
        raise AssetError(path, f"fusion weights sum to {total:.6g}, not 1", fix)
    return out


def _parse_block(path: Path, lora: dict, base: BaseInfo) -> LoraBlock:
    r = _bounded(path, _req(path, lora, "r", int, "lora"), 1, MAX_RANK, "lora.r")
    alpha = _req(path, lora, "alpha", float, "lora")
    if not (math.isfinite(alpha) and 0 < alpha <= MAX_LORA_SCALE * r):
        raise AssetError(path, f"lora.alpha = {alpha} must be positive and at most {MAX_LORA_SCALE:g} x rank", "re-bake the role")
    dtype = _req(path, lora, "dtype", str, "lora")
    if dtype not in DTYPES:
        raise AssetError(path, f"tensor dtype {dtype[:32]!r} is not supported (f32, f16)", "re-bake the role")
    targets = _req(path, lora, "targets", list, "lora")
    if not targets or any(not isinstance(t, str) or t not in TARGETS for t in targets) or len(set(targets)) != len(targets):
        raise AssetError(path, f"lora.targets {str(targets)[:200]} must be distinct names from {', '.join(TARGETS)}", "re-bake the role")
    tensors = _req(path, lora, "tensors", list, "lora")
    expected = base.n_layers * len(targets) * 2
    if len(tensors) != expected:
        raise AssetError(path, f"block holds {len(tensors)} tensors; {base.n_layers} layers x {len(targets)} targets x (A, B) = {expected}", "the file is damaged; re-bake the role")
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    A: dict = {}
    B: dict = {}
    for t in tensors:
        if not (isinstance(t, list) and len(t) == 5):
            raise AssetError(path, "a tensor entry is malformed", "re-bake the role")
        layer, target, which, shape, data = t
        if not (type(layer) is int and 0 <= layer < base.n_layers and isinstance(target, str) and target in targets
                and which in ("A", "B")):
            raise AssetError(path, f"unexpected tensor {str(layer)[:32]}/{str(target)[:32]}/{str(which)[:32]}", "the file is damaged; re-bake the role")
        out_f, in_f = base.linear_shape(target)
        want = (r, in_f) if which == "A" else (out_f, r)
        if not (isinstance(shape, list) and all(type(x) is int for x in shape) and tuple(shape) == want):
            raise AssetError(
                path, f"shape mismatch: layer {layer} {target}.{which} is {str(shape)[:64]}, the base model needs {list(want)}",
                "the role was baked for a different base model; re-bake it",
            )
        if not isinstance(data, bytes) or len(data) != want[0] * want[1] * itemsize:
            raise AssetError(path, f"layer {layer} {target}.{which} holds {len(data) if isinstance(data, bytes) else '?'} bytes, expected {want[0] * want[1] * itemsize}", "the file is damaged; re-bake the role")
        arr = np.frombuffer(data, dtype=DTYPES[dtype]).reshape(want)
        if not np.all(np.isfinite(arr)):
            raise AssetError(path, f"layer {layer} {target}.{which} holds NaN or infinite values", "training diverged; re-bake with a lower learning rate")
        peak = float(np.abs(arr).max())
        if peak > MAX_ABS_VALUE:
            raise AssetError(path, f"layer {layer} {target}.{which} holds a value of magnitude {peak:.3g}, over the "
                             f"bound of {MAX_ABS_VALUE:g} that training stays far below", "the file is damaged or forged; re-bake the role")
        key = (layer, target)
        if key in (A if which == "A" else B):
            raise AssetError(path, f"layer {layer} {target}.{which} appears twice", "the file is damaged; re-bake the role")
        (A if which == "A" else B)[key] = arr
    if len(A) != base.n_layers * len(targets) or len(B) != len(A):
        raise AssetError(path, "block has duplicate or missing tensors", "the file is damaged; re-bake the role")
    return LoraBlock(r=r, alpha=alpha, targets=tuple(targets), A=A, B=B, dtype=dtype)


def _parse_beats(path: Path, d: dict, base: BaseInfo) -> BeatHead:
    """A block's beat head: a classifier per kind on the base model's hidden state (its width is base.hidden)."""
    dim = _req(path, d, "dim", int, "beats")
    if dim != base.hidden:
        raise AssetError(path, f"beats.dim = {dim} but the base model's hidden size is {base.hidden}", "re-bake the role")
    parts = {}
    for kind in ("emotion", "action"):
        if kind not in d:
            continue
        c = _req(path, d, kind, dict, "beats")
        classes = _req(path, c, "classes", list, f"beats.{kind}")
        if not (1 <= len(classes) <= MAX_HEAD_CLASSES and len(set(map(str, classes))) == len(classes)
                and all(isinstance(x, str) and BEAT_ID_RE.match(x) for x in classes)):
            raise AssetError(path, f"beats.{kind}.classes must be 1 to {MAX_HEAD_CLASSES} distinct ids like "
                             "'open_shop'", "re-bake the role")
        if kind == "emotion" and not set(classes) <= set(EMOTIONS):
            raise AssetError(path, f"beats.emotion.classes holds ids outside {', '.join(EMOTIONS)}", "re-bake the role")
        arrays = []
        for name, n in (("W", len(classes) * dim), ("b", len(classes))):
            data = _req(path, c, name, bytes, f"beats.{kind}")
            if len(data) != 4 * n:
                raise AssetError(path, f"beats.{kind}.{name} holds {len(data)} bytes, expected {4 * n}", "re-bake the role")
            arr = np.frombuffer(data, dtype=np.float32).copy()
            if not (np.all(np.isfinite(arr)) and float(np.abs(arr).max(initial=0.0)) <= MAX_HEAD_ABS):
                raise AssetError(path, f"beats.{kind}.{name} holds values that are not finite or over {MAX_HEAD_ABS:g}",
                                 "the file is damaged or forged; re-bake the role")
            arrays.append(arr)
        parts[kind] = Classifier(tuple(classes), arrays[0].reshape(len(classes), dim), arrays[1])
    return BeatHead(dim, **parts)


def _parse_contrast(path: Path, d: dict) -> float:
    """A block's own contrast (voice.contrast): a finite number within what a request may ask for."""
    c = _req(path, d, "contrast", float, "voice")
    if not (math.isfinite(c) and 0 <= c <= defaults.MAX_CONTRAST):
        raise AssetError(path, f"voice.contrast = {c:g}; it must be between 0 and {defaults.MAX_CONTRAST:g}",
                         "the file is damaged or forged; re-bake the role")
    return c
