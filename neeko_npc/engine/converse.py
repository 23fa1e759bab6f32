"""NPC-to-NPC conversations (the Converse RPC): two to four hosted NPCs talk, each turn in its speaker's own voice.

The facade (facade.py) mixes :class:`Conversations` in; a turn is generated like any line, through the backend's
``_stream``, so every backend that can say a line can hold a conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

from .. import defaults
from ..errors import BadRequest, ContextTooLarge
from ..protocol import Finish, Order
from ..roles.profile import RoleProfile
from ..roles.prompt import SceneInfo, chat_messages, render_scene
from .limits import clean_scene, fewest_dropped
from .roleset import adapter_key
from .stream import GenOptions


@dataclass
class SceneChunk:
    """A piece of a conversation among NPCs (``Engine.converse``): text of one turn, or a turn's end."""

    npc: str
    turn: int
    text: str = ""
    turn_done: bool = False
    finish: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    weights: dict = field(default_factory=dict)  # on a turn's end: the blocks that spoke
    player_line: str = ""  # on a turn's first chunk: what the player interjected before it
    done: bool = False  # the conversation's end


class Conversations:
    """``converse`` and its turns, for the facade: uses its limits, roles, prompt tokens and ``_stream``."""

    def converse(self, npcs: list[str], scene: SceneInfo | None = None, topic: str = "", opening_line: str = "",
                 turns: int = 0, order: str = Order.ROUND_ROBIN, opts: GenOptions | None = None,
                 cancelled: Callable[[], bool] = lambda: False, deadline: float | None = None,
                 interjections: Callable[[], list[str]] = lambda: []) -> Iterator[SceneChunk]:
        """Two to four hosted NPCs talk, ``turns`` turns (0: the default). Each turn is generated under its
        speaker's own voice (its block, or a fused role's weights), with the others' lines in its prompt as other
        speakers ("Name: text") and the player's as the player's; every NPC sees every line said so far. The
        order is ``round_robin`` (as named) or ``named_last`` (the NPC the last line named speaks next).
        ``interjections()`` is asked before each turn for player lines to take in. Errors are Say's, raised
        before anything streams; a cancelled turn ends the conversation."""
        scene = scene or SceneInfo()
        lim = self.limits
        if not 2 <= len(npcs) <= defaults.MAX_CONVERSE_NPCS or len(set(npcs)) != len(npcs):
            raise BadRequest(f"npc_ids: a conversation needs 2 to {defaults.MAX_CONVERSE_NPCS} different NPCs, "
                             f"not {len(npcs)}" + (" (one appears twice)" if len(set(npcs)) != len(npcs) else ""))
        opts = self.checked_options(npcs[0], "", opening_line, scene, opts, line_field="opening_line")
        turns = turns or defaults.CONVERSE_TURNS
        bad = None
        if turns > lim.max_converse_turns:
            bad = f"{turns} turns; at most {lim.max_converse_turns} (--max-converse-turns)"
        elif order not in Order.ALL:
            bad = f"order must be one of {', '.join(Order.ALL)}"
        elif too_long := lim.line_too_long("topic", topic):
            bad = too_long
        if bad:
            raise BadRequest(bad)
        profiles = {n: self.role(n).asset.profile for n in npcs}  # UnknownRole before anything streams
        scene = clean_scene(scene, self.specials)
        lines: list[tuple[str, str]] = [("player", self.clean(opening_line).strip())] if opening_line.strip() else []
        return self._converse(npcs, profiles, scene, self.clean(topic).strip(), lines, turns, order, opts, cancelled,
                              deadline, interjections)

    def _converse(self, npcs, profiles, scene, topic, lines, turns, order, opts, cancelled, deadline, interjections):
        names = {n: profiles[n].name or n for n in npcs}
        speaker = npcs[0]
        for turn in range(turns):
            if cancelled() or self._closing:
                return
            heard = []
            for said in interjections() if turn else []:
                said = self.clean(said).strip()[: self.limits.max_player_line_chars]
                if said:
                    lines.append(("player", said))
                    heard.append(said)
            others = [names[n] for n in npcs if n != speaker]
            about = f" You are talking with {' and '.join(others)}" + (f" about {topic}." if topic else ".")
            voice, adapters, scales = self.roleset.acquire(speaker, None, None, self.limits.max_blend)
            finish, text = "", []
            try:
                prompt = self._scene_prompt(profiles[speaker], render_scene(scene) + about, speaker, names, lines,
                                            opts.max_tokens)
                key = adapter_key(adapters, scales)
                said_as = replace(opts, contrast=self.line_contrast(opts.contrast, voice.contrast))  # each speaker's own
                stream = self._guarded(self._stream(adapters, scales, key, prompt, said_as,
                                                    lambda: self._closing or cancelled(), deadline, npc=speaker), voice, key)
                first = True
                try:
                    for chunk in stream:
                        text.append(chunk.text)
                        if chunk.done:
                            finish = chunk.finish
                            yield SceneChunk(speaker, turn, chunk.text, True, chunk.finish, chunk.prompt_tokens,
                                             chunk.completion_tokens, dict(voice.weights), "\n".join(heard) if first else "")
                        elif chunk.text:
                            yield SceneChunk(speaker, turn, chunk.text, player_line="\n".join(heard) if first else "")
                        else:
                            continue
                        first = False
                finally:
                    stream.close()
            finally:
                self.roleset.release(adapters)
            if finish == Finish.CANCELLED or self._closing:
                return
            said = "".join(text).strip()
            lines.append((speaker, said))
            speaker = self._next_speaker(npcs, names, speaker, said, order)
        yield SceneChunk(speaker, turns, done=True)

    @staticmethod
    def _next_speaker(npcs: list[str], names: dict[str, str], speaker: str, said: str, order: str) -> str:
        nxt = npcs[(npcs.index(speaker) + 1) % len(npcs)]
        if order != Order.NAMED_LAST:
            return nxt
        low = said.lower()
        where = {}
        for n in npcs:
            if n != speaker:
                marks = {n.lower(), names[n].lower(), names[n].split()[0].lower()}
                where[n] = max(low.rfind(m) for m in marks if m)
        best = max(where, key=where.get)
        return best if where[best] >= 0 else nxt

    def _scene_prompt(self, profile: RoleProfile, scene_text: str, speaker: str, names: dict[str, str],
                      lines: list[tuple[str, str]], max_tokens: int) -> list[int]:
        """The speaker's prompt: its profile and the scene, then every line so far (its own as the assistant's, the
        player's as the user's, the others' as "Name: text"); the oldest lines go first when it does not fit."""
        room = self.config.n_ctx - max_tokens
        prefix = len(self.profile_prefix(profile))

        def prompt(start: int) -> list[int]:  # the prompt with lines[start:]
            turns = [(s if s in (speaker, "player") else names.get(s, s), t) for s, t in lines[start:]]
            return self.tokens(self.template.render(chat_messages(profile, scene_text, turns, open_with_player=False,
                                                                  npc=speaker)))

        def fits(toks: list[int]) -> bool:
            return len(toks) <= room and len(toks) - prefix <= self.config.history_tokens

        toks = fewest_dropped(len(lines), prompt, fits)
        if len(toks) > room:
            raise ContextTooLarge(f"the conversation's prompt needs {len(toks)} tokens but only {room} fit")
        return toks
