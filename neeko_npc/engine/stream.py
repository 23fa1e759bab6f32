"""What every backend's reply stream is made of: options, chunks, stop strings, the count of replies in flight.

Backend-neutral: the llama.cpp engine (llama_generate.py), the torch engine (torch_engine.py) and the gateway
(openai_engine.py) build their replies from these. Drawing a token is roles/sampling.py's; errors are errors.py's."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .. import defaults
from ..errors import NonFiniteLogits


class InFlight:
    """The count of replies in flight, and a wait until there are none (each backend's busy() and close()).

    ``cond`` shares a lock the backend already holds for its own queue; a fresh one otherwise."""

    def __init__(self, cond: threading.Condition | None = None):
        self.cond = cond or threading.Condition()
        self._n = 0

    def add(self, n: int = 1) -> None:
        with self.cond:
            self._n += n
            self.cond.notify_all()

    def done(self, n: int = 1) -> None:
        with self.cond:
            self._n -= n
            self.cond.notify_all()

    def count(self) -> int:
        with self.cond:
            return self._n

    def wait_idle(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self._n == 0, timeout)


def check_finite(logits: np.ndarray) -> np.ndarray:
    if not np.isfinite(logits).all():
        raise NonFiniteLogits("the model's logits are not finite")
    return logits


@dataclass
class GenOptions:
    max_tokens: int = defaults.MAX_TOKENS
    temperature: float = defaults.TEMPERATURE
    top_p: float = defaults.TOP_P
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # contrastive decoding: the NPC's logits pushed away from the base model's by this much before the draw
    # (roles/sampling.py ``contrasted``; two decodes a token); None: the server's --contrast, 0: off
    contrast: float | None = None


@dataclass
class Chunk:
    text: str
    done: bool = False
    finish: str = ""  # a Finish word on the last chunk
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cache: str = ""  # how the prompt was served: a Cache word
    emotion: object = None  # the last chunk, when the request asked: a beats.Beat
    action: object = None


class ReplyStream:
    """An iterator over a reply's chunks that runs ``on_close(finish, text)`` exactly once: when the
    reply ends (before its last chunk is returned), when it fails, when ``close()`` is called, or when it
    is garbage-collected unstarted (a generator's ``finally`` would not run in that last case, leaking its
    context)."""

    def __init__(self, chunks: Iterator[Chunk], on_close: Callable[[str, str], None]):
        self._chunks = chunks
        self._on_close = on_close
        self._text: list[str] = []
        self._finish = ""
        self._closed = False

    def __iter__(self) -> "ReplyStream":
        return self

    def __next__(self) -> Chunk:
        if self._closed:
            raise StopIteration
        try:
            chunk = next(self._chunks)
        except BaseException:
            self.close()
            raise
        self._text.append(chunk.text)
        if chunk.done:
            self._finish = chunk.finish
            # Closed before the last chunk is handed on: whoever sees a line end (a client about to send its
            # follow-up, a reload) finds its context back in the pool, its adapters released and the line in
            # the session's memory. Closed after, the gRPC thread did that a moment after the client had it.
            self.close()
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close(self._finish, "".join(self._text))

    def __del__(self):
        self.close()


class TextStream:
    """The text a reply has produced so far, cut into stream-safe deltas.

    ``update`` takes the whole decoded text after each token and returns the new text that is safe to
    send: never half a character, and never the start of what might become a stop string."""

    def __init__(self, stop: tuple[str, ...] = ()):
        self.stop = tuple(s for s in stop if s)
        self.hold = max((len(s) for s in self.stop), default=0)
        self.text = ""
        self.sent = 0
        self.stopped = False

    def update(self, text: str) -> str:
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, self.stopped = text[:cut], True
        self.text = text
        ready = len(text) - self.hold
        while ready > self.sent and text[ready - 1] == "\ufffd":  # an incomplete multi-byte character
            ready -= 1
        if self.stopped or ready <= self.sent:
            return ""
        delta, self.sent = text[self.sent:ready], ready
        return delta

    def rest(self) -> str:
        """Everything not yet sent, once the reply has ended."""
        delta, self.sent = self.text[self.sent:], len(self.text)
        return delta


class NamedFailures:
    """A backend's chunks, with NonFiniteLogits replaced by ``name(exc)``; closing closes the backend's stream."""

    def __init__(self, chunks: ReplyStream, name: Callable[[NonFiniteLogits], NonFiniteLogits]):
        self._chunks, self._name = chunks, name

    def __iter__(self) -> "NamedFailures":
        return self

    def __next__(self) -> Chunk:
        try:
            return next(self._chunks)
        except NonFiniteLogits as exc:
            raise self._name(exc) from None

    def close(self) -> None:
        self._chunks.close()
