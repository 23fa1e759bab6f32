"""A second reader of the beats: how far can anyone get on these labels? (docs/beats.md)

    python3 scripts/second_reader.py sheet --out sheet.tsv            # the held-out annotated lines, labels blank
    python3 scripts/second_reader.py score sheet.tsv --json out.json  # a filled sheet against the labels

``sheet`` writes every annotated line of the roles' held-out scenes (the bake's split) as a tab-separated row:
its key, the role, the actions the scene offers, what was said to the NPC just before, the NPC's line, and two
blank columns, emotion and action, for a reader who has not seen the labels. ``score`` reads a filled sheet
(rows left blank are skipped and counted), checks that every row is still the line it names, and scores the
reader's labels against the annotations beside the majority class of each role's training lines, on the same
lines, with paired bootstrap intervals (neeko/intervals.py): what a reader of the text gets, and so how much of
the labels the text carries. With ``--eval`` (a ``neeko-npc eval --json`` report of the same roles), the eval's
beat systems are scored on the same lines too (the learned head: ``learned``), paired with the reader.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neeko_npc.neeko.bake import RoleSource  # noqa: E402
from neeko_npc.neeko.intervals import paired_accuracy  # noqa: E402
from neeko_npc.roles.prompt import EMOTIONS  # noqa: E402

COLUMNS = ("key", "role", "actions", "heard", "line", "emotion", "action")
KINDS = ("emotion", "action")


def held_lines(src: RoleSource) -> list[dict]:
    """The role's annotated held-out lines, each with what was said just before it and the scene's actions."""
    out, role = [], src.profile.id
    for scene in src.held:
        heard = ""
        for t in scene.turns:
            if t.speaker != role:
                heard = f"{t.speaker}: {t.text}"
            elif t.emotion or t.action:
                out.append({"key": f"{role}:{len(out)}", "role": role, "actions": "/".join(a.id for a in scene.actions),
                            "heard": heard, "line": t.text, "emotion": t.emotion or "", "action": t.action or ""})
    return out


def majority(src: RoleSource, kind: str) -> str:
    labels = [getattr(t, kind) for s in src.train for t in s.turns if t.speaker == src.profile.id]
    return Counter(v for v in labels if v).most_common(1)[0][0]


def sources(src_dir: Path, roles: list[str] | None) -> list[RoleSource]:
    dirs = sorted(d for d in src_dir.iterdir() if (d / "lines.jsonl").is_file())
    return [RoleSource.from_dir(d) for d in dirs if roles is None or d.name in roles]


def write_sheet(srcs: list[RoleSource], out: Path) -> int:
    rows = [r for s in srcs for r in held_lines(s)]
    with out.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r[c] for c in COLUMNS[:5]] + ["", ""])
    return len(rows)


def eval_predictions(held: dict[str, list[dict]], report: dict) -> dict[str, dict[str, tuple[str, str]]]:
    """{system: {key: (emotion, action)}} from an eval report's beats, checked line for line against the labels
    (``held``: role id -> its held_lines)."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for rid, rows in held.items():
        beats = report["beats"].get(rid)
        if beats is None or [tuple(t) for t in beats["truth"]] != [(r["emotion"], r["action"]) for r in rows]:
            raise SystemExit(f"the eval report's beats for {rid} are not these held-out lines")
        for system, predicted in beats["predicted"].items():
            out.setdefault(system, {}).update({r["key"]: tuple(p) for r, p in zip(rows, predicted)})
    return out


def score(srcs: list[RoleSource], sheet: Path, eval_report: dict | None = None) -> dict:
    held = {s.profile.id: held_lines(s) for s in srcs}
    truth = {r["key"]: r for rows in held.values() for r in rows}
    systems = eval_predictions(held, eval_report) if eval_report else {}
    common = {s.profile.id: {k: majority(s, k) for k in KINDS} for s in srcs}
    with sheet.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    report = {"lines": len(rows), "blank": 0, "kinds": {}, "roles": {}}
    hits = {k: {"reader": [], "majority": [], **{f"eval {n}": [] for n in systems}} for k in KINDS}
    per_role: dict[str, Counter] = {}
    for row in rows:
        t = truth.get(row["key"])
        if t is None or t["line"] != row["line"]:
            raise SystemExit(f"{sheet}: row {row['key']!r} is not a held-out line of these roles as they are now "
                             "(a sheet is tied to the data it was written from: write a new one)")
        if not (row["emotion"] or row["action"]):
            report["blank"] += 1
            continue
        for k in KINDS:
            if not t[k]:
                continue
            if k == "emotion" and row[k] not in EMOTIONS or k == "action" and row[k] not in t["actions"].split("/"):
                raise SystemExit(f"{sheet}: row {row['key']}: {row[k]!r} is not one of the {k}s offered")
            hits[k]["reader"].append(row[k] == t[k])
            hits[k]["majority"].append(common[t["role"]][k] == t[k])
            for n, predicted in systems.items():
                hits[k][f"eval {n}"].append(predicted[row["key"]][KINDS.index(k)] == t[k])
            c = per_role.setdefault(t["role"], Counter())
            c[f"{k}_lines"] += 1
            c[f"{k}_reader"] += row[k] == t[k]
            c[f"{k}_majority"] += common[t["role"]][k] == t[k]
    for k in KINDS:
        report["kinds"][k] = paired_accuracy(hits[k], "majority")
        if systems:
            report.setdefault("against_reader", {})[k] = paired_accuracy(
                {n: h for n, h in hits[k].items() if n != "majority"}, "reader")
    report["roles"] = {r: dict(c) for r, c in sorted(per_role.items())}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=Path("assets/roles/src"))
    ap.add_argument("--roles", nargs="*", help="only these roles (default: every role folder with lines)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sh = sub.add_parser("sheet", help="write the blank sheet")
    sh.add_argument("--out", type=Path, required=True)
    sc = sub.add_parser("score", help="score a filled sheet")
    sc.add_argument("sheet", type=Path)
    sc.add_argument("--json", type=Path)
    sc.add_argument("--eval", type=Path, help="a `neeko-npc eval --json` report of these roles: its beats beside")
    args = ap.parse_args()
    srcs = sources(args.src, args.roles)
    if args.cmd == "sheet":
        print(f"wrote {write_sheet(srcs, args.out)} lines to {args.out}")
        return
    report = score(srcs, args.sheet, json.loads(args.eval.read_text()) if args.eval else None)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(f"{report['lines'] - report['blank']} lines read ({report['blank']} left blank)")
    for k in KINDS:
        print(f"{k} ({report['kinds'][k]['items']} lines): accuracy, and the difference from the majority class")
        for n, s in report["kinds"][k]["systems"].items():
            d = (f"   {s['difference']:+.0%} [{s['difference_ci'][0]:+.0%}, {s['difference_ci'][1]:+.0%}]"
                 if "difference" in s else "")
            print(f"  {n:22} {s['accuracy']:.0%} [{s['ci'][0]:.0%}, {s['ci'][1]:.0%}]{d}")


if __name__ == "__main__":
    main()
