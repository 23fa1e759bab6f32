"""Exporting roles as standard LoRA adapters (GGUF for llama.cpp, PEFT for vLLM/LoRAX) or a merged model. numpy only."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .. import defaults
from ..defaults import EXPORT_FORMATS as FORMATS
from ..errors import InputError
from ..roles.asset import LoraBlock, RoleAsset

MANIFEST = "neeko-manifest.json"  # export --all: what the folder holds, for people and for the next export


def export_role(asset: RoleAsset, known: dict[str, RoleAsset], fmt: str, out: Path | None = None,
                base_model: str | None = None, served_model: str | None = None) -> tuple[LoraBlock, Path]:
    """Write ``asset`` (fused roles folded over ``known``) as ``fmt``; returns the folded LoRA and where it went.

    vllm is peft whose adapter_config names ``served_model`` as its base (vLLM's resolver loads an adapter only
    when that equals the name it serves the base under). merged-gguf needs the GGUF base model the role was
    baked on (``base_model``, default: the shipped one)."""
    from .fold import fold

    lora = fold(asset, known)
    if fmt in ("peft", "vllm"):
        from .peft import write_peft

        name = (served_model or defaults.SERVED_MODEL) if fmt == "vllm" else asset.base.name
        return lora, write_peft(lora, out or Path(f"{asset.id}-peft"), base_model_name=name)
    if fmt == "gguf-lora":
        from .gguf_lora import write_gguf_lora

        return lora, write_gguf_lora(lora, asset.base, out or Path(f"{asset.id}.lora.gguf"), name=asset.id)
    if fmt == "merged-gguf":
        from ..roles.asset_read import check_base
        from ..roles.base_model import base_info, resolve_base_model
        from .merge import merge_into_gguf

        ref = resolve_base_model(base_model)
        if ref.kind != "gguf":
            raise InputError(f"{ref.path}: merged-gguf needs a .gguf base model")
        base = base_info(ref)
        check_base(asset, base)
        return lora, merge_into_gguf(ref.path, lora, base, out or Path(f"{asset.id}.merged.gguf"))
    raise InputError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")


@dataclass
class Exported:
    id: str
    kind: str  # block or fusion
    rank: int
    path: Path  # the adapter folder (vllm, peft) or file (gguf-lora)
    files: dict[str, str]  # file name -> sha256


@dataclass
class ExportSet:
    """What ``export_all`` wrote."""

    out: Path
    format: str
    served_model: str
    roles: list[Exported]
    skipped: dict[str, str] = field(default_factory=dict)  # role file -> why it was not exported
    removed: list[str] = field(default_factory=list)  # ids an earlier export left here that are no longer roles

    @property
    def max_rank(self) -> int:
        return max((r.rank for r in self.roles), default=0)

    @property
    def vllm_max_lora_rank(self) -> int:
        """The smallest --max-lora-rank vLLM accepts that holds every adapter here."""
        return next((r for r in defaults.VLLM_LORA_RANKS if r >= self.max_rank), self.max_rank)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_all(roles_dir: Path, fmt: str, out: Path, served_model: str | None = None,
               progress=lambda done, total, role_id: None) -> ExportSet:
    """Every role in ``roles_dir`` as one adapter per NPC id under ``out`` (vllm, peft: ``out/<id>/``; gguf-lora:
    ``out/<id>.gguf``), fused roles folded exactly, and a manifest (ids, kinds, ranks, base, content hashes).

    Each adapter is written beside its place and renamed into it, so a server reading the folder never sees half
    of one. Adapters an earlier export here wrote for roles that are gone are removed (the manifest says which);
    nothing else in ``out`` is touched. Unreadable role files are skipped and listed."""
    from ..roles.folder import load_role_assets

    if fmt not in ("vllm", "peft", "gguf-lora"):
        raise InputError(f"export --all writes vllm, peft or gguf-lora, not {fmt!r} (merged-gguf is one role a model)")
    assets, errors = load_role_assets(Path(roles_dir))
    if not assets:
        raise InputError(f"{roles_dir}: no readable .nrole files to export" + (f" ({len(errors)} unreadable)" if errors else ""))
    known = {a.id: a for a in assets}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = (served_model or defaults.SERVED_MODEL) if fmt == "vllm" else assets[0].base.name
    before = _previous_ids(out)
    done: list[Exported] = []
    skipped = {str(e.path): str(e) for e in errors}
    for i, asset in enumerate(assets):
        progress(i, len(assets), asset.id)
        dest = out / (f"{asset.id}.gguf" if fmt == "gguf-lora" else asset.id)
        tmp = out / f".{dest.name}.tmp"
        _remove(tmp)
        try:
            lora, _ = export_role(asset, known, fmt, tmp, served_model=name)
        except InputError as exc:  # a fusion whose blocks are missing or changed
            _remove(tmp)
            skipped[asset.path or asset.id] = str(exc)
            continue
        _remove(dest)
        tmp.replace(dest)
        files = {p.name: _sha256(p) for p in sorted(dest.iterdir())} if dest.is_dir() else {dest.name: _sha256(dest)}
        done.append(Exported(asset.id, asset.kind, lora.r, dest, files))
    progress(len(assets), len(assets), "")
    ids = {r.id for r in done}
    removed = sorted(i for i in before - ids if i not in known)
    for rid in removed:
        _remove(out / rid)
        _remove(out / f"{rid}.gguf")
    result = ExportSet(out, fmt, name, done, skipped, removed)
    manifest = {
        "format": fmt, "served_model": name, "base": {"name": assets[0].base.name, "fingerprint": assets[0].base.fingerprint},
        "max_rank": result.max_rank, "vllm_max_lora_rank": result.vllm_max_lora_rank,
        "roles": [{"id": r.id, "kind": r.kind, "rank": r.rank, "path": r.path.name, "role_sha256": known[r.id].sha256,
                   "files": r.files} for r in done],
        "skipped": skipped,
    }
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out / MANIFEST)
    return result


def _previous_ids(out: Path) -> set[str]:
    try:
        return {r["id"] for r in json.loads((out / MANIFEST).read_text())["roles"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
