"""Learned beats: fitting a role's BeatHead (roles/beats.py) at bake time, on its annotated training lines.

The feature of a line is h, the final norm's output at the line's last token under the role's own block: what
the daemon's decode of that token computes anyway (llama.cpp's embeddings output), so a served beat costs no
decode of its own. Per kind, a multinomial logistic regression on standardised features,

    min_{V,c}  mean_i CE(softmax(V (h_i - mu) / sd + c), y_i) + lam * ||V||^2 + EPS_BIAS * ||c||^2,

with lam picked from LAMBDAS by FOLDS-fold cross-validation on the training lines (the held-out scenes are never
seen), then refitted on them all. The standardisation is folded in, W = V / sd and b = c - W mu, so serving
computes W h + b. The emotion head has all seven classes (a class no line carried keeps a low bias); the action
head has every action the role's training scenes declared.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..roles.beats import BeatHead, Classifier
from ..roles.dialogue import Scene
from ..roles.profile import RoleProfile
from ..roles.prompt import EMOTIONS
from .data import _ids, scene_messages
from .model import NeekoLoRA

LAMBDAS = (1e-2, 1e-1, 1.0, 10.0)
FOLDS = 5
EPS_BIAS = 1e-3  # keeps an unseen class's bias finite
MIN_LINES = 8  # fewer annotated lines of a kind than this: no head for it
FEATURE_TOKENS = 2048  # a scene is read up to here for its lines' states (its lines past it are left out)


def last_token(tok, msgs: list[dict], i: int) -> int:
    """Where assistant message ``i``'s last token sits in msgs' rendering: the token before its end of turn."""
    head = len(_ids(tok, msgs[:i], gen=True))
    full = _ids(tok, msgs[: i + 1])
    eot = tok.convert_tokens_to_ids(tok.eos_token)
    ends = [j for j in range(head, len(full)) if full[j] == eot]
    return (ends[0] if ends else len(full)) - 1


def annotated_scenes(tok, profile: RoleProfile, scenes: list[Scene]):
    """Each scene with an annotated line of the role: (its messages, their token ids, [(message index, turn)] of
    the role's annotated lines)."""
    for scene in scenes:
        msgs = scene_messages(profile, scene)
        npc_turns = [t for t in scene.turns if t.speaker == profile.id]
        lines = [(i, t) for i, t in zip((i for i, m in enumerate(msgs) if m["role"] == "assistant"), npc_turns)
                 if t.emotion or t.action]
        if lines:
            yield msgs, _ids(tok, msgs), lines


@torch.no_grad()
def line_states(neeko: NeekoLoRA, tok, profile: RoleProfile, scenes: list[Scene], weights,
                max_len: int = FEATURE_TOKENS) -> list[tuple[np.ndarray, str, str]]:
    """(h, emotion, action) of every annotated line of the role in ``scenes``, under gate ``weights`` (a role
    id, {role: weight} or None). One forward a scene (each line's state depends only on what precedes it); a
    scene longer than ``max_len`` tokens is cut to its first ``max_len``, and its later lines are left out."""
    w = None if weights is None else neeko.weights([weights])
    out = []
    for msgs, ids, lines in annotated_scenes(tok, profile, scenes):
        ids = ids[:max_len]
        with neeko.gate(w):
            h = neeko.model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0].float().numpy()
        for i, t in lines:
            pos = last_token(tok, msgs, i)
            if pos < len(ids):
                out.append((h[pos].copy(), t.emotion, t.action))
    return out


def _train(X: np.ndarray, y: np.ndarray, k: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """V, c of the objective above on standardised X (float64, L-BFGS from zero: the objective is convex)."""
    Xs, Y = torch.tensor(X, dtype=torch.float64), torch.tensor(y)
    V = torch.zeros(k, X.shape[1], dtype=torch.float64, requires_grad=True)
    c = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([V, c], max_iter=100, tolerance_grad=1e-5, line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        loss = F.cross_entropy(Xs @ V.T + c, Y) + lam * (V ** 2).sum() + EPS_BIAS * (c ** 2).sum()
        loss.backward()
        return loss

    opt.step(objective)
    return V.detach().numpy(), c.detach().numpy()


def fit_classifier(X: np.ndarray, labels: list[str], classes: tuple[str, ...]) -> tuple[Classifier, float]:
    """The Classifier for features X (n, dim) and their labels, and the lam cross-validation chose."""
    y = np.array([classes.index(v) for v in labels])
    mu, sd = X.mean(0), X.std(0) + 1e-3
    Z = (X - mu) / sd
    folds = np.arange(len(y)) % FOLDS

    def cv(lam: float) -> float:
        hits = 0
        for f in range(FOLDS):
            V, c = _train(Z[folds != f], y[folds != f], len(classes), lam)
            hits += int(((Z[folds == f] @ V.T + c).argmax(1) == y[folds == f]).sum())
        return hits / len(y)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices this small: a second thread only adds its hand-offs (3x slower on 2 cores)
    try:
        lam = max(LAMBDAS, key=cv)  # the first of the best, so ties go to the weakest regularisation tried
        V, c = _train(Z, y, len(classes), lam)
    finally:
        torch.set_num_threads(threads)
    W = V / sd
    return Classifier(classes, W.astype(np.float32), (c - W @ mu).astype(np.float32)), lam


def fit_head(states: list[tuple[np.ndarray, str, str]], actions: tuple[str, ...]) -> tuple[BeatHead | None, dict]:
    """A role's BeatHead from its training lines' states (line_states), with ``actions`` the ids its scenes
    declared; and what was fitted, for the training record. None when no kind has MIN_LINES annotated lines."""
    parts, record = {}, {}
    for kind, classes, at in (("emotion", EMOTIONS, 1), ("action", actions, 2)):
        rows = [s for s in states if s[at]]
        if len(rows) < MIN_LINES or not classes:
            continue
        X = np.stack([s[0] for s in rows]).astype(np.float64)
        clf, lam = fit_classifier(X, [s[at] for s in rows], tuple(classes))
        parts[kind] = clf
        record[kind] = {"lines": len(rows), "lambda": lam}
    if not parts:
        return None, {}
    return BeatHead(int(states[0][0].shape[0]), **parts), record


def declared_actions(scenes: list[Scene]) -> tuple[str, ...]:
    """Every action id the scenes declare, in first-seen order."""
    seen: dict[str, None] = {}
    for s in scenes:
        for a in s.actions:
            seen.setdefault(a.id, None)
    return tuple(seen)


def head_covers(profile: RoleProfile, scenes: list[Scene]) -> bool:
    """Whether bake_head will give the role a head for every kind its lines in ``scenes`` annotate: each kind is
    annotated on no line or on at least MIN_LINES, and a role with annotated actions declares some. The bake
    then trains no beat question (neeko/bake.py): the head answers those asks, so the question's training
    examples, two in three of a village role's, would only slow the bake."""
    lines = [t for s in scenes for t in s.turns if t.speaker == profile.id]
    emotions, actions = sum(bool(t.emotion) for t in lines), sum(bool(t.action) for t in lines)
    return (emotions == 0 or emotions >= MIN_LINES) and (actions == 0 or (actions >= MIN_LINES
                                                                          and bool(declared_actions(scenes))))


def bake_head(neeko: NeekoLoRA, tok, profile: RoleProfile, scenes: list[Scene]) -> tuple[BeatHead | None, dict]:
    """The role's head from its training scenes, under its own block (already trained in ``neeko``)."""
    return fit_head(line_states(neeko, tok, profile, scenes, profile.id), declared_actions(scenes))
