"""A line's beat: what the NPC feels and what it does, chosen among the request's candidates, never parsed.

After the line, the beat question is read (roles/prompt.py: ``beat_messages``) and every candidate is scored
as the answer's next piece, under the same adapters as the line: the probability of its tokens and of the
first token of what must follow it (the next piece, or the end of turn), so that ``open`` never wins by being
a prefix of ``open_shop``; the rest of what follows adds nothing to tell the candidates apart. The likeliest candidate is the beat; the probabilities are a softmax over the candidates'
log-probabilities. The emotion is chosen first, and the action is scored after it.

Backend-neutral: a backend gives a :class:`Scorer` over the state that holds the beat prompt.

A role baked with annotated lines also carries a :class:`BeatHead`: a linear softmax per kind on the hidden
state the line ends on (the final norm's output at its last token, which the decode that read that token computed
anyway), so its beat costs two small matrix products instead of a second prompt. An NPC speaking with several
roles' blocks (a fused role, a blend) reads the same state with their heads, mixed by its weights
(:class:`MixedHead`). A head answers only asks it covers (every asked id among the classes it was trained on);
any other ask goes to the question above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from .prompt import ACTION_PIECE, EMOTION_PIECE, BeatAsk


@dataclass(frozen=True)
class Beat:
    id: str
    probability: float
    probabilities: dict[str, float]  # every candidate's, in the order the request gave them


@dataclass(frozen=True)
class BeatJob:
    """What a backend needs to add a beat to a line: the ask, the beat prompt for the line's text, how a text
    piece tokenizes, and the end-of-turn tokens."""

    ask: BeatAsk
    prompt_for: Callable[[str], list[int]]
    piece: Callable[[str], list[int]]
    end: list[int]
    head: "BeatHead | MixedHead | None" = None  # the speaking NPC's learned beats, where they cover the ask

    @property
    def learned(self) -> bool:
        return self.head is not None and self.head.covers(self.ask)


class Scorer(Protocol):
    def extend(self, tokens: list[int]) -> np.ndarray:
        """Append tokens to the state; the logits after the last."""

    def continuations(self, logits: np.ndarray, conts: list[list[int]]) -> list[float]:
        """Each continuation's log-probability after the state (whose next-token logits are ``logits``); the
        state is left as it was."""


@dataclass(frozen=True)
class Classifier:
    """p(c | h) = softmax_c(W h + b) over the asked candidates c among ``classes``; W is (classes, dim)."""

    classes: tuple[str, ...]
    W: np.ndarray
    b: np.ndarray

    def pick(self, h: np.ndarray, asked: list[str]) -> "Beat":
        z = self.W.astype(np.float64) @ np.asarray(h, dtype=np.float64) + self.b
        return _pick(asked, [float(z[self.classes.index(c)]) for c in asked])


def asked_ids(ask: BeatAsk) -> tuple[tuple[str, list[str]], tuple[str, list[str]]]:
    """(kind, the ids asked of it) for the emotion and the action; an empty list where the kind is not asked."""
    return ("emotion", list(ask.emotions)), ("action", [a.id for a in ask.actions])


def knows(c: Classifier | None, asked: list[str]) -> bool:
    """The coverage rule, once: a classifier answers a kind's ask when every asked id is among its classes."""
    return c is not None and set(asked) <= set(c.classes)


@dataclass(frozen=True)
class BeatHead:
    """A role's learned beats (neeko/beat_head.py fits them at bake time): a Classifier per kind, or None where
    the role's training lines never carried that kind."""

    dim: int
    emotion: Classifier | None = None
    action: Classifier | None = None

    def covers(self, ask: BeatAsk) -> bool:
        """Whether every asked id is one this head was trained to tell apart."""
        return all(not asked or knows(getattr(self, kind), asked) for kind, asked in asked_ids(ask))

    def choose(self, h: np.ndarray, ask: BeatAsk) -> tuple["Beat | None", "Beat | None"]:
        """(emotion, action) for the line whose last hidden state is ``h``; the ask must be covered."""
        emotion, action = (getattr(self, kind).pick(h, asked) if asked else None for kind, asked in asked_ids(ask))
        return emotion, action


@dataclass(frozen=True)
class MixedHead:
    """The learned beats of an NPC that speaks with several roles' blocks (a fused role, a blend): each mixed
    role's head reads the same hidden state h, and a candidate's probability is the weighted mean of theirs over
    the heads that know every asked id of its kind,

        p(c | h) = sum_r w_r p_r(c | h) / sum_r w_r,    p_r(c | h) = softmax over the asked ids of W_r h + b_r

    A kind that no mixed head knows is not covered, and the ask goes to the beat question."""

    parts: tuple[tuple[BeatHead, float], ...]

    @classmethod
    def of(cls, heads: list[tuple["BeatHead | None", float]]) -> "MixedHead | None":
        """The mix of the heads given with their weights (roles without a head, or weighted 0, left out)."""
        parts = tuple((h, float(w)) for h, w in heads if h is not None and w > 0)
        return cls(parts) if parts else None

    @property
    def dim(self) -> int:
        return self.parts[0][0].dim

    def _knowing(self, kind: str, asked: list[str]) -> list[tuple[Classifier, float]]:
        return [(c, w) for h, w in self.parts if knows(c := getattr(h, kind), asked)]

    def covers(self, ask: BeatAsk) -> bool:
        return all(not asked or bool(self._knowing(kind, asked)) for kind, asked in asked_ids(ask))

    def choose(self, h: np.ndarray, ask: BeatAsk) -> tuple["Beat | None", "Beat | None"]:
        """(emotion, action) for the line whose last hidden state is ``h``; the ask must be covered."""
        emotion, action = (self._mix(kind, asked, h) if asked else None for kind, asked in asked_ids(ask))
        return emotion, action

    def _mix(self, kind: str, asked: list[str], h: np.ndarray) -> "Beat":
        parts = self._knowing(kind, asked)
        p = sum(w * np.array([c.pick(h, asked).probabilities[i] for i in asked]) for c, w in parts)
        return _pick(asked, list(np.log(np.maximum(p / sum(w for _, w in parts), 1e-300))))


def log_softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - float(np.max(x))
    return z - np.log(np.exp(z).sum())


def continuation_logprob(first: np.ndarray, rows: np.ndarray | None, cont: list[int]) -> float:
    """log p(cont) from the logits before it (``first``) and after each of its tokens but the last (``rows``)."""
    total = float(log_softmax(first)[cont[0]])
    for i in range(1, len(cont)):
        total += float(log_softmax(rows[i - 1])[cont[i]])
    return total


def _pick(ids: list[str], logps: list[float]) -> Beat:
    lp = np.array(logps, dtype=np.float64)
    p = np.exp(lp - lp.max())
    p /= p.sum()
    best = int(np.argmax(p))
    return Beat(ids[best], float(p[best]), {i: float(x) for i, x in zip(ids, p)})


def candidate_tokens(piece: Callable[[str], list[int]], ids: list[str], follow: list[int]) -> list[list[int]]:
    """What is scored for each candidate: its tokens and the first token of what must follow it (``follow``: the
    next piece, or the end of turn), so that ``open`` never wins by being a prefix of ``open_shop``."""
    return [piece(" " + c) + follow[:1] for c in ids]


def choose(scorer: Scorer, logits: np.ndarray, job: BeatJob) -> tuple[Beat | None, Beat | None]:
    """(emotion, action) for the state whose logits are those after the beat prompt."""
    ask, piece = job.ask, job.piece
    emotion = action = None
    if ask.emotions:
        logits = scorer.extend(piece(EMOTION_PIECE))
        after = piece(ACTION_PIECE) if ask.actions else job.end
        emotions = list(ask.emotions)
        emotion = _pick(emotions, scorer.continuations(logits, candidate_tokens(piece, emotions, after)))
        if ask.actions:
            logits = scorer.extend(piece(" " + emotion.id) + after)
    elif ask.actions:
        logits = scorer.extend(piece(ACTION_PIECE.lstrip()))
    if ask.actions:
        ids = [a.id for a in ask.actions]
        action = _pick(ids, scorer.continuations(logits, candidate_tokens(piece, ids, job.end)))
    return emotion, action
