"""How loud a voice reaches the words: `neeko-npc eval` once per way of decoding the blocks' replies (own-block
strength, contrast with the base model, reply length), on one role set, one row at a time, each row written to
OUT/sweep.md and OUT/sweep.json as soon as it is done (a half-finished sweep keeps its rows).

    python3 scripts/voice_sweep.py --roles /tmp/out-qkvo/roles --src corpora/shakespeare --out /tmp/voice-sweep
    python3 scripts/voice_sweep.py ... --only "strength 1.5"
    python3 scripts/voice_sweep.py --roles assets/roles --src assets/roles/src --prompts-per-role 10 --out /tmp/village \
        --only plain --only "contrast 1.0"

Every row: `eval --quick --no-shared --prompts-per-role 6` (or --prompts-per-role N; the same held-out prompts and seeds
in every row) plus its own flags, which name the contrast, so a row means the same whatever eval's default is. Attribution is the share of replies given to their own role by the nearest centroid of real lines;
coherence is the base model's perplexity of the replies after their prompts and the share of replies that loop, the
latter against in-context's with a paired interval (docs/corpora.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neeko_npc.neeko.eval_table import loop_difference  # noqa: E402

COMMON = ["--quick", "--no-shared", "--quiet"]
ROWS = {
    "plain": ["--contrast", "0"],
    "strength 1.5": ["--contrast", "0", "--strength", "1.5"],
    "contrast 0.5": ["--contrast", "0.5"],
    "contrast 1.0": ["--contrast", "1.0"],
    "strength 2.0": ["--contrast", "0", "--strength", "2.0"],
    "contrast 2.0": ["--contrast", "2.0"],
    "40 tokens": ["--contrast", "0", "--reply-tokens", "40"],
}


def row_of(name: str, flags: list[str], rep: dict, seconds: float) -> dict:
    a = rep["attribution"]
    blocks, inctx = a["systems"]["neeko"], a["systems"]["in_context"]
    real_mean = sum(a["real_held_out_lines"].values()) / len(a["real_held_out_lines"])
    verdict = {c["b"]: c for c in a["comparisons"]}
    return {"row": name, "flags": " ".join(flags), "seconds": round(seconds),
            "blocks": blocks["mean"], "blocks_ci": blocks["ci"]["mean"], "in_context": inctx["mean"],
            "in_context_ci": inctx["ci"]["mean"], "real": real_mean, "real_ci": a["real_held_out_lines_ci"]["mean"],
            "vs_in_context": verdict["in_context"], "vs_real": verdict["real_held_out_lines"],
            "ppl_blocks": blocks["base_perplexity"], "ppl_in_context": inctx["base_perplexity"],
            "ppl_real": a["real_lines"]["base_perplexity"], "words_blocks": blocks["mean_words"],
            "words_in_context": inctx["mean_words"], "words_real": a["real_lines"]["mean_words"],
            "repeating": [x.get("repeating", float("nan")) for x in (blocks, inctx, a["real_lines"])],
            "loops_vs_in_context": a.get("loops_vs_in_context", {}).get("systems", {}).get("neeko"),
            "sample": {rid: s.get("neeko", "") for rid, s in list(a["samples"].items())[:2]}}


def loops(d: dict | None) -> str:
    """The paired difference in the share of replies that loop, and whether it is worse beyond noise."""
    return loop_difference(d) if d else "n/a"


def markdown(rows: list[dict]) -> str:
    pct = lambda x, ci: f"{x:.0%} [{ci[0]:.0%}-{ci[1]:.0%}]"  # noqa: E731
    ppl = lambda p: f"{p['value']:.1f} [{p['ci'][0]:.1f}-{p['ci'][1]:.1f}]"  # noqa: E731
    out = ["| row | blocks | in-context | real lines | blocks vs in-context | base perplexity: blocks / in-context / real "
           "| words: blocks / in-context / real | repeating: blocks / in-context / real | repeating, blocks against "
           "in-context (paired) | time |", "|" + "---|" * 10]
    for r in rows:
        vs = r["vs_in_context"]
        out.append(f"| {r['row']} | {pct(r['blocks'], r['blocks_ci'])} | {pct(r['in_context'], r['in_context_ci'])} | "
                   f"{pct(r['real'], r['real_ci'])} | {vs['points']:+.0f}, {'separated' if vs['separated'] else 'within noise'} | "
                   f"{ppl(r['ppl_blocks'])} / {ppl(r['ppl_in_context'])} / {ppl(r['ppl_real'])} | "
                   f"{r['words_blocks']:.1f} / {r['words_in_context']:.1f} / {r['words_real']:.1f} | "
                   + " / ".join("n/a" if x != x else f"{x:.0%}" for x in r.get("repeating", [float("nan")] * 3))
                   + f" | {loops(r.get('loops_vs_in_context'))} | {r['seconds']} s |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--roles", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--only", action="append", help="run only this row (repeatable)")
    ap.add_argument("--prompts-per-role", type=int, default=6)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    done = json.loads((args.out / "sweep.json").read_text()) if (args.out / "sweep.json").is_file() else []
    for name, flags in ROWS.items():
        if (args.only and name not in args.only) or any(r["row"] == name for r in done):
            continue
        js = args.out / f"{name.replace(' ', '_').replace(',', '').replace('(', '').replace(')', '')}.json"
        cmd = ["neeko-npc", "eval", "--roles", args.roles, "--src", args.src, *COMMON, "--prompts-per-role", str(args.prompts_per_role), *flags, "--json", str(js)]
        print("$", " ".join(cmd), flush=True)
        t0 = time.monotonic()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            sys.exit(f"row {name!r} failed (exit {proc.returncode})")
        done.append(row_of(name, flags, json.loads(js.read_text()), time.monotonic() - t0))
        (args.out / "sweep.json").write_text(json.dumps(done, indent=2))
        (args.out / "sweep.md").write_text(markdown(done))
        print(markdown(done), flush=True)


if __name__ == "__main__":
    main()
