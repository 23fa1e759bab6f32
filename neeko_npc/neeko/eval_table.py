"""`neeko-npc eval`'s report as text tables (the JSON holds the same figures)."""

from __future__ import annotations

from .evaluate import EvalReport


def _pct(a: float, b: float) -> str:
    return f"{(a - b) / b:+.1%}" if b else "n/a"


def _interval(ci: list[float]) -> str:
    return f"{ci[0] * 100:.0f}-{ci[1] * 100:.0f}%"


def verdict(ci: list[float], above: str, below: str) -> str:
    """A paired difference called only beyond noise: ``above`` where its interval lies above 0, ``below`` where it
    lies below."""
    return f"{above}, beyond noise" if ci[0] > 0 else f"{below}, beyond noise" if ci[1] < 0 else "within noise"


def loop_verdict(ci: list[float]) -> str:
    """A paired difference in the share of replies that loop, against in-context's."""
    return verdict(ci, "more", "fewer")


def topic_difference(c: dict) -> str:
    """A paired difference in mean similarity to the line answered (``on_topic``), with its interval and the verdict."""
    lo, hi = c["difference_ci"]
    return f"{c['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}], " + verdict(c["difference_ci"], "nearer", "further")


def loop_difference(c: dict) -> str:
    """That difference (a paired_accuracy system) in points, with its interval and the verdict."""
    lo, hi = c["difference_ci"]
    return f"{100 * c['difference']:+.0f} points [{100 * lo:+.0f}, {100 * hi:+.0f}], " + loop_verdict(c["difference_ci"])


def report_table(rep: EvalReport) -> str:
    w = max(12, *(len(c) for c in rep.blocks))
    out = ["held-out loss of ROW's lines with COLUMN's block (* = lowest in the row)"]
    extra = ["in-context"] + (["shared LoRA"] if rep.shared else [])
    out.append(f"{'lines / block':<16}" + "".join(f"{c:>{w + 2}}" for c in rep.blocks + extra))
    for rid, row in zip(rep.roles, rep.confusion):
        best = min(range(len(row)), key=lambda i: row[i])
        cells = "".join(f"{(f'{v:.4f}' + ('*' if i == best else ' ')):>{w + 2}}" for i, v in enumerate(row))
        tail = f"{rep.in_context[rid]:>{w + 1}.4f} " + (f"{rep.shared[rid]:>{w + 1}.4f}" if rep.shared else "")
        out.append(f"{rid:<16}{cells}{tail}")
    n = len(rep.roles)
    out.append(f"\nown block lowest in {round(rep.diagonal_wins * n)}/{n} rows ({rep.diagonal_wins:.0%})")
    iv = rep.intervals.get("rows", {})
    if iv:
        out.append(f"own block minus the next best block and minus in-context, {rep.intervals['level']:.0%} intervals "
                   "(paired bootstrap over the row's held-out examples; below 0 all along: the lead is not noise)")
        for rid, v in iv.items():
            nxt = (f"{v['next_block']:<14} [{v['own_vs_next_block'][0]:+.3f}, {v['own_vs_next_block'][1]:+.3f}]"
                   if "next_block" in v else f"{'-':<14} {'':>16}")
            out.append(f"  {rid:<16}{nxt}   in-context [{v['own_vs_in_context'][0]:+.3f}, {v['own_vs_in_context'][1]:+.3f}]")
        clear = sum(v.get("own_vs_next_block", [0, 0])[1] < 0 for v in iv.values())
        out.append(f"  own block lowest beyond noise in {clear}/{len(iv)} rows; below in-context beyond noise in "
                   f"{sum(v['own_vs_in_context'][1] < 0 for v in iv.values())}/{len(iv)}")
    if rep.shared:
        beats = sum(rep.confusion[j][rep.blocks.index(r)] < rep.shared[r] for j, r in enumerate(rep.roles))
        sh = rep.forgetting.get("shared", {})
        scale = f", scale {sh['scale']:g}" if sh.get("scale") else ""
        out.append(f"own block below the shared LoRA (rank {sh.get('rank')}{scale}, same lines and epochs) in {beats}/{n} rows")

    f = rep.forgetting
    if f.get("neeko"):
        new = ", ".join(f["new_roles"]) or "nothing"
        same = sum(v["identical"] for v in f["neeko"].values())
        out.append(f"\nForgetting: old roles' held-out loss before and after adding {new}")
        out.append(f"  {'role':<16}{'neeko before':>14}{'after':>10}{'':>9}" + (f"{'shared before':>15}{'after':>10}{'':>9}" if "roles" in f.get("shared", {}) else ""))
        for rid, v in f["neeko"].items():
            line = f"  {rid:<16}{v['before']:>14.4f}{v['after']:>10.4f}{'same' if v['identical'] else _pct(v['after'], v['before']):>9}"
            s = f.get("shared", {}).get("roles", {}).get(rid)
            if s:
                line += f"{s['before']:>15.4f}{s['after']:>10.4f}{_pct(s['after'], s['before']):>9}"
            out.append(line)
        out.append(f"  neeko: identical in {same}/{len(f['neeko'])} roles"
                   + ("" if not f.get("neeko_after_shared_training") else
                      f"; still identical after the shared baseline's training: "
                      f"{sum(f['neeko_after_shared_training'].values())}/{len(f['neeko_after_shared_training'])}"))
        for rid, s in f.get("shared", {}).get("new_roles", {}).items():
            own = rep.confusion[rep.roles.index(rid)][rep.blocks.index(rid)] if rid in rep.roles else float("nan")
            out.append(f"  new role {rid}: shared LoRA {s['before']:.4f} -> {s['after']:.4f}, neeko's new block {own:.4f}")

    loo = rep.fusion.get("leave_one_out", {})
    if loo:
        out.append(f"\nFusion, leave-one-out: each role rebuilt from the other blocks (tau {rep.fusion['tau']}), no training")
        out.append(f"  {'role':<16}{'fused':>9}{'in-context':>12}{'own block':>11}  weights")
        for rid, v in loo.items():
            ws = ", ".join(f"{k} {x:.2f}" for k, x in sorted(v["weights"].items(), key=lambda kv: -kv[1]))
            out.append(f"  {rid:<16}{v['fused']:>9.4f}{v['in_context']:>12.4f}{v['own_block']:>11.4f}  {ws}")
        better = sum(v["fused"] < v["in_context"] for v in loo.values())
        out.append(f"  fused below in-context in {better}/{len(loo)} roles")
    for rid, v in rep.fusion.get("shipped", {}).items():
        out.append(f"  shipped fused role {rid}: fused {v['fused']:.4f}, in-context {v['in_context']:.4f}")

    a = rep.attribution
    if a:
        names = list(a["systems"])
        out.append(f"\nAttribution: {a['prompts']} held-out prompts answered by every role, each reply given to the nearest "
                   "role centroid of real lines (MiniLM)")
        if a.get("contrasts"):
            out.append("  neeko's replies decoded at contrast " + ", ".join(f"{c:g} ({rid})" for rid, c in a["contrasts"].items()))
        out.append(f"  {'role':<16}{'real lines':>12}" + "".join(f"{n:>13}" for n in names))
        for rid in rep.roles:
            out.append(f"  {rid:<16}{a['real_held_out_lines'].get(rid, float('nan')):>12.0%}"
                       + "".join(f"{a['systems'][n]['per_role'].get(rid, float('nan')):>13.0%}" for n in names))
        real_mean = sum(a["real_held_out_lines"].values()) / max(1, len(a["real_held_out_lines"]))
        out.append(f"  {'mean':<16}{real_mean:>12.0%}" + "".join(f"{a['systems'][n]['mean']:>13.0%}" for n in names))
        if "ci" in a["systems"].get("neeko", {}):
            cis = [a["real_held_out_lines_ci"]["mean"]] + [a["systems"][n]["ci"]["mean"] for n in names]
            level = a["real_held_out_lines_ci"]["level"]
            out.append(f"  {f'{level:.0%} interval':<16}" + "".join(f"{_interval(c):>{12 if i == 0 else 13}}" for i, c in enumerate(cis)))
            for c in a.get("comparisons", []):
                verdict = "the intervals separate" if c["separated"] else "within noise (the intervals overlap)"
                out.append(f"  neeko vs {c['b'].replace('_', ' ')}: {c['points']:+.0f} points, {verdict}")
        if "real_lines" in a:
            cols = [("real lines", a["real_lines"])] + [(n.replace("_", " "), a["systems"][n]) for n in names]
            out.append("  coherence: the base model's perplexity of each reply after its prompt (its own greedy replies "
                       "score lowest), words a reply, and the share of replies that say some 3 words twice")
            out.append("  " + "; ".join(f"{n} {c['base_perplexity']['value']:.1f} [{c['base_perplexity']['ci'][0]:.1f}-{c['base_perplexity']['ci'][1]:.1f}], "
                                      f"{c['mean_words']:.1f} words, {c.get('repeating', float('nan')):.0%} repeating" for n, c in cols))
        for n, c in a.get("loops_vs_in_context", {}).get("systems", {}).items():
            if "difference" in c:
                out.append(f"  replies that loop, {n.replace('_', ' ')} against in-context (paired): "
                           + loop_difference(c))
        topic = a.get("on_topic_vs_in_context", {})
        if topic:
            out.append(f"  on topic: the MiniLM cosine of a reply with the line it answers ({topic['items']} prompts that "
                       f"answer one): real lines {a['real_lines']['on_topic']:.3f}; "
                       + "; ".join(f"{n.replace('_', ' ')} {c['accuracy']:.3f}" for n, c in topic["systems"].items()))
            for n, c in topic["systems"].items():
                if "difference" in c:
                    out.append(f"  on topic, {n.replace('_', ' ')} against in-context (paired): " + topic_difference(c))
    if rep.beats:
        out.append("\nBeats: held-out annotated lines, the emotion and action each system picks (scored like the daemon) "
                   "beside the majority class of the role's training lines")
        out += _beat_table(rep.beats, rep.intervals.get("beats", {}))
    if rep.fusion.get("beats"):
        out.append("Beats of the leave-one-out fusions: each role rebuilt from the other blocks, as a fused role is "
                   "served (fused: the question under its weights; learned: the other roles' heads, mixed by them)")
        out += _beat_table(rep.fusion["beats"], rep.intervals.get("fused_beats", {}))
    if rep.seconds:
        out.append("\n" + ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in rep.seconds.items()))
    return "\n".join(out)


def _beat_table(beats: dict, pooled: dict) -> list[str]:
    out = []
    for kind in ("emotion", "action"):
        names = [n for n in next(iter(beats.values()))[kind] if n != "majority"] + ["majority"]
        out.append(f"  {kind:<16}{'lines':>7}" + "".join(f"{n.replace('_', ' '):>13}" for n in names))
        for rid, row in beats.items():
            if row["n"][kind]:
                out.append(f"  {rid:<16}{row['n'][kind]:>7}" + "".join(f"{_accuracy(row[kind].get(n)):>13}" for n in names))
        pool = pooled.get(kind)
        if pool:
            out.append(f"  {'pooled':<16}{pool['items']:>7}" + "".join(f"{_accuracy(pool['systems'][n]['accuracy']):>13}" for n in names))
            out.append("    against the majority class: " + "; ".join(
                f"{n.replace('_', ' ')} {v['difference']:+.0%} [{v['difference_ci'][0]:+.0%}, {v['difference_ci'][1]:+.0%}]"
                for n, v in pool["systems"].items() if n != "majority")
                + (f"; a 10-point difference needs about {pool['lines_for_10_points']} lines"
                   if "lines_for_10_points" in pool else ""))
    return out


def _accuracy(x) -> str:
    return "n/a" if x is None else f"{x:.0%}"
