"""A folder of role files: load every valid one, report the others, resolve fused roles' references. No torch."""

from __future__ import annotations

from pathlib import Path

from .asset import SUFFIX, BaseInfo, RoleAsset
from .asset_read import check_base, read_asset
from ..errors import AssetError


def role_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []


def file_stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) per role file: what a watcher compares to notice changes."""
    stamps = {}
    for p in role_files(folder):
        try:
            st = p.stat()
        except OSError:  # removed between the listing and the stat
            continue
        stamps[str(p)] = (st.st_mtime_ns, st.st_size)
    return stamps


def load_role_assets(folder: Path, base: BaseInfo | None = None) -> tuple[list[RoleAsset], list[AssetError]]:
    """Every valid .nrole in a folder, sorted by id, and one error per file that is not (never raised).

    With ``base``, a role baked for another base model is an error; so is a second file with a role id
    already taken by an earlier file."""
    assets: dict[str, RoleAsset] = {}
    errors: list[AssetError] = []
    for path in role_files(folder):
        try:
            a = read_asset(path)
            if base is not None:
                check_base(a, base)
            if a.id in assets:
                raise AssetError(path, f"role id {a.id!r} is also defined in {assets[a.id].path}", "remove one of the two files")
            assets[a.id] = a
        except AssetError as exc:
            errors.append(exc)
        except OSError as exc:
            errors.append(AssetError(path, f"cannot read ({exc.strerror or exc})"))
    return sorted(assets.values(), key=lambda a: a.id), errors


def resolve_fusion(asset: RoleAsset, known: dict[str, RoleAsset]) -> list[tuple[RoleAsset, float]]:
    """The (block asset, weight) pairs a fused role mixes; errors name the missing or changed role."""
    out = []
    for ref in asset.fusion or []:
        src = known.get(ref.role)
        if src is not None and src.block is None:
            raise AssetError(asset.path or asset.id, f"fused role {asset.id!r} references fused role {ref.role!r}; "
                             "a fusion mixes trained blocks only", "re-fuse it with `bake-role --fuse`")
        if src is None:
            raise AssetError(asset.path or asset.id, f"fused role {asset.id!r} references role {ref.role!r}, which is not in the role set",
                             f"add {ref.role}.nrole to the roles folder or re-fuse with `bake-role --fuse`")
        if src.sha256 != ref.sha256:
            raise AssetError(asset.path or asset.id, f"fused role {asset.id!r} was made from a different version of role {ref.role!r}",
                             "re-fuse it with `bake-role --fuse` against the current roles")
        out.append((src, ref.weight))
    return out


def find_role(folder: Path, ref: str) -> tuple[RoleAsset, dict[str, RoleAsset]]:
    """The role ``ref`` names (a .nrole path, or an id in ``folder``) and every valid role in the folder by id
    (a fused role needs them). AssetError names the known ids when none matches."""
    known, errors = load_role_assets(folder)
    by_id = {a.id: a for a in known}
    path = Path(ref)
    if path.suffix == SUFFIX and path.is_file():
        return read_asset(path), by_id
    if ref in by_id:
        return by_id[ref], by_id
    bad = f"; {len(errors)} unreadable file(s) in {folder}" if errors else ""
    raise AssetError(folder, f"no role {ref!r}; known: {', '.join(sorted(by_id)) or 'none'}{bad}",
                     "give a role id from the folder (--roles) or the path of a .nrole file")
