"""The Unity package's .meta files: write the missing ones, and list what is wrong with the rest.

    python scripts/unity_meta.py           # add a .meta (a new random GUID) for every asset that lacks one
    python scripts/unity_meta.py --check   # exit 1 on a missing, orphaned, malformed or duplicate .meta

Unity ignores any asset of an immutable package (one added by git URL) that has no .meta, and a GUID that
changes breaks every scene referencing the asset; so a .meta is written once, committed, and never
rewritten. Folders and files under a folder whose name ends in ``~`` (Documentation~, Samples~) and hidden
files are not imported by Unity and get none. ``tests/test_unity_client.py`` runs the check.
"""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "unity_client"

IMPORTERS = {".cs": "MonoImporter", ".asmdef": "AssemblyDefinitionImporter", ".md": "TextScriptImporter",
             ".json": "TextScriptImporter", ".txt": "TextScriptImporter", ".xml": "TextScriptImporter"}
_GUID = re.compile(r"^guid: ([0-9a-f]{32})$", re.M)


def importer(path: Path) -> str:
    """The importer Unity gives this asset."""
    if path.is_dir():
        return "DefaultImporter"
    if path.name == "package.json":
        return "PackageManifestImporter"
    return IMPORTERS.get(path.suffix, "DefaultImporter")


def imported(root: Path = PACKAGE) -> list[Path]:
    """Every file and folder Unity imports from the package (the package root itself needs no .meta)."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") or part.endswith("~") for part in rel) or p.suffix == ".meta":
            continue
        out.append(p)
    return out


def meta_text(path: Path, guid: str) -> str:
    kind = importer(path)
    lines = ["fileFormatVersion: 2", f"guid: {guid}"]
    if path.is_dir():
        lines.append("folderAsset: yes")
    lines.append(f"{kind}:")
    lines.append("  externalObjects: {}")
    if kind == "MonoImporter":
        lines += ["  serializedVersion: 2", "  defaultReferences: []", "  executionOrder: 0", "  icon: {instanceID: 0}"]
    lines += ["  userData: ", "  assetBundleName: ", "  assetBundleVariant: "]
    return "\n".join(lines) + "\n"


def problems(root: Path = PACKAGE) -> list[str]:
    found = []
    assets = imported(root)
    wanted = {Path(f"{p}.meta") for p in assets}
    guids: dict[str, Path] = {}
    for p in assets:
        meta = Path(f"{p}.meta")
        rel = meta.relative_to(root)
        if not meta.is_file():
            found.append(f"{rel}: missing (Unity ignores {p.relative_to(root)} in a git-URL install)")
            continue
        text = meta.read_text()
        m = _GUID.search(text)
        if not text.startswith("fileFormatVersion: 2\n") or m is None:
            found.append(f"{rel}: malformed (needs 'fileFormatVersion: 2' and a 32-hex-digit guid)")
            continue
        if f"\n{importer(p)}:\n" not in text:
            found.append(f"{rel}: not a {importer(p)} .meta")
        if p.is_dir() != ("\nfolderAsset: yes\n" in text):
            found.append(f"{rel}: folderAsset does not match")
        if m.group(1) in guids:
            found.append(f"{rel}: guid {m.group(1)} is also used by {guids[m.group(1)].relative_to(root)}")
        guids[m.group(1)] = meta
    for meta in sorted(root.rglob("*.meta")):
        if meta not in wanted:
            found.append(f"{meta.relative_to(root)}: orphaned (no asset beside it, or one Unity does not import)")
    return found


def write_missing(root: Path = PACKAGE) -> list[Path]:
    written = []
    for p in imported(root):
        meta = Path(f"{p}.meta")
        if not meta.exists():
            meta.write_text(meta_text(p, uuid.uuid4().hex))
            written.append(meta)
    return written


def main(argv: list[str]) -> int:
    if "--check" in argv:
        bad = problems()
        for line in bad:
            print(line, file=sys.stderr)
        return 1 if bad else 0
    for meta in write_missing():
        print(f"wrote {meta.relative_to(PACKAGE.parent)}")
    bad = problems()
    for line in bad:
        print(line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
