"""The engine facade: what the service, the daemon, the bench and the CLI may call, whatever the backend.

    engine.roles()            the roles served now and the files skipped (a Roster)
    engine.role(npc_id)       one served role, or UnknownRole
    engine.reload()           re-read the roles folder (ReloadResult); engine.roles_changed() is the cheap check
    engine.say(...)           start a reply (Reply); checks the request against engine.limits first
    engine.prepare(...)       read an NPC's prompt up to the player's line now (the player is walking up): Prepared
    engine.session(id)        a session's remembered exchanges; restore_session, forget
    engine.forget_cache()     drop every cached prompt prefix (the benchmark's cold lines)
    engine.converse(...)      NPCs talking among themselves (converse.py)
    engine.describe()         one line for the start-up message
    engine.abilities          what the backend can do (Abilities); the rest is refused here, with one message each
    engine.busy(), close()

A backend subclasses :class:`Engine`: it declares its ``abilities``, calls ``super().__init__(config)``, sets
``base`` and ``template``, calls ``_open_roles(roles_dir, adapters)`` once its model is loaded, and implements
the abstract methods. The llama.cpp backend is llama_engine.py, the torch one torch_engine.py, the gateway
openai_engine.py; ``open_engine`` in __init__.py picks one. Requests are checked and cleaned by limits.py.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from .. import defaults
from ..errors import BadRequest, ContextTooLarge, InvalidBlend, NonFiniteLogits, PoolBusy, UnknownRole
from ..protocol import Finish
from ..roles.asset import BaseInfo
from ..roles.beats import BeatHead, BeatJob, MixedHead
from ..roles.profile import RoleProfile
from ..roles.prompt import BeatAsk, ChatTemplate, SceneInfo, beat_messages, build_messages
from .converse import Conversations
from .limits import Limits, check_procedural, clean, clean_profile, clean_scene, fewest_dropped
from .memory import Memory, Sessions
from .roleset import ReloadResult, RoleSet, Roster, ServedRole, adapter_key, known_roles
from .snapshots import common_prefix
from .stream import Chunk, GenOptions, NamedFailures, ReplyStream

log = logging.getLogger("neeko_npc.engine")

__all__ = ["Abilities", "Engine", "EngineConfig", "Limits", "Prepared", "Reply"]


@dataclass(frozen=True)
class Abilities:
    """What a backend can do. The facade refuses what it cannot with one clear error (``Engine.lacking``), so a
    backend declares its abilities instead of overriding methods to raise."""

    contrast: bool = False  # decode a line against its base model's logits (GenOptions.contrast)
    beats: bool = False  # score a line's emotion and action (BeatAsk)
    prompt_cache: bool = False  # keep what it read: Prepare, warm prefixes, kept states
    blends: bool = True  # mix blocks per request (a procedural NPC's blend)


def contrasted_line(contrast: float, adapters) -> bool:
    """Whether a line is decoded against the base model: its contrast is above 0 and it speaks with at least one
    block (a line with no block *is* the base model, so there is nothing to contrast it with)."""
    return contrast > 0 and len(adapters) > 0


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
    contrast: float | None = None  # serve --contrast: of every line whose request leaves it unset; None: each NPC's own
    # (Engine.line_contrast)
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
class Prepared:
    """What ``prepare`` did with an NPC's prompt up to the player's line (profile, scene, memory)."""

    role_id: str
    prompt_tokens: int  # the prompt's tokens before the player's line
    read_tokens: int  # read now; the others were already held by a context or a kept state
    cache: str  # how its start was served (a Cache word); "" when skipped
    skipped: str = ""  # why nothing was read (every context busy, no prompt cache); "" when it was
    ms: float = 0.0


# What the facade says when a backend lacks an ability: one message each, naming the engine and the way out.
LACKING = {
    "contrast": "the {name} engine cannot contrast a line with its base model (it sees no base logits); use contrast 0, "
                "or serve with --engine llama.cpp or torch",
    "beats": "the {name} engine does not score beats; serve with --engine llama.cpp or torch",
    "prompt_cache": "the {name} engine keeps no prompt cache",
    "blends": "the {name} engine cannot mix blocks at request time (it serves one adapter per NPC): bake the mix as a "
              "fused role (`neeko-npc bake-role --fuse`), export it with `neeko-npc export --all` for the upstream, "
              "and ask for it by its id",
}


class Engine(Conversations, Sessions, abc.ABC):
    """The facade (module docstring) and what every backend shares: request checks, input cleaning, prompt
    assembly, role pinning, conversation memory."""

    name = "base"
    abilities = Abilities()
    base: BaseInfo
    template: ChatTemplate
    specials: tuple[str, ...] = ()  # how the tokenizer spells its special tokens (special_texts), set with the roles

    def __init__(self, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        if self.config.contrast is not None:
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
        return self.roleset.roster

    def role(self, npc_id: str) -> ServedRole:
        snap = self.roleset.roster
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

    def beat_job(self, messages: list[dict], ask: BeatAsk, head: BeatHead | MixedHead | None = None) -> BeatJob:
        """How to ask this line's beat (roles/beats.py): the speaking NPC's learned beats where they cover the ask,
        else the question after the line, in the line's messages."""
        return BeatJob(ask, lambda line: self.tokens(self.template.render(beat_messages(messages, line, ask))),
                       self.piece_tokens, self.piece_tokens(self.template.eos), head)

    def piece_tokens(self, text: str) -> list[int]:
        """A text piece's token ids on its own (no BOS); special tokens are parsed (the end of turn is one). Only a
        backend that scores beats needs it."""
        raise BadRequest(self.lacking("beats"))

    @classmethod
    def lacking(cls, ability: str) -> str:
        """The one message for a request that needs an ability this backend lacks (``LACKING``)."""
        return LACKING[ability].format(name=cls.name)

    def _request(self, npc_id: str, player_line: str, scene: SceneInfo | None, opts: GenOptions | None, session: str,
                 blend, profile):
        """Check and clean a request, then pin its voice: (opts, line, scene, voice, adapters, scales). The caller
        releases the adapters (roleset.release)."""
        if self._closing:
            raise PoolBusy("the daemon is shutting down")
        scene = scene or SceneInfo()
        opts = self.checked_options(npc_id, session, player_line, scene, opts)
        check_procedural(blend, profile)
        if blend is not None and not self.abilities.blends:
            raise InvalidBlend(self.lacking("blends"))
        if profile is not None:
            profile = clean_profile(profile, self.specials)
        voice, adapters, scales = self.roleset.acquire(npc_id, blend, profile, self.limits.max_blend)
        opts = replace(opts, contrast=self.line_contrast(opts.contrast, voice.contrast))
        return opts, self.clean(player_line), clean_scene(scene, self.specials), voice, adapters, scales

    def checked_options(self, npc_id: str, session: str, line: str, scene: SceneInfo, opts: GenOptions | None,
                        **field) -> GenOptions:
        """A Say's or a Converse's options, checked (limits.check_say, then the request's own contrast against this
        backend), before any voice is pinned."""
        opts = self.limits.check_say(npc_id, session, line, scene, opts or GenOptions(), **field)
        if opts.contrast is not None:
            self.check_contrast(opts.contrast)
        return opts

    @classmethod
    def check_contrast(cls, c: float) -> None:
        """BadRequest unless this backend can decode lines at contrast ``c`` (a request's, or serve --contrast)."""
        if not 0 <= c <= defaults.MAX_CONTRAST:
            raise BadRequest(f"contrast must be between 0 and {defaults.MAX_CONTRAST:g}")
        if c > 0 and not cls.abilities.contrast:
            raise BadRequest(f"contrast {c:g}: {cls.lacking('contrast')}")

    def line_contrast(self, requested: float | None, own: float | None) -> float:
        """A line's contrast, the first that is set: the request's (checked already); serve --contrast; where the
        backend can contrast, the NPC's ``own`` (Voice.contrast: its .nrole's, chosen by its bake's voice check), else
        defaults.CONTRAST; else 0."""
        if requested is not None:
            return requested
        if self.config.contrast is not None:
            return self.config.contrast
        if not self.abilities.contrast:
            return 0.0
        return defaults.CONTRAST if own is None else own

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
        if ask and not self.abilities.beats:
            raise BadRequest(self.lacking("beats"))
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
        opts, _, scene, voice, adapters, scales = self._request(npc_id, "", scene, None, session, blend, profile)
        try:
            prefix = self.line_prefix(voice.profile, session, npc_id, scene)
            if self.abilities.prompt_cache:
                read, cache, skipped = self._prefill(adapters, scales, adapter_key(adapters, scales), prefix,
                                                     opts.contrast)
            else:
                read, cache, skipped = 0, "", self.lacking("prompt_cache")
        finally:
            self.roleset.release(adapters)
        return Prepared(voice.id, len(prefix), read, cache, skipped, (time.perf_counter() - t0) * 1000)

    def _prefill(self, adapters, scales, key: tuple, tokens: list[int], contrast: float) -> tuple[int, str, str]:
        """Read ``tokens`` into a free context and leave them there (and, for lines at ``contrast`` above 0, under
        the base model too): (tokens read, how the start was served, why nothing was read). Only a backend with a
        prompt cache implements it."""
        raise NotImplementedError

    def line_prefix(self, profile: RoleProfile, session: str, npc_id: str, scene: SceneInfo) -> list[int]:
        """The tokens every prompt of this NPC starts with in this scene and session, whatever the player says
        next: everything before the player's line."""
        room = self.limits.default_max_tokens
        a = self.build_prompt(profile, session, npc_id, "a", scene, room)
        b = self.build_prompt(profile, session, npc_id, "b b", scene, room)
        return a[:common_prefix(a, b)]

    def _guarded(self, chunks: ReplyStream, voice, key: tuple) -> "NamedFailures":
        """Name the NPC when its output stops being finite, and log that once per adapter set."""

        def named(exc: NonFiniteLogits) -> NonFiniteLogits:
            msg = (f"NPC {voice.id!r} produced non-finite logits (blocks: {', '.join(sorted(voice.weights))}); the line "
                   "was stopped and its context cleared. Re-bake or replace the role file.")
            if key not in self._broken:
                self._broken.add(key)
                log.error(msg)
            return NonFiniteLogits(msg)

        return NamedFailures(chunks, named)

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
