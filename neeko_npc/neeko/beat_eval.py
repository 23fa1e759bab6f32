"""Beat accuracy: on held-out lines annotated with a beat, how often each system picks the written emotion and
action. The choice is serving's own (roles/beats.py ``choose``), here on a torch scorer over the same tokens the
daemon reads (neeko/data.py ``beat_prompt_ids``); the action is scored after the emotion the system chose."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import torch

from ..roles.beats import BeatJob, choose, continuation_logprob
from .data import BeatItem, beat_items, beat_prompt_ids, piece_ids
from .model import NeekoLoRA


class TorchScorer:
    """roles/beats.py's Scorer on a NeekoLoRA under fixed gate weights, with the model's KV cache."""

    def __init__(self, neeko: NeekoLoRA, weights):
        self.neeko = neeko
        self.w = None if weights is None else neeko.weights([weights])
        self.cache = None

    @torch.no_grad()
    def extend(self, tokens: list[int]) -> np.ndarray:
        out = self.neeko.forward(self.w, input_ids=torch.tensor([tokens]), past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[0, -1].float().numpy()

    @torch.no_grad()
    def continuations(self, logits: np.ndarray, conts: list[list[int]]) -> list[float]:
        res = []
        for c in conts:
            rows = None
            if len(c) > 1:
                out = self.neeko.forward(self.w, input_ids=torch.tensor([c[:-1]]), past_key_values=copy.deepcopy(self.cache),
                                         use_cache=True)
                rows = out.logits[0].float().numpy()
            res.append(continuation_logprob(logits, rows, c))
        return res


def predict(neeko: NeekoLoRA, tok, item: BeatItem, weights) -> tuple[str, str]:
    """(emotion, action) a system chooses for an annotated line ("" for what the line does not ask)."""
    piece = lambda text: piece_ids(tok, text)  # noqa: E731
    job = BeatJob(item.ask, None, piece, piece_ids(tok, tok.eos_token))
    scorer = TorchScorer(neeko, weights)
    emotion, action = choose(scorer, scorer.extend(beat_prompt_ids(tok, item)), job)
    return (emotion.id if emotion else ""), (action.id if action else "")


def beat_accuracy(neeko: NeekoLoRA, tok, sources: dict, rows: list[str], systems: dict, progress=None,
                  max_scenes: int | None = None) -> dict:
    """Per role with annotated held-out lines: emotion and action accuracy of each system ({name: role id ->
    weights}) and of the majority class of the role's annotated training lines. Empty when nothing is annotated.
    ``max_scenes``: the first held-out scenes of each role only, as the confusion matrix scores them."""
    out = {}
    for rid in rows:
        src = sources[rid]
        scenes = src.held[:max_scenes] if max_scenes else src.held
        held = [it for s in scenes for it in beat_items(src.profile, s)]
        if not held:
            continue
        train = [it for s in src.train for it in beat_items(src.profile, s)]
        truth = {"emotion": [it.emotion for it in held], "action": [it.action for it in held]}
        row = {"n": {k: sum(1 for t in v if t) for k, v in truth.items()}, "emotion": {}, "action": {},
               "truth": [[it.emotion, it.action] for it in held], "predicted": {}}
        for name, weights_for in systems.items():
            got = [predict(neeko, tok, it, weights_for(rid)) for it in held]
            if progress:
                progress(len(held))
            row["predicted"][name] = [list(g) for g in got]
            row["emotion"][name] = _share([g[0] for g in got], truth["emotion"])
            row["action"][name] = _share([g[1] for g in got], truth["action"])
        for kind in ("emotion", "action"):  # the most common beat of the role's annotated training lines, every time
            common = Counter(getattr(it, kind) for it in train if getattr(it, kind)).most_common(1)
            row[kind]["majority"] = _share([common[0][0]] * len(held), truth[kind]) if common else None
        out[rid] = row
    return out


def _share(predicted: list[str], truth: list[str]) -> float | None:
    """Share of the annotated items (truth not empty) predicted right; None when none is annotated."""
    pairs = [(p, t) for p, t in zip(predicted, truth) if t]
    return sum(p == t for p, t in pairs) / len(pairs) if pairs else None
