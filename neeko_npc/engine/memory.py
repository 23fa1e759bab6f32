"""Server-side conversation memory per (session, NPC)."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections import OrderedDict

from .. import defaults


def _give_back() -> None:
    """Hand freed heap pages back to the system (glibc's malloc_trim): without it, text a client made the server
    remember stays in its resident memory after it is forgotten. Best effort: nothing elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Memory:
    """Server-side conversation memory per (session, npc): the last exchanges, LRU-bounded in conversations and,
    server-wide, in characters of remembered text.

    Trimming to a token budget happens at prompt time (the engine knows the tokenizer)."""

    GIVE_BACK_CHARS = 1 << 20  # forgetting at least this much text hands the pages back at once

    def __init__(self, max_conversations: int = defaults.MAX_CONVERSATIONS, max_turns: int = defaults.MAX_TURNS,
                 max_chars: int = defaults.MAX_MEMORY_CHARS):
        self.max_conversations = max_conversations
        self.max_turns = max_turns
        self.max_chars = max_chars
        self._data: OrderedDict[tuple[str, str], list[tuple[str, str]]] = OrderedDict()
        self._sizes: dict[tuple[str, str], int] = {}
        self.chars = 0  # remembered text, all conversations together
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
            self._resize((session, npc))
            freed = self._evict()
        if freed >= self.GIVE_BACK_CHARS:
            _give_back()

    def export(self, session: str) -> dict[str, list[tuple[str, str]]]:
        """Every NPC's exchanges in one session, oldest first (for a game's save file)."""
        with self._lock:
            return {npc: list(turns) for (s, npc), turns in self._data.items() if s == session}

    def restore(self, session: str, npcs: dict[str, list[tuple[str, str]]]) -> None:
        """Replace one session's memory with ``npcs`` (each list trimmed to the last ``max_turns``)."""
        with self._lock:
            freed = sum(self._drop(k) for k in [k for k in self._data if k[0] == session])
            for npc, turns in npcs.items():
                if turns:
                    self._data[(session, npc)] = list(turns)[-self.max_turns:]
                    self._resize((session, npc))
            freed += self._evict()
        if freed >= self.GIVE_BACK_CHARS:
            _give_back()

    def forget(self, session: str, npc: str = "") -> int:
        with self._lock:
            keys = [k for k in self._data if k[0] == session and (not npc or k[1] == npc)]
            freed = sum(self._drop(k) for k in keys)
        if freed >= self.GIVE_BACK_CHARS:
            _give_back()
        return len(keys)

    # -- bookkeeping, under the lock ------------------------------------------------------------------

    def _resize(self, key: tuple[str, str]) -> None:
        size = sum(len(a) + len(b) for a, b in self._data[key])
        self.chars += size - self._sizes.get(key, 0)
        self._sizes[key] = size

    def _drop(self, key: tuple[str, str]) -> int:
        del self._data[key]
        size = self._sizes.pop(key, 0)
        self.chars -= size
        return size

    def _evict(self) -> int:
        """Drop the least recently used conversations while over either bound; the characters freed."""
        freed = 0
        while self._data and (len(self._data) > self.max_conversations or self.chars > self.max_chars):
            freed += self._drop(next(iter(self._data)))
        return freed


class Sessions:
    """The facade's sessions (a game's save file): read, restore and forget what its NPCs remember. Uses the
    facade's limits, memory, tokens and cleaning."""

    def session(self, session: str) -> dict[str, list[tuple[str, str]]]:
        """Every NPC's remembered exchanges in one session, oldest first (for a game's save file)."""
        self.limits.check_session_id(session)
        return self.memory.export(session)

    def usable_history(self, turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The newest exchanges whose text alone fits the history budget (--history-tokens): older ones can never
        reach a prompt, so a restored session keeps no more than that (one token of slack per exchange for a BOS
        the tokenizer may add)."""
        kept, used = [], 0
        for said, replied in reversed(turns):
            used += len(self.tokens(said + "\n" + replied)) - 1
            if used > self.config.history_tokens:
                break
            kept.append((said, replied))
        return kept[::-1]

    def restore_session(self, session: str, npcs: list[tuple[str, list[tuple[str, str]]]]) -> int:
        """Put a saved session's memory back (checked against the limits, its text cleaned like any request's).
        Returns the exchanges restored."""
        self.limits.check_session(session, npcs, self.memory.max_turns)
        cleaned = {npc: self.usable_history([(self.clean(said), self.clean(replied)) for said, replied in turns])
                   for npc, turns in npcs}
        self.memory.restore(session, cleaned)
        return sum(len(t) for t in self.memory.export(session).values())

    def forget(self, session: str, npc_id: str = "") -> int:
        """Forget a session (or one NPC in it); returns the conversations dropped."""
        self.limits.check_session_id(session, npc_id)
        return self.memory.forget(session, npc_id)
