"""``neeko-npc-server``: the entry point frozen into a bundle. It is ``neeko-npc serve`` with the bundle's own
model, roles and warm/ as defaults (read from bundle.json beside the executable), under its own program name.

It runs the CLI's ``serve`` command only; the CLI's other commands import the training side lazily, and the
bundle leaves that side out (build.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import MANIFEST, SERVER_NAME, WARM_DIR


def bundle_root() -> Path:
    """The folder holding the executable (frozen), or the working directory when run from source."""
    return Path(sys.executable).resolve().parent if getattr(sys, "frozen", False) else Path.cwd()


def given(args: list[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in args)


def with_bundle_defaults(args: list[str], root: Path) -> list[str]:
    """``args`` with ``--roles``, ``--base-model`` and ``--warm-dir`` pointing into the bundle unless the caller chose
    them."""
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {root / MANIFEST}: cannot read the bundle's manifest ({exc}); rebuild the bundle "
                         "with `neeko-npc bundle`")
    extra = []
    if not given(args, "--roles"):
        extra += ["--roles", str(root / manifest["roles_dir"])]
    if not given(args, "--base-model"):
        extra += ["--base-model", str(root / manifest["model"])]
        remember_shipped_base(root / manifest["model"], manifest.get("base"))
    if not given(args, "--warm-dir") and (root / WARM_DIR).is_dir():
        extra += ["--warm-dir", str(root / WARM_DIR)]
    return extra + args


def remember_shipped_base(model: Path, shipped) -> None:
    """Seed the cache with the fingerprint the bundle measured when it was built, so a first start does not hash
    every weight (half a second for the default model). Only for the bundle's own model file, at the size it
    was built with; anything else is fingerprinted as usual."""
    if not isinstance(shipped, dict):
        return
    from ..errors import InputError
    from ..roles.asset import BaseInfo
    from ..roles.base_model import remember_base_info, resolve_base_model

    try:
        if model.stat().st_size != shipped.get("size"):
            return
        info = BaseInfo(**{k: v for k, v in shipped.items() if k != "size"})
        remember_base_info(resolve_base_model(model), info)
    except (InputError, OSError, TypeError, ValueError):
        return  # a manifest of another version, or a file that moved: fingerprint it as usual


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if given(args, "--version"):
        from .. import __version__

        print(f"{SERVER_NAME} {__version__}")
        return
    if given(args, "--help") or given(args, "-h"):
        full = args
    else:
        full = with_bundle_defaults(args, bundle_root())
    from ..cli import serve

    serve.main(full, prog_name=SERVER_NAME)


if __name__ == "__main__":
    main()
