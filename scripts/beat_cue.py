"""Does the model read a line's emotion when asked after it? A short cue, on the shipped roles (docs/beats.md).

    python3 scripts/beat_cue.py --out beat_cue.json [--cue "In one word, how do you feel right now?"]

After each annotated line of each trained role (training and held-out scenes), the cue is put to the NPC as the
next user turn, and the next token's log-probabilities of each emotion word are read (its first token, lower-case
and capitalised: 14 numbers; no decode). Three readings, each under the role's own block and under the base model:

- ``zero``: the emotion whose two spellings are likeliest together;
- ``prior``: the same after subtracting each emotion's mean over the role's training lines (a language model used as
  a classifier leans toward its frequent answers; this takes the lean out);
- ``head``: the bake's classifier (neeko/beat_head.py ``fit_classifier``) on the 14 numbers of the training lines.

Scored on the held-out lines, pooled, beside the majority class of each role's training lines (paired bootstrap,
neeko/intervals.py). Served, a cue would cost the daemon about a dozen tokens read after the line (not built, so not
timed), where the beat question costs about a second."""
import argparse, json, sys, time
from collections import Counter
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from neeko_npc.neeko.bake import RoleSource
from neeko_npc.neeko.beat_head import annotated_scenes, fit_classifier
from neeko_npc.neeko.attribution import _ids
from neeko_npc.neeko.intervals import paired_accuracy
from neeko_npc.neeko.load_base import load_for_training
from neeko_npc.neeko.model import NeekoLoRA
from neeko_npc.roles.base_model import resolve_base_model
from neeko_npc.roles.folder import load_role_assets
from neeko_npc.roles.prompt import EMOTIONS
ap = argparse.ArgumentParser()
ap.add_argument("--out", type=Path, required=True)
ap.add_argument("--cue", default="In one word, how do you feel right now?")
ap.add_argument("--roles", type=Path, default=Path(__file__).resolve().parents[1] / "assets/roles")
args = ap.parse_args()
CUE, ROLES = args.cue, args.roles
SRC = ROLES / "src"

@torch.no_grad()
def feats(neeko, tok, profile, scenes, weights, first):
    w = None if weights is None else neeko.weights([weights])
    out = []
    for msgs, _, lines in annotated_scenes(tok, profile, scenes):
        for i, t in lines:
            if not t.emotion:
                continue
            ids = list(_ids(tok, msgs[:i + 1] + [{"role": "user", "content": CUE}]))[-1024:]
            with neeko.gate(w):
                h = neeko.model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[:, -1]
                lp = torch.log_softmax(neeko.model.lm_head(h).double(), -1)[0]
            out.append((lp[first].numpy(), t.emotion))
    return out

t0 = time.monotonic()
assets, _ = load_role_assets(ROLES)
blocks = [a for a in assets if a.block is not None and (SRC / a.id / "lines.jsonl").is_file()]
model, tok = load_for_training(resolve_base_model(None), "fp32")
first = [tok(v, add_special_tokens=False)["input_ids"][0] for e in EMOTIONS for v in (e, e.capitalize())]
print("first tokens", [tok.decode([f]) for f in first], flush=True)
neeko = NeekoLoRA(model, blocks[0].block.r, blocks[0].block.alpha, tuple(blocks[0].block.targets))
for a in blocks:
    neeko.load_block(a.id, a.block)
hits = {k: [] for k in ("own_zero", "own_prior", "own_head", "base_zero", "base_prior", "base_head", "majority")}
E = np.array(EMOTIONS)
def score(x):  # the two spellings of each emotion together
    return np.logaddexp(x[0::2], x[1::2])
for a in blocks:
    src = RoleSource.from_dir(SRC / a.id)
    for who, w in (("own", a.id), ("base", None)):
        tr = feats(neeko, tok, src.profile, src.train, w, first)
        he = feats(neeko, tok, src.profile, src.held, w, first)
        prior = np.mean([score(x) for x, _ in tr], 0)
        clf, lam = fit_classifier(np.stack([x for x, _ in tr]), [e for _, e in tr], tuple(EMOTIONS))
        for x, e in he:
            hits[f"{who}_zero"].append(E[np.argmax(score(x))] == e)
            hits[f"{who}_prior"].append(E[np.argmax(score(x) - prior)] == e)
            hits[f"{who}_head"].append(clf.classes[int(np.argmax(clf.W.astype(np.float64) @ x + clf.b))] == e)
        if who == "own":
            common = Counter(e for _, e in tr).most_common(1)[0][0]
            hits["majority"] += [common == e for _, e in he]
    print(a.id, round(time.monotonic() - t0), len(tr), len(he), {k: f"{np.mean(v):.2f}" for k, v in hits.items()}, flush=True)
rep = paired_accuracy(hits, "majority")
for n, s in rep["systems"].items():
    print(n, f"{s['accuracy']:.1%}", f"{s.get('difference', 0):+.1%}", s.get("difference_ci"))
args.out.write_text(json.dumps({"cue": CUE, **rep}, indent=1))
