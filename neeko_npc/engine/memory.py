"""Server-side conversation memory per (session, NPC)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from .. import defaults


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
