"""Role profiles: who an NPC is.

A profile is the designer-facing description of a character. It is written as
JSON in our own format, or imported from a Character Card V2 file
(``"spec": "chara_card_v2"``). The same profile feeds three things:

* the profile embedding (the role's row in the gate),
* the system text the NPC speaks under, at training and at serving time,
* the ``.nrole`` asset, which carries it verbatim.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ProfileError

ROLE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")

# Limits that keep a hostile or broken profile from bloating prompts and assets.
MAX_FIELD_CHARS = 4000
MAX_EXAMPLE_LINES = 64


@dataclass
class RoleProfile:
    id: str
    name: str
    persona: str
    style: str = ""
    knowledge: str = ""
    example_lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not ROLE_ID_RE.match(self.id):
            raise ProfileError(
                f"role id {str(self.id)[:80]!r} is not valid: use 1-64 lowercase letters, digits, '_' or '-', "
                "starting with a letter or digit (for example 'blacksmith')"
            )
        for name in ("name", "persona", "style", "knowledge"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ProfileError(f"profile {self.id!r}: field {name!r} must be a string")
            if len(value) > MAX_FIELD_CHARS:
                raise ProfileError(
                    f"profile {self.id!r}: field {name!r} has {len(value)} characters; the limit is {MAX_FIELD_CHARS}"
                )
        if not self.name.strip():
            raise ProfileError(f"profile {self.id!r}: 'name' is empty")
        if not self.persona.strip():
            raise ProfileError(f"profile {self.id!r}: 'persona' is empty; describe who the character is")
        if not isinstance(self.example_lines, list) or not all(isinstance(x, str) for x in self.example_lines):
            raise ProfileError(f"profile {self.id!r}: 'example_lines' must be a list of strings")
        if len(self.example_lines) > MAX_EXAMPLE_LINES:
            raise ProfileError(
                f"profile {self.id!r}: {len(self.example_lines)} example lines; the limit is {MAX_EXAMPLE_LINES}"
            )
        long = next((x for x in self.example_lines if len(x) > MAX_FIELD_CHARS), None)
        if long is not None:
            raise ProfileError(f"profile {self.id!r}: an example line has {len(long)} characters; the limit is {MAX_FIELD_CHARS}")

    # -- text views -------------------------------------------------------------

    def embedding_text(self) -> str:
        """The text the profile encoder sees: everything that defines the character."""
        parts = [f"{self.name}. {self.persona}"]
        if self.style:
            parts.append(f"Speaking style: {self.style}")
        if self.knowledge:
            parts.append(f"Knows about: {self.knowledge}")
        if self.example_lines:
            parts.append("Says things like: " + " ".join(self.example_lines[:8]))
        return "\n".join(parts)

    def system_text(self, scene: str = "") -> str:
        """The system prompt the NPC speaks under. ``scene`` is rendered scene context."""
        lines = [f"You are {self.name}. {self.persona}"]
        if self.style:
            lines.append(f"Speaking style: {self.style}")
        if self.knowledge:
            lines.append(f"You know about: {self.knowledge}")
        if scene:
            lines.append(scene)
        lines.append(f"Stay in character. Reply as {self.name} with one short spoken line.")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<profile>") -> "RoleProfile":
        if not isinstance(data, dict):
            raise ProfileError(f"{source}: a profile must be a JSON object")
        if data.get("spec") == "chara_card_v2":
            return cls._from_chara_card_v2(data, source)
        missing = [k for k in ("id", "name", "persona") if k not in data]
        if missing:
            raise ProfileError(
                f"{source}: missing field(s) {', '.join(missing)}; a profile needs id, name and persona "
                "(docs/making-roles.md: 'Role profile format')"
            )
        known = {"id", "name", "persona", "style", "knowledge", "example_lines"}
        extra = sorted(set(data) - known)
        if extra:
            raise ProfileError(f"{source}: unknown field(s) {', '.join(extra)}; allowed: {', '.join(sorted(known))}")
        try:
            return cls(**{k: data[k] for k in known if k in data})
        except ProfileError as exc:
            raise ProfileError(f"{source}: {exc}") from None

    @classmethod
    def _from_chara_card_v2(cls, card: dict, source: str) -> "RoleProfile":
        d = card.get("data")
        if not isinstance(d, dict) or not d.get("name"):
            raise ProfileError(f"{source}: a chara_card_v2 needs a 'data' object with a 'name'")
        name = str(d["name"]).strip()
        ext = d.get("extensions") if isinstance(d.get("extensions"), dict) else {}
        neeko_ext = ext.get("neeko_npc") if isinstance(ext.get("neeko_npc"), dict) else {}
        role_id = neeko_ext.get("id") or _slug(name)
        persona = " ".join(x for x in (str(d.get("description", "")).strip(), str(d.get("personality", "")).strip()) if x)
        examples = _card_example_lines(str(d.get("mes_example", "")), name)
        first = str(d.get("first_mes", "")).strip()
        if first:
            examples.insert(0, first.replace("{{char}}", name))
        try:
            return cls(
                id=role_id,
                name=name,
                persona=persona[:MAX_FIELD_CHARS] or f"{name}.",
                style=str(neeko_ext.get("style", "")),
                knowledge=str(d.get("scenario", ""))[:MAX_FIELD_CHARS],
                example_lines=examples[:MAX_EXAMPLE_LINES],
            )
        except ProfileError as exc:
            raise ProfileError(f"{source}: {exc}") from None


def _slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return (s or "role")[:64]


def _card_example_lines(mes_example: str, name: str) -> list[str]:
    """Pull the character's own lines out of a card's ``mes_example`` block."""
    out = []
    for raw in mes_example.splitlines():
        line = raw.strip().replace("{{char}}", name)
        for prefix in (f"{name}:", "{{char}}:"):
            if line.startswith(prefix):
                text = line[len(prefix):].strip()
                if text:
                    out.append(text)
    return out


def load_profile(path: str | Path) -> RoleProfile:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{path}: not valid UTF-8 JSON ({exc})") from None
    return RoleProfile.from_dict(data, source=str(path))
