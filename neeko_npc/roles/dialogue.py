"""Dialogue data: JSONL of scenes, each a list of turns.

One scene per line::

    {"scene": "The forge, early morning. Rain on the roof.",
     "turns": [{"speaker": "player", "text": "Can you mend this blade?"},
               {"speaker": "blacksmith", "text": "Aye, leave it on the anvil."}]}

A turn whose ``speaker`` equals the role id is the NPC's own line: those are the
only tokens the model is trained on. Every other speaker (the player, other
NPCs) is context. ``scene`` is optional free text describing where and when.

Beats (optional): a scene may declare the ``actions`` the game offers in it, and
a turn may carry an ``emotion`` (one of roles/prompt.py's EMOTIONS) and an
``action`` (one of the scene's ids); the NPC's block then learns them too::

    {"scene": "The forge.", "actions": [{"id": "quote_price", "description": "tell what the work costs"}, "none"],
     "turns": [{"speaker": "player", "text": "Can you mend this blade?"},
               {"speaker": "blacksmith", "text": "Three silver.", "emotion": "neutral", "action": "quote_price"}]}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DialogueError
from .. import defaults
from .prompt import BEAT_ID_RE, EMOTIONS, Action

MAX_TURN_CHARS = 2000
MAX_SCENE_TURNS = defaults.MAX_SCENE_TURNS  # turns one training scene may hold


@dataclass(frozen=True)
class Turn:
    speaker: str
    text: str
    emotion: str = ""  # the beat of this line, when annotated
    action: str = ""


@dataclass(frozen=True)
class Scene:
    turns: tuple[Turn, ...]
    scene: str = ""
    actions: tuple[Action, ...] = ()  # what the game offers in this scene (the turns' actions are among them)

    def npc_lines(self, role_id: str) -> int:
        return sum(1 for t in self.turns if t.speaker == role_id)

    def key(self) -> str:
        """A stable content key: the held-out split and data hashes use it."""
        payload = json.dumps([self.scene, [(t.speaker, t.text) for t in self.turns]], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def parse_scene(obj: object, where: str) -> Scene:
    if not isinstance(obj, dict):
        raise DialogueError(f"{where}: each line must be a JSON object with 'turns'")
    turns = obj.get("turns")
    if not isinstance(turns, list) or not turns:
        raise DialogueError(f"{where}: 'turns' must be a non-empty list of {{speaker, text}}")
    if len(turns) > MAX_SCENE_TURNS:
        raise DialogueError(f"{where}: {len(turns)} turns; the limit is {MAX_SCENE_TURNS} per scene (split the scene)")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or not isinstance(t.get("speaker"), str) or not isinstance(t.get("text"), str):
            raise DialogueError(f"{where}: turn {i} must be an object with string 'speaker' and 'text'")
        text = t["text"].strip()
        if not text:
            raise DialogueError(f"{where}: turn {i} has empty text")
        if len(text) > MAX_TURN_CHARS:
            raise DialogueError(f"{where}: turn {i} has {len(text)} characters; the limit is {MAX_TURN_CHARS}")
        emotion, action = t.get("emotion", ""), t.get("action", "")
        if emotion and emotion not in EMOTIONS:
            raise DialogueError(f"{where}: turn {i} has emotion {str(emotion)[:40]!r}; use one of {', '.join(EMOTIONS)}")
        out.append(Turn(t["speaker"].strip(), text, emotion or "", action or ""))
    scene = obj.get("scene", "")
    if not isinstance(scene, str):
        raise DialogueError(f"{where}: 'scene' must be a string")
    actions = _actions(obj.get("actions", []), where)
    ids = {a.id for a in actions}
    for i, t in enumerate(out):
        if t.action and t.action not in ids:
            raise DialogueError(f"{where}: turn {i} has action {t.action[:40]!r}, which the scene's 'actions' do not declare"
                                + (f" ({', '.join(sorted(ids))})" if ids else ""))
    return Scene(tuple(out), scene.strip(), actions)


def _actions(raw: object, where: str) -> tuple[Action, ...]:
    """A scene's declared actions: each "id" or {"id": ..., "description": ...}."""
    if not isinstance(raw, list):
        raise DialogueError(f"{where}: 'actions' must be a list of ids or {{id, description}} objects")
    out = []
    for a in raw:
        aid, desc = (a, "") if isinstance(a, str) else (a.get("id"), a.get("description", "")) if isinstance(a, dict) else (None, None)
        if not isinstance(aid, str) or not BEAT_ID_RE.match(aid) or not isinstance(desc, str):
            raise DialogueError(f"{where}: action {str(a)[:60]!r} must be an id (a-z, 0-9, _; starting with a letter) or "
                                "{id, description}")
        if aid in {x.id for x in out}:
            raise DialogueError(f"{where}: action {aid!r} is declared twice")
        out.append(Action(aid, desc.strip()))
    return tuple(out)


def load_scenes(path: str | Path, role_id: str | None = None) -> list[Scene]:
    """Read a JSONL file. With ``role_id``, require that the role speaks in the file."""
    path = Path(path)
    if not path.is_file():
        raise DialogueError(f"{path}: file not found")
    scenes = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DialogueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            scenes.append(parse_scene(obj, f"{path}:{n}"))
    if not scenes:
        raise DialogueError(f"{path}: no scenes")
    if role_id is not None and not any(s.npc_lines(role_id) for s in scenes):
        speakers = sorted({t.speaker for s in scenes for t in s.turns})
        raise DialogueError(
            f"{path}: no turn has speaker {role_id!r} (the role id); speakers found: {', '.join(speakers)}"
        )
    return scenes


def split_holdout(scenes: list[Scene], fraction: float = defaults.HOLDOUT) -> tuple[list[Scene], list[Scene]]:
    """Deterministic scene-level split: a scene is held out by its content hash.

    The split does not depend on file order or a seed, so adding scenes never
    moves an old scene between train and held-out.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError("holdout fraction must be in [0, 1)")
    train, held = [], []
    for s in scenes:
        bucket = int(s.key()[:8], 16) / 0xFFFFFFFF
        (held if bucket < fraction else train).append(s)
    if fraction > 0 and not held and len(train) > 1:
        held.append(train.pop())
    return train, held


def data_hash(scenes: list[Scene]) -> str:
    """What the role was trained on: the scenes' keys, and their beats where annotated (a scene's key, and so
    its place in the split, does not change when beats are added)."""
    h = hashlib.sha256()
    for s in scenes:
        h.update(s.key().encode())
        beats = [(t.emotion, t.action) for t in s.turns]
        if s.actions or any(e or a for e, a in beats):
            h.update(json.dumps([[(a.id, a.description) for a in s.actions], beats]).encode())
    return h.hexdigest()
