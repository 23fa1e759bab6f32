"""Can each NPC's contrast be chosen without the prompts it is scored on? A study for docs/corpora.md
("A contrast per NPC").

Every trained role answers every prompt of three sets, greedily, as `neeko-npc eval` answers them (the same judge:
nearest centroid of each role's training lines; the same reply length and seed), at each contrast of --grid:

- ``eval``: the first N held-out prompts of each role, the prompts `neeko-npc eval --prompts-per-role N` scores;
- ``spare``: the next N held-out prompts of each role, never scored by that eval;
- ``train``: the first N prompts of each role's training scenes (its block has read these scenes).

Each role's contrast is chosen on ``spare`` and, separately, on ``train`` (as the bake's voice check chooses:
``voice_check.choose_contrast``), and the choice is scored on ``eval`` beside
every single contrast and in-context prompting, paired on the same prompts. Rows are written to OUT as they come.

    python3 scripts/contrast_choice.py --roles /tmp/out-office400/roles --src /tmp/office400 --out /tmp/cc-office
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neeko_npc import defaults  # noqa: E402
from neeko_npc.neeko.attribution import (CentroidClassifier, generate_replies, prompt_messages,  # noqa: E402
                                         prompts_from, role_lines)
from neeko_npc.neeko.bake import RoleSource  # noqa: E402
from neeko_npc.neeko.intervals import bootstrap_accuracy, paired_accuracy  # noqa: E402
from neeko_npc.neeko.load_base import load_for_training  # noqa: E402
from neeko_npc.neeko.model import NeekoLoRA  # noqa: E402
from neeko_npc.roles.base_model import base_info, resolve_base_model  # noqa: E402
from neeko_npc.roles.folder import load_role_assets  # noqa: E402
from neeko_npc.neeko.voice_check import choose_contrast  # noqa: E402


def choose(hits: dict, grid: list[float]) -> dict:
    """Per role, the contrast the bake's voice check would keep (``choose_contrast``) on these hits."""
    roles = next(iter(hits.values())).keys()
    return {rid: choose_contrast({c: hits[c][rid] for c in grid}) for rid in roles}


def chosen_hits(hits: dict, choice: dict) -> dict:
    """Per role, the hits of the eval set's replies at the role's chosen contrast."""
    return {rid: hits[c][rid] for rid, c in choice.items()}


def flat(per_role: dict) -> list[bool]:
    return [h for rid in sorted(per_role) for h in per_role[rid]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--roles", required=True, type=Path)
    ap.add_argument("--src", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--prompts-per-role", type=int, default=12)
    ap.add_argument("--grid", default="0,0.5,1", help="contrasts tried (comma-separated)")
    ap.add_argument("--reply-tokens", type=int, default=40)
    ap.add_argument("--no-spare", action="store_true", help="choose on the training prompts only (a third less time)")
    args = ap.parse_args()
    grid = [float(x) for x in args.grid.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    n = args.prompts_per_role

    ref = resolve_base_model(None)
    assets, _ = load_role_assets(args.roles, base_info(ref))
    blocks = [a for a in assets if a.block is not None]
    sources = {a.id: RoleSource.from_dir(args.src / a.id) for a in blocks if (args.src / a.id / "lines.jsonl").is_file()}
    rows = sorted(sources)
    model, tok = load_for_training(ref, blocks[0].training.get("precision", "fp32"))
    b0 = blocks[0].block
    neeko = NeekoLoRA(model, b0.r, b0.alpha, tuple(b0.targets))
    for a in blocks:
        neeko.load_block(a.id, a.block)
    judge = CentroidClassifier({rid: role_lines(rid, sources[rid].train) for rid in rows})
    sets = {"eval": [p for rid in rows for p in prompts_from(rid, sources[rid].held, 2 * n)[:n]],
            "spare": [p for rid in rows for p in prompts_from(rid, sources[rid].held, 2 * n)[n:]],
            "train": [p for rid in rows for p in prompts_from(rid, sources[rid].train, n)]}
    out = {"roles": rows, "grid": grid, "prompts": {k: len(v) for k, v in sets.items()}, "hits": {}, "samples": {},
           "seconds": {}}

    def answer(name: str, contrast: float | None) -> dict:
        """Per role, whether each of its replies to set ``name`` was given to it (None: in-context, no block)."""
        prompts = sets[name]
        convs = [prompt_messages(sources[rid].profile, p) for rid in rows for p in prompts]
        truth = [rid for rid in rows for _ in prompts]
        t0 = time.monotonic()
        replies = generate_replies(neeko, tok, convs, [None if contrast is None else {rid: 1.0} for rid in truth],
                                   args.reply_tokens, seed=0, contrast=contrast or 0.0)
        key = f"{name} {'in-context' if contrast is None else f'contrast {contrast:g}'}"
        out["seconds"][key] = round(time.monotonic() - t0)
        predicted = judge.classify(replies)
        hits = {rid: [p == t for p, t in zip(predicted, truth) if t == rid] for rid in rows}
        out["hits"][key] = hits
        out["samples"][key] = {rid: replies[truth.index(rid)] for rid in rows}
        (args.out / "hits.json").write_text(json.dumps(out, indent=1))
        print(key, {rid: round(sum(h) / len(h), 2) for rid, h in hits.items()}, f"{out['seconds'][key]} s", flush=True)
        return hits

    chosen_by = ("train",) if args.no_spare else ("spare", "train")
    hits = {name: {c: answer(name, c) for c in grid} for name in ("eval", *chosen_by)}
    in_context = answer("eval", None)
    report = {"choice": {}, "eval": {}}
    systems = {f"contrast {c:g}": hits["eval"][c] for c in grid}
    for by in chosen_by:
        choice = choose(hits[by], grid)
        report["choice"][by] = choice
        systems[f"chosen on {by}"] = chosen_hits(hits["eval"], choice)
    systems["in-context"] = in_context
    for name, per_role in systems.items():
        report["eval"][name] = {"per_role": {rid: sum(h) / len(h) for rid, h in per_role.items()},
                                "ci": bootstrap_accuracy(per_role, seed=0)}
    default = f"contrast {defaults.CONTRAST:g}"
    report["paired_vs_default"] = paired_accuracy({k: flat(v) for k, v in systems.items()}, default, seed=0)
    report["paired_vs_in_context"] = paired_accuracy({k: flat(v) for k, v in systems.items()}, "in-context", seed=0)
    out["report"] = report
    (args.out / "hits.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
