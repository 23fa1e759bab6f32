"""Prompt assembly: profile + scene as system text, conversation memory, the model's own chat template.

The system text is built by ``RoleProfile.system_text``, the same function the
trainer uses, so a role is served exactly under the prompt it was trained on.
The scene goes at the end of the system text, after the stable profile, so a
changed time of day or mood still leaves the profile's tokens reusable in the
KV cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from .. import defaults
from ..roles.profile import RoleProfile

OPENING_LINE = "(The player approaches you.)"


@dataclass
class SceneInfo:
    location: str = ""
    time_of_day: str = ""
    weather: str = ""
    npc_mood: str = ""
    npc_activity: str = ""
    player_name: str = ""
    player_standing: str = ""
    recent_events: list[str] = field(default_factory=list)
    nearby_characters: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    def text_size(self) -> int:
        return (sum(len(v) for v in (self.location, self.time_of_day, self.weather, self.npc_mood, self.npc_activity,
                                     self.player_name, self.player_standing))
                + sum(len(x) for x in self.recent_events) + sum(len(x) for x in self.nearby_characters)
                + sum(len(k) + len(v) for k, v in self.facts.items()))


def render_scene(s: SceneInfo) -> str:
    """Scene context as short sentences; empty fields are left out."""
    parts = []
    where = ", ".join(x for x in (s.location, s.time_of_day, s.weather) if x)
    if where:
        parts.append(f"Scene: {where}.")
    if s.npc_mood or s.npc_activity:
        parts.append("You are " + " and ".join(x for x in (s.npc_mood, s.npc_activity) if x) + ".")
    if s.player_name:
        who = f"The player is {s.player_name}"
        parts.append(who + (f" ({s.player_standing})." if s.player_standing else "."))
    elif s.player_standing:
        parts.append(f"The player is {s.player_standing} to you.")
    if s.nearby_characters:
        parts.append("Nearby: " + ", ".join(s.nearby_characters) + ".")
    if s.recent_events:
        parts.append("Recently: " + " ".join(e.rstrip(".") + "." for e in s.recent_events))
    for k, v in sorted(s.facts.items()):
        parts.append(f"{k}: {v}.")
    return " ".join(parts)


class ChatTemplate:
    """The model's Jinja chat template (from its GGUF), rendered in a sandbox as transformers does."""

    def __init__(self, template: str, bos: str = "", eos: str = ""):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg):
            raise ValueError(msg)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        self.template = env.from_string(template)
        self.bos, self.eos = bos, eos

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.bos, eos_token=self.eos)


def build_messages(profile: RoleProfile, scene: SceneInfo, history: list[tuple[str, str]], player_line: str) -> list[dict]:
    msgs = [{"role": "system", "content": profile.system_text(render_scene(scene))}]
    for said, replied in history:
        msgs.append({"role": "user", "content": said})
        msgs.append({"role": "assistant", "content": replied})
    msgs.append({"role": "user", "content": player_line.strip() or OPENING_LINE})
    return msgs


class Memory:
    """Server-side conversation memory per (session, npc): the last exchanges, LRU-bounded.

    Trimming to a token budget happens at prompt time (the engine knows the tokenizer)."""

    def __init__(self, max_conversations: int = defaults.MAX_CONVERSATIONS, max_turns: int = defaults.MAX_TURNS):
        self.max_conversations = max_conversations
        self.max_turns = max_turns
        self._data: OrderedDict[tuple[str, str], list[tuple[str, str]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session: str, npc: str) -> list[tuple[str, str]]:
        if not session:
            return []
        with self._lock:
            turns = self._data.get((session, npc))
            if turns is None:
                return []
            self._data.move_to_end((session, npc))
            return list(turns)

    def add(self, session: str, npc: str, said: str, replied: str) -> None:
        if not session:
            return
        with self._lock:
            turns = self._data.setdefault((session, npc), [])
            turns.append((said, replied))
            del turns[: -self.max_turns]
            self._data.move_to_end((session, npc))
            while len(self._data) > self.max_conversations:
                self._data.popitem(last=False)

    def export(self, session: str) -> dict[str, list[tuple[str, str]]]:
        """Every NPC's exchanges in one session, oldest first (for a game's save file)."""
        with self._lock:
            return {npc: list(turns) for (s, npc), turns in self._data.items() if s == session}

    def restore(self, session: str, npcs: dict[str, list[tuple[str, str]]]) -> None:
        """Replace one session's memory with ``npcs`` (each list trimmed to the last ``max_turns``)."""
        with self._lock:
            for key in [k for k in self._data if k[0] == session]:
                del self._data[key]
            for npc, turns in npcs.items():
                if turns:
                    self._data[(session, npc)] = list(turns)[-self.max_turns:]
            while len(self._data) > self.max_conversations:
                self._data.popitem(last=False)

    def forget(self, session: str, npc: str = "") -> int:
        with self._lock:
            keys = [k for k in self._data if k[0] == session and (not npc or k[1] == npc)]
            for k in keys:
                del self._data[k]
            return len(keys)
