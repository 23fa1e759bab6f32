"""Sweep the bake's settings on one expansion: what each costs (time, file size) and what it buys (held-out loss).

    python3 scripts/sweep_expansion.py --roles /tmp/neeko-outside/roles --src corpora/shakespeare/lear \
        --out /tmp/sweep-lear                      # writes sweep.json and sweep.md there

Each setting adds the role by expansion (`neeko-npc bake-role`) onto a copy of ``--roles`` (its other blocks are
never touched), with the seed fixed, and reads the held-out losses the bake records in the file. One run at a
time, so the timings compare (docs/corpora.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neeko_npc.roles.asset_read import read_asset  # noqa: E402

# (name, bake-role flags). Every row spells its epochs, so it means the same whichever epochs are the default (4 when
# this sweep was first run, 2 now); lr 2e-3 and batch 4, the defaults, unless a row says otherwise. Rank and
# target modules are the whole set's (every block has the same shape), so they are swept with full bakes, not here.
SETTINGS = [
    ("4 epochs, lr 2e-3, batch 4", ["--epochs", "4", "--lr", "2e-3", "--batch-size", "4"]),
    ("2 epochs", ["--epochs", "2"]),
    ("8 epochs", ["--epochs", "8"]),
    ("lr 1e-3", ["--epochs", "4", "--lr", "1e-3"]),
    ("lr 4e-3", ["--epochs", "4", "--lr", "4e-3"]),
    ("batch 2", ["--epochs", "4", "--batch-size", "2"]),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roles", type=Path, required=True, help="the set the role is added to")
    ap.add_argument("--src", type=Path, required=True, help="the new role's folder (profile.json, lines.jsonl)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", nargs="*", help="names of settings to run (default: all)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    role_id = json.loads((args.src / "profile.json").read_text())["id"]
    rows = []
    for name, flags in SETTINGS:
        if args.only and name not in args.only:
            continue
        work = args.out / "roles"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(args.roles, work)
        (work / f"{role_id}.nrole").unlink(missing_ok=True)
        t0 = time.perf_counter()
        subprocess.run(["neeko-npc", "bake-role", "--profile", str(args.src / "profile.json"), "--data",
                        str(args.src / "lines.jsonl"), "--roles", str(work), "--seed", "0", "--precision", "fp32",
                        "--quiet", *flags], check=True)
        seconds = time.perf_counter() - t0
        path = work / f"{role_id}.nrole"
        t = read_asset(path).training
        base, block = t["heldout_loss_base"], t["heldout_loss_block"]
        rows.append({"setting": name, "flags": " ".join(flags), "seconds": round(seconds, 1),
                     "nrole_mb": round(path.stat().st_size / 1e6, 2), "heldout_loss_base": base,
                     "heldout_loss_block": block, "change_pct": round(100 * (block - base) / base, 1)})
        print(f"{name:45s} {seconds:7.1f} s {rows[-1]['nrole_mb']:6.2f} MB  {base:.4f} -> {block:.4f} "
              f"({rows[-1]['change_pct']:+.1f}%)", flush=True)
        (args.out / "sweep.json").write_text(json.dumps(rows, indent=2))
    lines = ["| setting | bake-role flags | wall time | .nrole | held-out loss: base+profile -> block |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | `{r['flags'] or '(none)'}` | {r['seconds']:.0f} s | {r['nrole_mb']:.2f} MB | "
              f"{r['heldout_loss_base']:.4f} -> {r['heldout_loss_block']:.4f} ({r['change_pct']:+.1f}%) |" for r in rows]
    (args.out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
