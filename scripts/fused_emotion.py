"""A study for docs/beats.md ("Fused roles"). Leave-one-out fusion, emotion only: each trained role rebuilt from
the other blocks (the eval's weights); on its annotated held-out lines, the emotion its mixed heads pick (asked
the seven emotions) against the emotion the beat question picked in the same eval (asked emotions and the role's
actions), the role's own majority class and the mixed roles' majority.

Usage: python3 scripts/fused_emotion.py EVAL_JSON OUT_JSON, EVAL_JSON from `neeko-npc eval --json` on assets/roles."""
import json
import sys
from collections import Counter
from pathlib import Path
import numpy as np
from neeko_npc.roles.base_model import resolve_base_model, base_info
from neeko_npc.roles.folder import load_role_assets
from neeko_npc.neeko.load_base import load_for_training
from neeko_npc.neeko.model import NeekoLoRA
from neeko_npc.neeko.bake import RoleSource
from neeko_npc.neeko.beat_head import line_states
from neeko_npc.roles.beats import MixedHead
from neeko_npc.roles.prompt import EMOTIONS, BeatAsk
from neeko_npc.neeko.intervals import paired_accuracy

rep = json.load(open(sys.argv[1]))
ref = resolve_base_model(None)
assets, _ = load_role_assets(Path("assets/roles"), base_info(ref))
blocks = [a for a in assets if a.block is not None]
by_id = {a.id: a for a in blocks}
model, tok = load_for_training(ref, "fp32")
b0 = blocks[0].block
neeko = NeekoLoRA(model, b0.r, b0.alpha, b0.targets)
for a in blocks:
    neeko.load_block(a.id, a.block)
truth, mixed_p, question_p, own_major, others_major = [], [], [], [], []
out = {}
for rid, f in rep["fusion"]["leave_one_out"].items():
    src = RoleSource.from_dir(Path("assets/roles/src") / rid)
    w = f["weights"]
    head = MixedHead.of([(by_id[b].beats, x) for b, x in w.items()])
    states = line_states(neeko, tok, src.profile, src.held, w)
    row = rep["fusion"]["beats"][rid]
    assert [s[1] for s in states] == [t[0] for t in row["truth"]]
    t = [s[1] for s in states]
    m = [head.choose(s[0], BeatAsk(EMOTIONS))[0].id for s in states]
    q = [p[0] for p in row["predicted"]["fused"]]
    own = row["majority"][0]  # the eval's: the most common emotion of the role's annotated training lines
    oth = Counter()
    for b, x in w.items():
        other = RoleSource.from_dir(Path("assets/roles/src") / b)
        c = Counter(x2.emotion for s in other.train for x2 in s.turns if x2.speaker == b and x2.emotion)
        for k, v in c.items():
            oth[k] += x * v / sum(c.values())
    oth_major = oth.most_common(1)[0][0]
    keep = [i for i, e in enumerate(t) if e]

    def acc(p):
        return float(np.mean([p[i] == t[i] for i in keep]))
    out[rid] = {"lines": len(keep), "mixed_heads": acc(m), "question": acc(q), "own_majority": acc([own] * len(t)),
                "mixed_roles_majority": acc([oth_major] * len(t))}
    print(rid, out[rid], flush=True)
    for i in keep:
        truth.append(t[i])
        mixed_p.append(m[i])
        question_p.append(q[i])
        own_major.append(own)
        others_major.append(oth_major)
pool = {"lines": len(truth)}
for name, p in (("mixed_heads", mixed_p), ("question", question_p), ("own_majority", own_major),
                ("mixed_roles_majority", others_major)):
    pool[name] = float(np.mean([a == b for a, b in zip(p, truth)]))
print("pooled", pool)
hits = {name: [a == b for a, b in zip(p, truth)] for name, p in
        (("mixed_heads", mixed_p), ("question", question_p), ("mixed_roles_majority", others_major))}
iv = paired_accuracy(hits, against="question")
print("paired against the question:", json.dumps(iv))
json.dump({"per_role": out, "pooled": pool, "against_question": iv}, open(sys.argv[2], "w"), indent=1)
