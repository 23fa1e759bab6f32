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

    def fork(self) -> "TorchScorer":
        """A scorer that goes on from this one's state (a copy of its cache); this one stays as it is."""
        other = copy.copy(self)
        other.cache = copy.deepcopy(self.cache)
        return other

    @torch.no_grad()
    def extend(self, tokens: list[int]) -> np.ndarray:
        out = self.neeko.forward(self.w, input_ids=torch.tensor([tokens]), past_key_values=self.cache, use_cache=True,
                                 logits_to_keep=1)  # the state's next-token logits only
        self.cache = out.past_key_values
        return out.logits[0, -1].float().numpy()

    @torch.no_grad()
    def continuations(self, logits: np.ndarray, conts: list[list[int]]) -> list[float]:
        """Every continuation's log-probability after the state, in one batched forward on a copy of the cache
        (one forward a candidate read the model's weights a dozen times a beat). Rows are right-padded: under
        causal attention a row's own tokens never see its padding."""
        long = [c for c in conts if len(c) > 1]
        rows = []
        if long:
            width = max(len(c) - 1 for c in long)
            ids = torch.zeros((len(long), width), dtype=torch.long)
            for i, c in enumerate(long):
                ids[i, :len(c) - 1] = torch.tensor(c[:-1])
            cache = copy.deepcopy(self.cache)
            cache.batch_repeat_interleave(len(long))
            w = None if self.w is None else self.w.repeat(len(long), 1)
            out = self.neeko.forward(w, input_ids=ids, past_key_values=cache, use_cache=True).logits
            rows = [out[i, :len(c) - 1].float().numpy() for i, c in enumerate(long)]
        it = iter(rows)
        return [continuation_logprob(logits, next(it) if len(c) > 1 else None, c) for c in conts]


def predict(neeko: NeekoLoRA, tok, items: list[BeatItem], weights) -> list[tuple[str, str]]:
    """(emotion, action) a system chooses for each annotated line of one scene ("" for what a line does not ask).

    The scene's lines share their prompt's head (the system text): it is read once, and each line's beat prompt
    decodes the rest on a copy of it, as the daemon decodes a prompt on a cached prefix."""
    piece = lambda text: piece_ids(tok, text)  # noqa: E731
    prompts = [beat_prompt_ids(tok, it) for it in items]
    head = 0
    if len(prompts) > 1:
        shortest = min(len(p) for p in prompts) - 1  # each line keeps at least one token of its own to decode
        while head < shortest and all(p[head] == prompts[0][head] for p in prompts):
            head += 1
    root = TorchScorer(neeko, weights)
    if head:
        root.extend(prompts[0][:head])
    end, out = piece_ids(tok, tok.eos_token), []
    for item, ids in zip(items, prompts):
        scorer = root.fork()
        job = BeatJob(item.ask, None, piece, end)
        emotion, action = choose(scorer, scorer.extend(ids[head:]), job)
        out.append(((emotion.id if emotion else ""), (action.id if action else "")))
    return out


def beat_accuracy(neeko: NeekoLoRA, tok, sources: dict, rows: list[str], systems: dict, progress=None,
                  max_scenes: int | None = None) -> dict:
    """Per role with annotated held-out lines: emotion and action accuracy of each system ({name: role id ->
    weights}) and of the majority class of the role's annotated training lines. Empty when nothing is annotated.
    ``max_scenes``: the first held-out scenes of each role only, as the confusion matrix scores them."""
    out = {}
    for rid in rows:
        src = sources[rid]
        scenes = src.held[:max_scenes] if max_scenes else src.held
        by_scene = [items for s in scenes if (items := beat_items(src.profile, s))]
        held = [it for items in by_scene for it in items]
        if not held:
            continue
        train = [it for s in src.train for it in beat_items(src.profile, s)]
        truth = {"emotion": [it.emotion for it in held], "action": [it.action for it in held]}
        row = {"n": {k: sum(1 for t in v if t) for k, v in truth.items()}, "emotion": {}, "action": {},
               "truth": [[it.emotion, it.action] for it in held], "predicted": {}}
        for name, weights_for in systems.items():
            got = [g for items in by_scene for g in predict(neeko, tok, items, weights_for(rid))]
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
