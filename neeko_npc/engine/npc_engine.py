"""The NPC engines the gRPC service calls (they know nothing about gRPC).

BaseEngine holds what every backend shares: input cleaning, prompt assembly, role pinning, memory.
LlamaEngine is the default backend: one llama.cpp model and a pool of contexts. The torch backend
is in torch_engine.py.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .. import defaults
from ..roles.base_model import base_info, resolve_base_model
from ..roles.profile import RoleProfile
from .generate import Chunk, ContextPool, GenOptions, NonFiniteLogits, PoolBusy, ReplyStream, generate
from .llamacpp import LlamaModel, openmp_build
from ..roles.prompt import ChatTemplate, SceneInfo, build_messages
from .memory import Memory
from .roleset import InvalidBlend, LlamaAdapters, RoleSet

log = logging.getLogger("neeko_npc.engine")

# Text from the game must never become control tokens: "<|im_end|><|im_start|>system ..." in a player
# line would otherwise rewrite the NPC's instructions.
_SPECIAL = re.compile(r"<\|[^<>|]{0,48}\|>|</?s>")


def clean(text: str) -> str:
    return _SPECIAL.sub("", text)


def clean_profile(p: RoleProfile) -> RoleProfile:
    return RoleProfile(id=p.id, name=clean(p.name), persona=clean(p.persona), style=clean(p.style),
                       knowledge=clean(p.knowledge), example_lines=[clean(x) for x in p.example_lines])


def clean_scene(s: SceneInfo) -> SceneInfo:
    return SceneInfo(
        **{k: clean(v) for k, v in vars(s).items() if isinstance(v, str)},
        recent_events=[clean(x) for x in s.recent_events],
        nearby_characters=[clean(x) for x in s.nearby_characters],
        facts={clean(k): clean(v) for k, v in s.facts.items()},
    )


class ContextTooLarge(ValueError):
    pass


@dataclass
class EngineConfig:
    pool_size: int = defaults.POOL_SIZE
    n_ctx: int = defaults.N_CTX
    n_threads: int | None = None  # None: all cores
    max_queue: int = defaults.MAX_QUEUE
    queue_timeout: float = defaults.QUEUE_TIMEOUT
    history_tokens: int = defaults.HISTORY_TOKENS  # memory budget per (session, NPC)
    max_tokens_limit: int = defaults.MAX_TOKENS_LIMIT  # largest max_tokens a request may ask for
    default_max_tokens: int = defaults.MAX_TOKENS
    max_blend: int = defaults.TOP_K  # roles a procedural NPC may mix, and blocks that may result


@dataclass
class Reply:
    role_id: str
    weights: dict[str, float]
    chunks: Iterator[Chunk]


class BaseEngine:
    """What every backend shares: input cleaning, prompt assembly, role pinning, memory.

    A backend sets ``config``, ``base``, ``template``, ``roles`` (a RoleSet), ``pool`` (busy() and
    wait_idle()) and implements ``tokens`` and ``_stream``."""

    name = "base"

    def _init_common(self, config: EngineConfig | None) -> None:
        self.config = config or EngineConfig()
        self.memory = Memory()
        self._closing = False
        self._broken: set[tuple] = set()  # adapter sets whose output went non-finite, already logged

    def tokens(self, text: str) -> list[int]:
        raise NotImplementedError

    def _stream(self, adapters, scales, key: tuple, prompt: list[int], opts: GenOptions, stop, deadline) -> Iterator[Chunk]:
        """Start generating; return a ReplyStream that releases what it acquired (not the adapters) on close."""
        raise NotImplementedError

    def build_prompt(self, profile: RoleProfile, session: str, npc_id: str, player_line: str, scene: SceneInfo,
                     max_tokens: int) -> list[int]:
        """Prompt tokens; the oldest remembered exchanges are dropped to fit the history budget and the context."""
        history = self.memory.get(session, npc_id)
        base = self.tokens(self.template.render(build_messages(profile, scene, [], player_line)))
        room = self.config.n_ctx - max_tokens
        if len(base) > room:
            raise ContextTooLarge(f"the prompt needs {len(base)} tokens but only {room} fit "
                                  f"(--n-ctx {self.config.n_ctx} minus max_tokens {max_tokens}); shorten the scene or player line")
        if not history:
            return base
        while True:
            toks = self.tokens(self.template.render(build_messages(profile, scene, history, player_line)))
            if not history or (len(toks) <= room and len(toks) - len(base) <= self.config.history_tokens):
                return toks
            history = history[1:]

    def say(self, npc_id: str, player_line: str, scene: SceneInfo, opts: GenOptions, session: str = "",
            cancelled: Callable[[], bool] = lambda: False, deadline: float | None = None,
            blend: list[tuple[str, float]] | None = None, profile: RoleProfile | None = None) -> Reply:
        """Start a reply. Raises UnknownRole, InvalidBlend, ContextTooLarge or PoolBusy before anything streams;
        the stream raises NonFiniteLogits if the model's output stops being finite.

        With ``blend`` (role id, weight pairs) and ``profile``, ``npc_id`` is a procedural NPC with no role file."""
        if self._closing:
            raise PoolBusy("the daemon is shutting down")
        if (blend is None) != (profile is None):
            raise InvalidBlend("a procedural NPC needs both a blend and a profile")
        player_line = clean(player_line)
        scene = clean_scene(scene)
        if profile is not None:
            profile = clean_profile(profile)
        opts.stop = tuple(opts.stop)
        voice, adapters, scales = self.roles.acquire(npc_id, blend, profile, self.config.max_blend)
        try:
            prompt = self.build_prompt(voice.profile, session, npc_id, player_line, scene, opts.max_tokens)
            key = tuple((a.sha256, float(s)) for a, s in zip(adapters, scales))
            stop = lambda: self._closing or cancelled()  # noqa: E731
            chunks = self._stream(adapters, scales, key, prompt, opts, stop, deadline)
        except BaseException:
            self.roles.release(adapters)
            raise

        def done(finish: str, text: str) -> None:
            self.roles.release(adapters)
            if finish in ("stop", "length") and session:
                self.memory.add(session, npc_id, player_line, text.strip())

        return Reply(voice.id, dict(voice.weights), ReplyStream(self._guarded(chunks, voice, key), done))

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

    def restore_session(self, session: str, npcs: dict[str, list[tuple[str, str]]]) -> int:
        """Put a saved session's memory back, its text cleaned like any request's. Returns the exchanges restored."""
        cleaned = {npc: [(clean(said), clean(replied)) for said, replied in turns] for npc, turns in npcs.items()}
        self.memory.restore(session, cleaned)
        return sum(len(t) for t in self.memory.export(session).values())

    def _queue_timeout(self, deadline: float | None) -> float:
        timeout = self.config.queue_timeout
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - time.monotonic()))
        return timeout

    def close(self, timeout: float = 10.0) -> None:
        """Stop every stream at its next token, wait for them to end, then free native memory.

        Freeing a model under a decode in flight would crash the process; if streams do not drain in
        time, the memory is left to the process exit instead."""
        self._closing = True
        if not self.pool.wait_idle(timeout):
            log.warning("%d stream(s) still running after %.0f s; not freeing the model", self.pool.busy(), timeout)
            return
        self._free()

    def _free(self) -> None:
        pass


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


class LlamaEngine(BaseEngine):
    name = "llama.cpp"

    def __init__(self, roles_dir: str | Path, base_model: str | None = None, config: EngineConfig | None = None):
        self._init_common(config)
        ref = resolve_base_model(base_model)
        if ref.kind != "gguf":
            raise ValueError(f"{ref.path}: the llama.cpp engine needs a .gguf base model; convert the HF folder with "
                             "llama.cpp's convert_hf_to_gguf.py, or serve it with --engine torch")
        self.base = base_info(ref)
        self.model = LlamaModel(ref.path)
        if openmp_build():
            log.warning("llama.cpp was built with OpenMP: replies decode 3-4x slower once several request threads "
                        "have decoded. Rebuild it with -DGGML_OPENMP=OFF (README, 'llama.cpp on CPUs ...').")
        self.template = ChatTemplate(self.model.chat_template(), self.model.bos_text, self.model.eos_text)
        self._add_bos = bool(self.model.L.llama_vocab_get_add_bos(self.model.vocab))
        self.pool = ContextPool(self.model, self.config.pool_size, self.config.n_ctx, self.config.n_threads,
                                self.config.max_queue)
        self.roles = RoleSet(roles_dir, self.base, LlamaAdapters(self.model, self.base, before_free=self.pool.drop_adapter))
        self.load_result = self.roles.reload()

    def tokens(self, text: str) -> list[int]:
        add = self._add_bos and not text.startswith(self.template.bos)
        return self.model.tokenize(text, add_special=add, parse_special=True)

    def _stream(self, adapters, scales, key, prompt, opts, stop, deadline):
        handles = [a.handle for a in adapters]
        slot = self.pool.acquire(key, prompt, self._queue_timeout(deadline), handles, scales)
        chunks = generate(self.model, slot, handles, scales, key, prompt, opts, stop, self.pool.cores)
        return ReplyStream(chunks, lambda finish, text: self.pool.release(slot))

    def _free(self) -> None:
        self.pool.close()
        self.model.close()
