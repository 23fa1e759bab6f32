"""A scripted engine: the real facade (engine/facade.py) over a stand-in for the model, for the fast tier.

Everything above the model is the product's own code: the roles folder and its hot reload, request limits and
cleaning, prompt assembly, memory, conversations, the service, the daemon, the CLI. Only the backend's two jobs
are scripted: tokens are characters, and a line is four words that say which blocks spoke and how long the prompt
was ("[smith] heard 212 tokens."), one word a token. So a contract test can check what the daemon promises around
a line (status codes, limits, the token, usage, order of turns) in milliseconds. It says nothing about how an NPC
sounds; the slow tier runs the same contract against the real model.

Scripted failures, for the error table: a role whose file is named ``broken`` produces non-finite output after its
first word; ``ScriptedEngine.delay`` slows every word (for cancellations and deadlines)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from neeko_npc.engine.facade import Abilities, Engine, EngineConfig
from neeko_npc.engine.stream import Chunk, InFlight, ReplyStream, TextStream
from neeko_npc.errors import NonFiniteLogits, PoolBusy
from neeko_npc.protocol import Cache, Finish
from neeko_npc.roles.asset import write_asset
from neeko_npc.roles.prompt import ChatTemplate

from .helpers import TINY_BASE, block_asset, fusion_asset

# A chat template with the usual shape: every message in its own markup, then the assistant's turn opened.
TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
EOS = "<|end|>"


def write_roles(folder: Path) -> Path:
    """A roles folder on the tiny base: two trained roles (smith, bard), one fused from them (squire), and
    ``broken``, whose output the scripted engine makes non-finite."""
    folder.mkdir(parents=True, exist_ok=True)
    smith, bard, broken = block_asset("smith", seed=1), block_asset("bard", seed=2), block_asset("broken", seed=3)
    for a in (smith, bard, broken):
        write_asset(a, folder / f"{a.id}.nrole")
    write_asset(fusion_asset("squire", [(smith, 0.75), (bard, 0.25)]), folder / "squire.nrole")
    return folder


class ScriptedEngine(Engine):
    """The facade over a scripted backend: as many contexts as ``config.pool_size``, a line waits for one at most
    its queue timeout (PoolBusy after). Declares contrast (the scripted line ignores it) and nothing else."""

    name = "scripted"
    abilities = Abilities(contrast=True)
    delay = 0.0  # seconds a word

    def __init__(self, roles_dir: str | Path, config: EngineConfig | None = None):
        super().__init__(config)
        self.base = TINY_BASE
        self.template = ChatTemplate(TEMPLATE, eos=EOS)
        self.inflight = InFlight()
        self.contexts = threading.BoundedSemaphore(self.config.pool_size)
        self.lines: list[dict] = []  # what each line was asked: its blocks, scales, options, prompt length
        self._open_roles(roles_dir, self)

    # the adapters the roles folder loads through: a block's handle is its role id
    @staticmethod
    def load(asset) -> str:
        return asset.id

    @staticmethod
    def free(handle) -> None:
        pass

    def tokens(self, text: str) -> list[int]:
        return [1] + [ord(c) for c in text]  # a BOS, then one token a character

    def describe(self) -> str:
        return f"scripted, {self.config.pool_size} contexts"

    def busy(self) -> int:
        return self.inflight.count()

    def _wait_idle(self, timeout: float) -> bool:
        return self.inflight.wait_idle(timeout)

    def _stream(self, adapters, scales, key, prompt, opts, stop, deadline, beats=None, npc=""):
        timeout = self._queue_timeout(deadline)
        if not self.contexts.acquire(timeout=timeout):
            raise PoolBusy(f"every context is busy (--pool-size {self.config.pool_size}); waited {timeout:g} s "
                           f"(--max-queue, --queue-timeout)")
        self.inflight.add()
        handles = [a.handle for a in adapters]
        self.lines.append({"blocks": handles, "scales": list(scales), "opts": opts, "prompt_tokens": len(prompt),
                           "npc": npc})
        words = [f"[{'+'.join(handles) or 'base'}]", " heard", f" {len(prompt)}", " tokens."]

        def chunks():
            text = TextStream(opts.stop)
            said = ""
            for n, word in enumerate(words):
                if stop() or (deadline is not None and time.monotonic() > deadline):
                    yield self._last(text.rest(), Finish.CANCELLED, prompt, n)
                    return
                if n >= opts.max_tokens:
                    yield self._last(text.rest(), Finish.LENGTH, prompt, n)
                    return
                if n == 1 and "broken" in handles:
                    raise NonFiniteLogits("the model's logits are not finite")
                time.sleep(self.delay)
                said += word
                delta = text.update(said)
                if text.stopped:
                    yield self._last(text.rest(), Finish.STOP, prompt, n + 1)
                    return
                if delta:
                    yield Chunk(delta)
            yield self._last(text.rest(), Finish.STOP, prompt, len(words))

        def release(finish: str, text: str) -> None:
            self.contexts.release()
            self.inflight.done()

        return ReplyStream(chunks(), release)

    @staticmethod
    def _last(text: str, finish: str, prompt: list[int], n: int) -> Chunk:
        return Chunk(text, done=True, finish=finish, prompt_tokens=len(prompt), completion_tokens=n, cache=Cache.COLD)
