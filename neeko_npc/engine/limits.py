"""What a request may hold, and how its text is cleaned before it reaches a prompt.

    Limits                 every limit a request is checked against, each a `serve` flag (defaults.py)
    clean(text, specials)  game text with every control-token spelling removed (clean_profile, clean_scene)
    fewest_dropped         a prompt that fits, dropping as few of its oldest items as it can

The facade (facade.py) checks every request here before it pins a voice; the service never checks anything.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from typing import Callable

from .. import defaults
from ..errors import BadRequest, InvalidBlend
from ..roles.profile import ROLE_ID_RE, RoleProfile
from ..roles.prompt import BEAT_ID_RE, EMOTIONS, Action, BeatAsk, SceneInfo
from .stream import GenOptions


def check_procedural(blend, profile) -> None:
    """The one rule for a procedural NPC: it names both a blend and a profile, a hosted role neither."""
    if (blend is None) != (profile is None):
        raise InvalidBlend("a procedural NPC needs both `profile` and `blend`; for a hosted role, leave both empty")


@dataclass
class Limits:
    """Every limit a request is checked against, each a `serve` flag (see defaults.py)."""

    max_player_line_chars: int = defaults.MAX_PLAYER_LINE_CHARS
    max_scene_chars: int = defaults.MAX_SCENE_CHARS
    max_profile_chars: int = defaults.MAX_PROFILE_CHARS
    max_id_chars: int = defaults.MAX_ID_CHARS
    max_stop_strings: int = defaults.MAX_STOP_STRINGS
    max_stop_chars: int = defaults.MAX_STOP_CHARS
    max_session_npcs: int = defaults.MAX_SESSION_NPCS
    max_npc_line_chars: int = defaults.MAX_NPC_LINE_CHARS
    max_tokens_limit: int = defaults.MAX_TOKENS_LIMIT  # the largest max_tokens a request may ask for
    default_max_tokens: int = defaults.MAX_TOKENS  # a request's max_tokens when it leaves it at 0
    max_blend: int = defaults.TOP_K  # roles a procedural NPC may mix, and blocks that may result
    max_actions: int = defaults.MAX_ACTIONS  # actions a request may declare for its beat
    max_converse_turns: int = defaults.MAX_CONVERSE_TURNS
    max_interjections: int = defaults.MAX_INTERJECTIONS  # player lines a Converse may send before one turn
    max_action_chars: int = defaults.MAX_ACTION_CHARS

    def check_say(self, npc_id: str, session: str, player_line: str, scene: SceneInfo, opts: GenOptions,
                  line_field: str = "player_line") -> GenOptions:
        """The request's options with max_tokens filled in; BadRequest names the first limit it breaks (the line
        by ``line_field``: a Converse's is its opening_line)."""
        if opts.max_tokens <= 0:
            opts = replace(opts, max_tokens=self.default_max_tokens)
        opts = replace(opts, stop=tuple(opts.stop))
        bad = None
        if not npc_id:
            bad = "npc_id is required"
        elif len(npc_id) > self.max_id_chars or len(session) > self.max_id_chars:
            bad = f"npc_id and session_id are limited to {self.max_id_chars} characters"
        elif too_long := self.line_too_long(line_field, player_line):
            bad = too_long
        elif scene.text_size() > self.max_scene_chars:
            bad = f"scene context has {scene.text_size()} characters; the limit is {self.max_scene_chars} (--max-scene-chars)"
        elif opts.max_tokens > self.max_tokens_limit:
            bad = f"max_tokens {opts.max_tokens} is over the limit of {self.max_tokens_limit} (--max-tokens-limit)"
        elif not 0 <= opts.temperature <= 2:
            bad = "temperature must be between 0 and 2"
        elif not 0 < opts.top_p <= 1:
            bad = "top_p must be in (0, 1]"
        elif len(opts.stop) > self.max_stop_strings or any(len(x) > self.max_stop_chars for x in opts.stop):
            bad = f"at most {self.max_stop_strings} stop strings of at most {self.max_stop_chars} characters"
        if bad:
            raise BadRequest(bad)
        return opts

    def line_too_long(self, field: str, line: str) -> str:
        """What is wrong with a line of player text (a player line, an opening line, a topic, an interjection)
        over --max-player-line-chars, named by its ``field``; "" when it fits."""
        if len(line) <= self.max_player_line_chars:
            return ""
        return f"{field} has {len(line)} characters; the limit is {self.max_player_line_chars} (--max-player-line-chars)"

    def check_interjection(self, line: str, pending: int) -> str:
        """What is wrong with a player line sent into a running Converse when ``pending`` lines already wait for
        the next turn; "" when nothing is."""
        too_long = self.line_too_long("player_line (an interjection)", line)
        if too_long:
            return too_long
        if pending >= self.max_interjections:
            return (f"more than {self.max_interjections} player lines before one turn (--max-interjections); "
                    "send the next after the NPCs have spoken")
        return ""

    def check_beats(self, ask: BeatAsk, specials: tuple[str, ...] = ()) -> BeatAsk:
        """A request's beat ask, cleaned (duplicates are errors, descriptions have no control tokens: module
        ``clean`` with the engine's ``specials``); BadRequest names the first problem."""
        bad = None
        if len(set(ask.emotions)) != len(ask.emotions) or any(e not in EMOTIONS for e in ask.emotions):
            bad = f"emotions must be distinct and among {', '.join(EMOTIONS)}"
        elif len(ask.actions) > self.max_actions:
            bad = f"{len(ask.actions)} actions; at most {self.max_actions} may be declared (--max-actions)"
        elif len({a.id for a in ask.actions}) != len(ask.actions):
            bad = "action ids must be distinct"
        else:
            for a in ask.actions:
                if not BEAT_ID_RE.match(a.id):
                    bad = f"action id {a.id[:60]!r} must be 1 to 40 of a-z, 0-9 and _, starting with a letter"
                elif len(a.description) > self.max_action_chars:
                    bad = f"action {a.id!r} has a description of {len(a.description)} characters; the limit is {self.max_action_chars}"
                if bad:
                    break
        if bad:
            raise BadRequest(bad)
        return BeatAsk(tuple(ask.emotions), tuple(Action(a.id, clean(a.description, specials).strip()) for a in ask.actions))

    def profile(self, npc_id: str, name: str, persona: str, style: str = "", knowledge: str = "",
                example_lines: list[str] = ()) -> RoleProfile:
        """A procedural NPC's profile, checked against --max-profile-chars before anything else."""
        size = sum(len(x) for x in (name, persona, style, knowledge, *example_lines))
        if size > self.max_profile_chars:
            raise BadRequest(f"profile has {size} characters; the limit is {self.max_profile_chars} (--max-profile-chars)")
        return RoleProfile(id=npc_id, name=name, persona=persona, style=style, knowledge=knowledge,
                           example_lines=list(example_lines))

    def check_session_id(self, session: str, npc_id: str = "") -> None:
        """The ids of GetSession, ForgetSession and RestoreSession: the same rule as every other request's."""
        if not session or len(session) > self.max_id_chars:
            raise BadRequest(f"session_id is required and limited to {self.max_id_chars} characters")
        if npc_id and not ROLE_ID_RE.match(npc_id):
            raise BadRequest(f"npc_id {npc_id[:80]!r} is not a valid NPC id")

    def check_session(self, session: str, npcs: list[tuple[str, list[tuple[str, str]]]], max_turns: int) -> None:
        """A saved session sent back by the game: BadRequest names the first problem."""
        bad = None
        self.check_session_id(session)
        if len(npcs) > self.max_session_npcs:
            bad = f"the session holds {len(npcs)} NPCs; at most {self.max_session_npcs} may be restored"
        seen: set[str] = set()
        for npc_id, turns in npcs if bad is None else ():
            if not ROLE_ID_RE.match(npc_id):
                bad = f"npc_id {npc_id[:80]!r} is not a valid NPC id"
            elif npc_id in seen:
                bad = f"npc_id {npc_id!r} appears twice"
            elif len(turns) > max_turns:
                bad = f"{npc_id!r} has {len(turns)} exchanges; the daemon keeps at most {max_turns}"
            elif any(len(a) > self.max_player_line_chars or len(b) > self.max_npc_line_chars for a, b in turns):
                bad = (f"a line of {npc_id!r} is over the limit ({self.max_player_line_chars} characters for the player, "
                       f"{self.max_npc_line_chars} for the NPC)")
            if bad:
                break
            seen.add(npc_id)
        if bad:
            raise BadRequest(bad)


# Text from the game must never become control tokens: "<|im_end|><|im_start|>system ..." in a player
# line would otherwise rewrite the NPC's instructions. The pattern is the chat markup of every template; each
# engine adds its vocabulary's own special tokens (Engine.special_texts: SmolLM2 also has "<filename>",
# "<issue_start>", ...).
_SPECIAL = r"<\|[^<>|]{0,48}\|>|</?s>"


@functools.lru_cache(maxsize=8)
def _special_pattern(specials: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join([_SPECIAL, *(re.escape(t) for t in sorted(specials, key=len, reverse=True))]))


def clean(text: str, specials: tuple[str, ...] = ()) -> str:
    """``text`` with every spelling of a control token removed, to a fixed point: a removal can join two halves
    into a new one ("<|im_<|im_end|>start|>" is "<|im_start|>" after one pass), so it repeats until a pass
    changes nothing. Each pass makes the text shorter, so it ends."""
    pattern = _special_pattern(tuple(specials))
    while True:
        out = pattern.sub("", text)
        if out == text:
            return out
        text = out


def clean_profile(p: RoleProfile, specials: tuple[str, ...] = ()) -> RoleProfile:
    c = functools.partial(clean, specials=specials)
    return RoleProfile(id=p.id, name=c(p.name), persona=c(p.persona), style=c(p.style),
                       knowledge=c(p.knowledge), example_lines=[c(x) for x in p.example_lines])


def clean_scene(s: SceneInfo, specials: tuple[str, ...] = ()) -> SceneInfo:
    c = functools.partial(clean, specials=specials)
    return SceneInfo(
        **{k: c(v) for k, v in vars(s).items() if isinstance(v, str)},
        recent_events=[c(x) for x in s.recent_events],
        nearby_characters=[c(x) for x in s.nearby_characters],
        facts={c(k): c(v) for k, v in s.facts.items()},
    )


def fewest_dropped(n: int, build: Callable, fits: Callable):
    """``build(k)``: a prompt without its ``k`` oldest items (0 <= k <= n); a prompt only shrinks as ``k`` grows.
    The first that ``fits``, by bisection: a logarithmic number of builds where dropping one item at a time took
    one per item (a restored session of 32 long exchanges made every line wait for 32 renders). ``build(n)``
    when none fits."""
    first = build(0)
    if n == 0 or fits(first):
        return first
    lo, hi, best = 0, n, build(n)  # build(lo) does not fit; build(hi) is the answer so far
    while hi - lo > 1:
        mid = (lo + hi) // 2
        got = build(mid)
        if fits(got):
            hi, best = mid, got
        else:
            lo = mid
    return best
