"""The beat question with each candidate's prior under the same prompt subtracted (docs/beats.md).

    python3 scripts/beat_question_prior.py --out beat_question_prior.json     # an hour here, beside other jobs

A language model asked to classify leans toward the answers it finds likely whatever the input (Zhao et al.,
"Calibrate Before Use", 2021). For each annotated held-out line of the shipped roles, the beat question is read
exactly as the daemon reads it (neeko/data.py ``beat_prompt_ids``; roles/beats.py ``choose``: every candidate's
log-probability with the first token of what follows it), once after the real line and once after each
content-free line ("N/A" and an empty line) in the same place, the same scene and turns before it. The calibrated
pick is

    argmax_c  log p(c | line) - mean over the content-free lines x of log p(c | x)

and the action is then scored after that emotion, calibrated the same way. Both the plain pick (the eval's "beat
question") and the calibrated one, under the role's own block and under the base model (in-context), pooled over
every annotated held-out line, beside the majority class of each role's training lines (paired bootstrap,
neeko/intervals.py).
"""
import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from neeko_npc.neeko.bake import RoleSource  # noqa: E402
from neeko_npc.neeko.beat_eval import TorchScorer, shared_head  # noqa: E402
from neeko_npc.neeko.data import beat_items, beat_prompt_ids, piece_ids  # noqa: E402
from neeko_npc.neeko.intervals import paired_accuracy  # noqa: E402
from neeko_npc.neeko.load_base import load_for_training  # noqa: E402
from neeko_npc.neeko.model import NeekoLoRA  # noqa: E402
from neeko_npc.roles.base_model import resolve_base_model  # noqa: E402
from neeko_npc.roles.folder import load_role_assets  # noqa: E402
from neeko_npc.roles.beats import candidate_tokens  # noqa: E402
from neeko_npc.roles.prompt import ACTION_PIECE, EMOTION_PIECE  # noqa: E402

CONTENT_FREE = ("N/A", "")


def read(neeko, tok, item, systems: list, piece, end) -> list[dict]:
    """Plain and calibrated (emotion, action) picks of one line under each of ``systems`` (a role id, or None for
    the base model), the systems rows of one batch. The line and its content-free stand-ins share the prompt up to
    the line, which is read once."""
    ids = [beat_prompt_ids(tok, replace(item, line=line)) for line in (item.line, *CONTENT_FREE)]
    head = shared_head(ids)
    R = len(systems)
    root = TorchScorer(neeko, systems)
    if head:
        root.extend_rows([ids[0][:head]] * R)
    states = []
    for v in ids:
        s = root.fork()
        states.append((s, s.extend_rows([v[head:]] * R)))
    out = [{"plain": [], "calibrated": []} for _ in range(R)]
    emotions, actions = list(item.ask.emotions), [x.id for x in item.ask.actions]
    if emotions:  # as roles/beats.py ``choose`` scores them
        after = piece(ACTION_PIECE) if actions else end
        scores = []  # [variant][row] -> log-probabilities of the emotions
        for s, _ in states:
            f = s.fork()
            lg = f.extend_rows([piece(EMOTION_PIECE)] * R)
            scores.append(np.array(f.continuations_rows(lg, [candidate_tokens(piece, emotions, after)] * R)))
        for r in range(R):
            prior = np.mean([sc[r] for sc in scores[1:]], 0)
            out[r]["plain"].append(emotions[int(np.argmax(scores[0][r]))])
            out[r]["calibrated"].append(emotions[int(np.argmax(scores[0][r] - prior))])
    else:
        for r in range(R):
            out[r]["plain"].append("")
            out[r]["calibrated"].append("")
    for how in ("plain", "calibrated"):
        if not actions:
            for r in range(R):
                out[r][how].append("")
            continue
        heads = [piece(EMOTION_PIECE) + piece(" " + out[r][how][0]) + piece(ACTION_PIECE) if emotions
                 else piece(ACTION_PIECE.lstrip()) for r in range(R)]  # the action is scored after the emotion
        scores = []
        for s, _ in states:
            f = s.fork()
            lg = f.extend_rows(heads)
            scores.append(np.array(f.continuations_rows(lg, [candidate_tokens(piece, actions, end)] * R)))
        for r in range(R):
            pick = scores[0][r] if how == "plain" else scores[0][r] - np.mean([sc[r] for sc in scores[1:]], 0)
            out[r][how].append(actions[int(np.argmax(pick))])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--roles", type=Path, default=Path(__file__).resolve().parents[1] / "assets/roles")
    ap.add_argument("--max-lines", type=int, default=0, help="the first N annotated held-out lines a role (0: all)")
    a = ap.parse_args()
    src_dir = a.roles / "src"
    assets, _ = load_role_assets(a.roles)
    blocks = [x for x in assets if x.block is not None and (src_dir / x.id / "lines.jsonl").is_file()]
    model, tok = load_for_training(resolve_base_model(None), "fp32")
    neeko = NeekoLoRA(model, blocks[0].block.r, blocks[0].block.alpha, tuple(blocks[0].block.targets))
    for x in blocks:
        neeko.load_block(x.id, x.block)
    piece = lambda text: piece_ids(tok, text)  # noqa: E731
    end = piece_ids(tok, tok.eos_token)
    hits = {kind: {} for kind in ("emotion", "action")}
    t0 = time.monotonic()
    for x in blocks:
        src = RoleSource.from_dir(src_dir / x.id)
        held = [it for s in src.held for it in beat_items(src.profile, s)]
        held = held[:a.max_lines] if a.max_lines else held
        train = [it for s in src.train for it in beat_items(src.profile, s)]
        got_rows = [read(neeko, tok, it, [x.id, None], piece, end) for it in held]
        for r, who in enumerate(("own block", "base model")):
            got = [g[r] for g in got_rows]
            for k, kind in enumerate(("emotion", "action")):
                for how in ("plain", "calibrated"):
                    hits[kind].setdefault(f"{who}, {how}", []).extend(
                        g[how][k] == getattr(it, kind) for g, it in zip(got, held) if getattr(it, kind))
        for kind in ("emotion", "action"):
            common = Counter(getattr(it, kind) for it in train if getattr(it, kind)).most_common(1)
            hits[kind].setdefault("majority", []).extend(
                common[0][0] == getattr(it, kind) for it in held if getattr(it, kind))
        print(f"{x.id}: {len(held)} lines, {time.monotonic() - t0:.0f} s", flush=True)
    report = {"content_free": list(CONTENT_FREE), "seconds": time.monotonic() - t0}
    for kind, h in hits.items():
        report[kind] = paired_accuracy(h, "majority")
        print(f"{kind} ({report[kind]['items']} lines): accuracy, and against the majority [95% paired interval]")
        for name, v in report[kind]["systems"].items():
            ci = v.get("difference_ci")
            diff = f"  {100 * v['difference']:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""
            print(f"  {name:<26} {100 * v['accuracy']:5.1f}%{diff}")
    a.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
