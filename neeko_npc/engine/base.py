"""The engine facade: what the service, the daemon, the bench and the CLI may call, whatever the backend.

    engine.roles()            the roles served now and the files skipped (a Roster)
    engine.role(npc_id)       one served role, or UnknownRole
    engine.reload()           re-read the roles folder (ReloadResult); engine.roles_changed() is the cheap check
    engine.say(...)           start a reply (Reply); checks the request against engine.limits first
    engine.prepare(...)       read an NPC's prompt up to the player's line now (the player is walking up): Prepared
    engine.session(id)        a session's remembered exchanges; restore_session, forget
    engine.forget_cache()     drop every cached prompt prefix (the benchmark's cold lines)
    engine.describe()         one line for the start-up message
    engine.busy(), close()

A backend subclasses :class:`Engine`: it calls ``super().__init__(config)``, sets ``base`` and ``template``,
calls ``_open_roles(roles_dir, adapters)`` once its model is loaded, and implements the abstract methods. The
llama.cpp backend is llama_engine.py, the torch one torch_engine.py; ``open_engine`` in __init__.py picks one.
"""

from __future__ import annotations

import abc
import functools
import logging
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from .. import defaults
from ..errors import BadRequest, ContextTooLarge, InvalidBlend, NonFiniteLogits, PoolBusy, UnknownRole
from ..roles.asset import BaseInfo
from ..roles.profile import ROLE_ID_RE, RoleProfile
from ..roles.prompt import (BEAT_ID_RE, EMOTIONS, Action, BeatAsk, ChatTemplate, SceneInfo, beat_messages, build_messages,
                           chat_messages, render_scene)
from ..roles.beats import BeatHead, BeatJob
from .memory import Memory
from .roleset import ReloadResult, RoleSet, Roster, ServedRole, known_roles
from .snapshots import common_prefix
from ..protocol import Finish, Order
from .stream import Chunk, GenOptions, ReplyStream

log = logging.getLogger("neeko_npc.engine")

__all__ = ["BadRequest", "ContextTooLarge", "Engine", "EngineConfig", "InvalidBlend", "Limits", "NonFiniteLogits",
           "PoolBusy", "Reply", "UnknownRole"]


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


@dataclass
class EngineConfig:
    pool_size: int = defaults.POOL_SIZE  # llama.cpp contexts
    n_ctx: int = defaults.N_CTX
    n_threads: int | None = None  # None: all cores
    max_queue: int = defaults.MAX_QUEUE
    max_memory_chars: int = defaults.MAX_MEMORY_CHARS  # remembered text, all sessions together
    queue_timeout: float = defaults.QUEUE_TIMEOUT
    history_tokens: int = defaults.HISTORY_TOKENS  # memory budget per (session, NPC)
    max_batch: int = defaults.MAX_BATCH  # torch engine: NPC lines decoded together
    contrast: float | None = None  # a line's contrast when its request leaves it unset; None: defaults.CONTRAST where
    # the backend can contrast, else 0
    snapshot_bytes: int = defaults.SNAPSHOT_MIB * 1024 * 1024  # llama.cpp: kept conversation states; 0 turns them off
    warm_dirs: tuple = ()  # llama.cpp: read-only folders of ready adapters and warm prefixes (a bundle's), beside the cache
    warm_save_dir: Path | None = None  # where new warm prefixes are saved; None: the cache (defaults.warm_dir())
    limits: Limits = field(default_factory=Limits)


@dataclass
class Reply:
    role_id: str
    weights: dict[str, float]
    chunks: Iterator[Chunk]


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


@dataclass
class Prepared:
    """What ``prepare`` did with an NPC's prompt up to the player's line (profile, scene, memory)."""

    role_id: str
    prompt_tokens: int  # the prompt's tokens before the player's line
    read_tokens: int  # read now; the others were already held by a context or a kept state
    cache: str  # how its start was served (a Cache word); "" when skipped
    skipped: str = ""  # why nothing was read (every context busy, no prompt cache); "" when it was
    ms: float = 0.0


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


def adapter_key(adapters, scales) -> tuple:
    """What a KV cache is valid under: the adapters (by content hash) and their scales, in order."""
    return tuple((a.sha256, float(s)) for a, s in zip(adapters, scales))


class Engine(abc.ABC):
    """The facade (module docstring) and what every backend shares: request checks, input cleaning, prompt
    assembly, role pinning, conversation memory."""

    name = "base"
    base: BaseInfo
    template: ChatTemplate
    specials: tuple[str, ...] = ()  # how the tokenizer spells its special tokens (special_texts), set with the roles
    contrasts = False  # the backend can decode a line against its base model's logits (GenOptions.contrast)

    def __init__(self, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        if self.config.contrast is None:
            self.config = replace(self.config, contrast=defaults.CONTRAST if self.contrasts else 0.0)
        self.check_contrast(self.config.contrast)
        self.memory = Memory(max_chars=self.config.max_memory_chars)
        self.roleset: RoleSet | None = None
        self.load_result: ReloadResult | None = None
        self._closing = False
        self._broken: set[tuple] = set()  # adapter sets whose output went non-finite, already logged
        self.warmed = threading.Event()  # set once the roles' prompt prefixes are prefilled (at once if never)
        self.warm_summary = ""  # one line about the last warm-up, for the start-up message

    def _open_roles(self, roles_dir: str | Path, adapters) -> None:
        """Load the roles folder through the backend's ``adapters`` (load(asset) -> handle, free(handle))."""
        self.roles_dir = Path(roles_dir)
        self.specials = tuple(self.special_texts())  # read from the vocabulary once, before the first line
        self.roleset = RoleSet(roles_dir, self.base, adapters)
        self.load_result = self.roleset.reload()
        self.warmed.set()  # a backend that warms its roles clears it while it does

    # -- what a backend implements ---------------------------------------------------------------

    @abc.abstractmethod
    def tokens(self, text: str) -> list[int]:
        """The prompt text's token ids, with the BOS the model expects."""

    @abc.abstractmethod
    def _stream(self, adapters, scales, key: tuple, prompt: list[int], opts: GenOptions, stop: Callable[[], bool],
                deadline: float | None, beats: BeatJob | None = None, npc: str = "") -> ReplyStream:
        """Start generating; return a ReplyStream that releases what it acquired (not the adapters) on close. With
        ``beats``, the last chunk of a line that ended (stop or length) carries its emotion and action. ``npc`` is
        the hosted NPC speaking (a backend that selects adapters by name uses it; "" for a procedural NPC)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The backend and its capacity, for the start-up line: 'llama.cpp, 4 contexts'."""

    @abc.abstractmethod
    def busy(self) -> int:
        """Replies in flight."""

    @abc.abstractmethod
    def _wait_idle(self, timeout: float) -> bool:
        """Wait until no reply is in flight."""

    def special_texts(self) -> tuple[str, ...]:
        """How the tokenizer spells its special tokens, which game text must never contain (clean)."""
        return ()

    def clean(self, text: str) -> str:
        """Game text with every control-token spelling of this engine's tokenizer removed (module ``clean``)."""
        return clean(text, self.specials)

    def forget_cache(self) -> None:
        """Drop every cached prompt prefix, so the next line of any NPC is computed cold."""

    def _free(self) -> None:
        """Free native memory; called once no reply is in flight."""

    # -- roles -----------------------------------------------------------------------------------

    @property
    def limits(self) -> Limits:
        return self.config.limits

    def roles(self) -> Roster:
        return self.roleset.snapshot

    def role(self, npc_id: str) -> ServedRole:
        snap = self.roleset.snapshot
        served = snap.roles.get(npc_id)
        if served is None:
            raise UnknownRole(f"no NPC {npc_id!r}; known: {known_roles(snap)}")
        return served

    def reload(self) -> ReloadResult:
        return self.roleset.reload()

    def roles_changed(self) -> bool:
        """Cheap check for the folder watcher: did any .nrole file appear, change or vanish?"""
        return self.roleset.scan_changed()

    # -- replies ---------------------------------------------------------------------------------

    def build_prompt(self, profile: RoleProfile, session: str, npc_id: str, player_line: str, scene: SceneInfo,
                     max_tokens: int) -> list[int]:
        """Prompt tokens; the oldest remembered exchanges are dropped to fit the history budget and the context."""
        return self.prompt(profile, session, npc_id, player_line, scene, max_tokens)[0]

    def prompt(self, profile: RoleProfile, session: str, npc_id: str, player_line: str, scene: SceneInfo,
               max_tokens: int) -> tuple[list[int], list[dict]]:
        """``build_prompt``'s tokens and the chat messages they render."""
        history = self.memory.get(session, npc_id)
        msgs = build_messages(profile, scene, [], player_line)
        base = self.tokens(self.template.render(msgs))
        room = self.config.n_ctx - max_tokens
        if len(base) > room:
            raise ContextTooLarge(f"the prompt needs {len(base)} tokens but only {room} fit "
                                  f"(--n-ctx {self.config.n_ctx} minus max_tokens {max_tokens}); shorten the scene or player line")
        if not history:
            return base, msgs

        def build(k: int):
            m = build_messages(profile, scene, history[k:], player_line)
            return self.tokens(self.template.render(m)), m

        return fewest_dropped(len(history), build,
                              lambda got: len(got[0]) <= room and len(got[0]) - len(base) <= self.config.history_tokens)

    def beat_job(self, messages: list[dict], ask: BeatAsk, head: BeatHead | None = None) -> BeatJob:
        """How to ask this line's beat (roles/beats.py): the speaking role's learned head where it covers the ask,
        else the question after the line, in the line's messages."""
        return BeatJob(ask, lambda line: self.tokens(self.template.render(beat_messages(messages, line, ask))),
                       self.piece_tokens, self.piece_tokens(self.template.eos), head)

    def piece_tokens(self, text: str) -> list[int]:
        """A text piece's token ids on its own (no BOS); special tokens are parsed (the end of turn is one)."""
        raise BadRequest(f"the {self.name} engine does not score beats yet; serve with --engine llama.cpp")

    def _request(self, npc_id: str, player_line: str, scene: SceneInfo | None, opts: GenOptions | None, session: str,
                 blend, profile):
        """Check and clean a request, then pin its voice: (opts, line, scene, voice, adapters, scales). The caller
        releases the adapters (roleset.release)."""
        if self._closing:
            raise PoolBusy("the daemon is shutting down")
        scene = scene or SceneInfo()
        opts = self._contrast(self.limits.check_say(npc_id, session, player_line, scene, opts or GenOptions()))
        if (blend is None) != (profile is None):
            raise InvalidBlend("a procedural NPC needs both a blend and a profile")
        if profile is not None:
            profile = clean_profile(profile, self.specials)
        voice, adapters, scales = self.roleset.acquire(npc_id, blend, profile, self.limits.max_blend)
        return opts, self.clean(player_line), clean_scene(scene, self.specials), voice, adapters, scales

    @classmethod
    def check_contrast(cls, c: float) -> None:
        """BadRequest unless this backend can decode lines at contrast ``c`` (a request's, or serve --contrast)."""
        if not 0 <= c <= defaults.MAX_CONTRAST:
            raise BadRequest(f"contrast must be between 0 and {defaults.MAX_CONTRAST:g}")
        if c > 0 and not cls.contrasts:
            raise BadRequest(f"contrast {c:g}: the {cls.name} engine cannot contrast a line with its base model (it sees "
                             "no base logits); use contrast 0, or serve with --engine llama.cpp or torch")

    def _contrast(self, opts: GenOptions) -> GenOptions:
        """``opts`` with its contrast filled in (unset: --contrast), checked by ``check_contrast``."""
        c = self.config.contrast if opts.contrast is None else opts.contrast
        self.check_contrast(c)
        return replace(opts, contrast=c)

    def say(self, npc_id: str, player_line: str, scene: SceneInfo | None = None, opts: GenOptions | None = None,
            session: str = "", cancelled: Callable[[], bool] = lambda: False, deadline: float | None = None,
            blend: list[tuple[str, float]] | None = None, profile: RoleProfile | None = None,
            beats: BeatAsk | None = None) -> Reply:
        """Start a reply. Raises BadRequest, UnknownRole, InvalidBlend, ContextTooLarge or PoolBusy before anything
        streams; the stream raises NonFiniteLogits if the model's output stops being finite.

        With ``blend`` (role id, weight pairs) and ``profile``, ``npc_id`` is a procedural NPC with no role file.
        ``opts.max_tokens`` 0 means the daemon's default. With ``beats``, the last chunk carries the line's emotion
        and action, each one of the asked candidates (roles/beats.py); the line is the one said without them."""
        ask = self.limits.check_beats(beats, self.specials) if beats else None
        opts, player_line, scene, voice, adapters, scales = self._request(npc_id, player_line, scene, opts, session,
                                                                          blend, profile)
        try:
            prompt, messages = self.prompt(voice.profile, session, npc_id, player_line, scene, opts.max_tokens)
            job = self.beat_job(messages, ask, voice.beats) if ask else None
            key = adapter_key(adapters, scales)
            stop = lambda: self._closing or cancelled()  # noqa: E731
            chunks = self._stream(adapters, scales, key, prompt, opts, stop, deadline, job,
                                  npc="" if blend is not None else voice.id)
        except BaseException:
            self.roleset.release(adapters)
            raise

        def done(finish: str, text: str) -> None:
            self.roleset.release(adapters)
            if finish in Finish.ENDED and session:
                self.memory.add(session, npc_id, player_line, text.strip())

        return Reply(voice.id, dict(voice.weights), ReplyStream(self._guarded(chunks, voice, key), done))

    def prepare(self, npc_id: str, scene: SceneInfo | None = None, session: str = "",
                blend: list[tuple[str, float]] | None = None, profile: RoleProfile | None = None) -> Prepared:
        """Read the NPC's prompt up to the player's line now: its profile, this scene and the session's memory,
        the part every line it may be asked next starts with. A game calls it when the player walks up to the
        NPC; the line that follows then reads only itself, like a follow-up. A bark's prompt is covered too.

        A hint, never a wait: when every context is busy, nothing is read (``skipped`` says so). The request is
        checked like ``say``'s (same errors). The prompt is kept like any line's, on its context or as a
        snapshot, under the NPC's adapter set."""
        t0 = time.perf_counter()
        _, _, scene, voice, adapters, scales = self._request(npc_id, "", scene, None, session, blend, profile)
        try:
            prefix = self.line_prefix(voice.profile, session, npc_id, scene)
            read, cache, skipped = self._prefill(adapters, scales, adapter_key(adapters, scales), prefix)
        finally:
            self.roleset.release(adapters)
        return Prepared(voice.id, len(prefix), read, cache, skipped, (time.perf_counter() - t0) * 1000)

    def _prefill(self, adapters, scales, key: tuple, tokens: list[int]) -> tuple[int, str, str]:
        """Read ``tokens`` into a free context and leave them there: (tokens read, how the start was served,
        why nothing was read). A backend with no prompt cache reads nothing."""
        return 0, "", f"the {self.name} engine keeps no prompt cache"

    def line_prefix(self, profile: RoleProfile, session: str, npc_id: str, scene: SceneInfo) -> list[int]:
        """The tokens every prompt of this NPC starts with in this scene and session, whatever the player says
        next: everything before the player's line."""
        room = self.limits.default_max_tokens
        a = self.build_prompt(profile, session, npc_id, "a", scene, room)
        b = self.build_prompt(profile, session, npc_id, "b b", scene, room)
        return a[:common_prefix(a, b)]

    def _guarded(self, chunks: ReplyStream, voice, key: tuple) -> "_NamedFailures":
        """Name the NPC when its output stops being finite, and log that once per adapter set."""

        def named(exc: NonFiniteLogits) -> NonFiniteLogits:
            msg = (f"NPC {voice.id!r} produced non-finite logits (blocks: {', '.join(sorted(voice.weights))}); the line "
                   "was stopped and its context cleared. Re-bake or replace the role file.")
            if key not in self._broken:
                self._broken.add(key)
                log.error(msg)
            return NonFiniteLogits(msg)

        return _NamedFailures(chunks, named)

    def profile_prefix(self, profile: RoleProfile) -> list[int]:
        """The tokens every prompt of this NPC starts with, whatever its scene, history and line: the chat
        template's start and the profile (the scene comes after it, see roles/prompt.py)."""
        a = self.tokens(self.template.render(build_messages(profile, SceneInfo(location="a"), [], "a")))
        b = self.tokens(self.template.render(build_messages(profile, SceneInfo(npc_mood="b b"), [], "b b")))
        return a[:common_prefix(a, b)]

    def _queue_timeout(self, deadline: float | None) -> float:
        timeout = self.config.queue_timeout
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - time.monotonic()))
        return timeout

    # -- conversations among NPCs ----------------------------------------------------------------

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
        opts = self._contrast(lim.check_say(npcs[0], "", opening_line, scene, opts or GenOptions(),
                                            line_field="opening_line"))
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
                stream = self._guarded(self._stream(adapters, scales, key, prompt, opts,
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

    # -- sessions --------------------------------------------------------------------------------

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

    # -- shutting down ---------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Stop every stream at its next token, wait for them to end, then free native memory.

        Freeing a model under a decode in flight would crash the process; if streams do not drain in
        time, the memory is left to the process exit instead."""
        self._closing = True
        if not self._wait_idle(timeout):
            log.warning("%d stream(s) still running after %.0f s; not freeing the model", self.busy(), timeout)
            return
        self._free()


class _NamedFailures:
    """A backend's chunks, with NonFiniteLogits replaced by ``name(exc)``; closing closes the backend's stream."""

    def __init__(self, chunks: ReplyStream, name: Callable[[NonFiniteLogits], NonFiniteLogits]):
        self._chunks, self._name = chunks, name

    def __iter__(self) -> "_NamedFailures":
        return self

    def __next__(self) -> Chunk:
        try:
            return next(self._chunks)
        except NonFiniteLogits as exc:
            raise self._name(exc) from None

    def close(self) -> None:
        self._chunks.close()
