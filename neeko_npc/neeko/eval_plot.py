"""`neeko-npc eval --plot`: the report as one PNG a designer reads at a glance. Needs matplotlib.

Left, the confusion matrix as a heat-map: held-out loss of each role's lines (rows) under each block and the
baselines (columns), every cell's value written in it and the lowest of each row boxed; a good role set has its
boxes on the diagonal. Right, attribution: each system's mean share of replies attributed to the right role, with
its bootstrap interval, and each role's share as a dot; real held-out lines give the ceiling.
"""

from __future__ import annotations

from pathlib import Path

from .evaluate import EvalReport


def plot(rep: EvalReport, path: str | Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'neeko-npc[bench]'") from None
    import numpy as np

    cols = list(rep.blocks) + ["in-context"] + (["shared LoRA"] if rep.shared else [])
    grid = np.array([row + [rep.in_context[rid]] + ([rep.shared[rid]] if rep.shared else [])
                     for rid, row in zip(rep.roles, rep.confusion)], dtype=float)
    a = rep.attribution
    fig, axes = plt.subplots(1, 2 if a else 1, figsize=(14 if a else 8, max(4.0, 1.5 + 0.6 * len(rep.roles))), squeeze=False)
    ax = axes[0, 0]
    im = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rep.roles)), rep.roles)
    ax.set_xlabel("block (or baseline)")
    ax.set_ylabel("whose held-out lines")
    for i in range(grid.shape[0]):
        best = int(np.argmin(grid[i, :len(rep.blocks)])) if rep.blocks else -1
        for j in range(grid.shape[1]):
            ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8,
                    color="white" if grid[i, j] > np.nanmean(grid) else "black")
        if best >= 0:
            ax.add_patch(Rectangle((best - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    n = len(rep.roles)
    ax.set_title(f"held-out loss (lower is better); own block lowest in {round(rep.diagonal_wins * n)}/{n} rows")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)

    if a:
        ax = axes[0, 1]
        systems = [("real lines", a["real_held_out_lines"], a.get("real_held_out_lines_ci"))]
        systems += [(name.replace("_", " "), v["per_role"], v.get("ci")) for name, v in a["systems"].items()]
        for x, (name, per_role, ci) in enumerate(systems):
            mean = float(np.mean(list(per_role.values()))) if per_role else float("nan")
            err = None
            if ci:
                lo, hi = ci["mean"]
                err = [[max(0.0, mean - lo) * 100], [max(0.0, hi - mean) * 100]]
            ax.bar(x, mean * 100, color="tab:gray" if x == 0 else "tab:blue", alpha=0.6, yerr=err, capsize=6)
            ax.scatter([x] * len(per_role), [v * 100 for v in per_role.values()], color="k", s=12, zorder=3)
        ax.axhline(100 / max(1, n), color="tab:red", linestyle="--", linewidth=1, label=f"chance (1 in {n})")
        ax.set_xticks(range(len(systems)), [s[0] for s in systems])
        ax.set_ylim(0, 105)
        ax.set_ylabel("attributed to the right role (%)")
        level = (a.get("real_held_out_lines_ci") or {}).get("level", 0.95)
        ax.set_title(f"attribution: mean with {level:.0%} interval, roles as dots ({a['prompts']} prompts a role)")
        ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
