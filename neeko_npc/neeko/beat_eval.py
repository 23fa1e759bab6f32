"""Beat accuracy: on held-out lines annotated with a beat, how often each system picks the written emotion and
action. The choice is serving's own (roles/beats.py ``choose``), here on a torch scorer over the same tokens the
daemon reads (neeko/data.py ``beat_prompt_ids``); the action is scored after the emotion the system chose."""

from __future__ import annotations

import copy
import threading
from collections import Counter

import numpy as np
import torch

from ..roles.beats import BeatJob, choose, continuation_logprob
from .beat_head import line_states
from .data import BeatItem, beat_items, beat_prompt_ids, piece_ids
from .intervals import paired_accuracy
from .model import NeekoLoRA


class TorchScorer:
    """roles/beats.py's Scorer for several rows at once on one KV cache: row ``i`` under gate weights
    ``weights[i]`` (a role id, {role: weight} or None for the base). Rows may append different numbers of
    tokens in one step: each is right-padded, and the padding is masked out of every later step."""

    def __init__(self, neeko: NeekoLoRA, weights: list):
        self.neeko = neeko
        self.w = None if all(w is None for w in weights) else neeko.weights([{} if w is None else w for w in weights])
        self.cache = None
        self.mask = torch.zeros((len(weights), 0), dtype=torch.long)
        self.next = [0] * len(weights)  # each row's next position

    def fork(self) -> "TorchScorer":
        """A scorer that goes on from this one's state (a copy of its cache); this one stays as it is."""
        other = copy.copy(self)
        other.cache, other.mask, other.next = copy.deepcopy(self.cache), self.mask.clone(), list(self.next)
        return other

    def _forward(self, select: list[int], tokens: list[list[int]], cache, mask):
        """One forward of ``tokens[b]`` on state row ``select[b]``; the output and the grown mask."""
        width = max(len(t) for t in tokens)
        ids = torch.zeros((len(tokens), width), dtype=torch.long)
        new = torch.zeros((len(tokens), width), dtype=torch.long)
        pos = torch.zeros((len(tokens), width), dtype=torch.long)
        for b, (t, row) in enumerate(zip(tokens, select)):
            ids[b, :len(t)], new[b, :len(t)] = torch.tensor(t), 1
            pos[b] = self.next[row] + torch.arange(width)
        mask = torch.cat([mask, new], 1)
        w = None if self.w is None else self.w[select]
        out = self.neeko.forward(w, input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                                 use_cache=True)
        return out, mask

    @torch.no_grad()
    def extend_rows(self, tokens: list[list[int]]) -> list[np.ndarray]:
        """Append ``tokens[i]`` (at least one) to row i; each row's logits after its last token."""
        if len(tokens) != len(self.next) or not all(tokens):
            raise ValueError("every row appends at least one token")
        out, self.mask = self._forward(list(range(len(tokens))), tokens, self.cache, self.mask)
        self.cache = out.past_key_values
        self.next = [n + len(t) for n, t in zip(self.next, tokens)]
        return [out.logits[i, len(t) - 1].float().numpy() for i, t in enumerate(tokens)]

    @torch.no_grad()
    def continuations_rows(self, logits: list[np.ndarray], conts: list[list[list[int]]]) -> list[list[float]]:
        """Every row's continuations' log-probabilities after its state, all in one batched forward on a copy of
        the cache (one forward a candidate read the model's weights a dozen times a beat); the state is kept."""
        select = [i for i, cs in enumerate(conts) for c in cs if len(c) > 1]
        seqs = [c[:-1] for cs in conts for c in cs if len(c) > 1]
        rows = []
        if seqs:
            cache = copy.deepcopy(self.cache)
            cache.batch_select_indices(torch.tensor(select))
            out, _ = self._forward(select, seqs, cache, self.mask[select])
            rows = [out.logits[b, :len(q)].float().numpy() for b, q in enumerate(seqs)]
        it = iter(rows)
        return [[continuation_logprob(logits[i], next(it) if len(c) > 1 else None, c) for c in cs]
                for i, cs in enumerate(conts)]


class _Lockstep:
    """Runs serving's ``choose`` once per row of a TorchScorer, each in its own thread, and serves every step
    that all the rows take together with one batched forward. The rows ask the same questions of the same
    candidates, so their calls come in the same order; only the tokens differ (each row's chosen emotion)."""

    def __init__(self, scorer: TorchScorer):
        self.scorer = scorer
        self.cond = threading.Condition()
        self.calls: dict[int, tuple] = {}
        self.results: dict[int, object] = {}
        self.live = len(scorer.next)
        self.error: BaseException | None = None

    def call(self, row: int, kind: str, args: tuple):
        with self.cond:
            self.calls[row] = (kind, args)
            self._run_if_all_waiting()
            while row not in self.results and self.error is None:
                self.cond.wait()
            if self.error is not None:
                raise self.error
            return self.results.pop(row)

    def finished(self) -> None:
        with self.cond:
            self.live -= 1
            self._run_if_all_waiting()

    def _run_if_all_waiting(self) -> None:
        if not self.calls or len(self.calls) < self.live:
            return
        rows = sorted(self.calls)
        kinds = {self.calls[r][0] for r in rows}
        try:
            if len(kinds) > 1 or len(rows) != len(self.scorer.next):
                raise RuntimeError("the rows' beat questions went out of step")
            if kinds == {"extend"}:
                got = self.scorer.extend_rows([self.calls[r][1][0] for r in rows])
            else:
                got = self.scorer.continuations_rows([self.calls[r][1][0] for r in rows], [self.calls[r][1][1] for r in rows])
            self.results.update(zip(rows, got))
        except BaseException as exc:  # every waiting row raises it
            self.error = exc
        self.calls.clear()
        self.cond.notify_all()

    def choose_all(self, prompt: list[list[int]], job: BeatJob) -> list[tuple]:
        out: list = [None] * len(prompt)

        def run(row: int) -> None:
            one = _RowScorer(self, row)
            try:
                out[row] = choose(one, one.extend(prompt[row]), job)
            except BaseException as exc:
                with self.cond:
                    self.error = self.error or exc
                    self.cond.notify_all()
            finally:
                self.finished()

        threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in range(len(prompt))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.error is not None:
            raise self.error
        return out


class _RowScorer:
    """One row of a lockstep TorchScorer, seen by ``choose`` as a Scorer of its own."""

    def __init__(self, lock: _Lockstep, row: int):
        self.lock, self.row = lock, row

    def extend(self, tokens: list[int]) -> np.ndarray:
        return self.lock.call(self.row, "extend", (tokens,))

    def continuations(self, logits: np.ndarray, conts: list[list[int]]) -> list[float]:
        return self.lock.call(self.row, "continuations", (logits, conts))


def shared_head(prompts: list[list[int]]) -> int:
    """How many leading tokens several prompts share, to be read once (0 for a single prompt); each prompt keeps at
    least one token of its own to decode."""
    head = 0
    if len(prompts) > 1:
        shortest = min(len(p) for p in prompts) - 1
        while head < shortest and all(p[head] == prompts[0][head] for p in prompts):
            head += 1
    return head


def predict(neeko: NeekoLoRA, tok, items: list[BeatItem], systems: list) -> list[list[tuple[str, str]]]:
    """For each system (a role id, {role: weight} or None), the (emotion, action) it chooses for each annotated
    line of one scene ("" for what a line does not ask). The systems are rows of one batch.

    The scene's lines share their prompt's head (the system text): it is read once, and each line's beat prompt
    decodes the rest on a copy of it, as the daemon decodes a prompt on a cached prefix."""
    piece = lambda text: piece_ids(tok, text)  # noqa: E731
    prompts = [beat_prompt_ids(tok, it) for it in items]
    head = shared_head(prompts)
    root = TorchScorer(neeko, systems)
    if head:
        root.extend_rows([prompts[0][:head]] * len(systems))
    end, out = piece_ids(tok, tok.eos_token), [[] for _ in systems]
    for item, ids in zip(items, prompts):
        job = BeatJob(item.ask, None, piece, end)
        for row, (emotion, action) in enumerate(_Lockstep(root.fork()).choose_all([ids[head:]] * len(systems), job)):
            out[row].append(((emotion.id if emotion else ""), (action.id if action else "")))
    return out


def learned(neeko: NeekoLoRA, tok, src, scenes, items: list[BeatItem], head,
            fallback: list[tuple[str, str]], weights=None) -> list[tuple[str, str]]:
    """What a learned head (a BeatHead, or a MixedHead) picks for the role's annotated lines ``items`` in ``scenes``
    (beat_items' order), from each line's last hidden state under ``weights`` (default: the role's own block), as
    the daemon reads it; a line whose ask the head does not cover gets ``fallback``'s pick (the question's, as
    served)."""
    states = line_states(neeko, tok, src.profile, scenes, src.profile.id if weights is None else weights)
    if len(states) != len(items):
        raise ValueError(f"{src.profile.id}: a scene is too long to read every line's state")
    out = []
    for (h, _, _), it, other in zip(states, items, fallback):
        if head.covers(it.ask):
            emotion, action = head.choose(h, it.ask)
            out.append(((emotion.id if emotion else ""), (action.id if action else "")))
        else:
            out.append(tuple(other))
    return out


def held_scenes(src, max_scenes: int | None = None) -> list:
    """The held-out scenes beat_accuracy scores: all of them, or the first ``max_scenes``."""
    return src.held[:max_scenes] if max_scenes else src.held


def held_lines(sources: dict, rows: list[str], max_scenes: int | None = None) -> int:
    """How many annotated held-out lines beat_accuracy scores for each system (a progress bar's total)."""
    return sum(len(beat_items(sources[r].profile, s)) for r in rows for s in held_scenes(sources[r], max_scenes))


def beat_accuracy(neeko: NeekoLoRA, tok, sources: dict, rows: list[str], systems: dict, progress=None,
                  max_scenes: int | None = None, heads: dict | None = None) -> dict:
    """Per role with annotated held-out lines: emotion and action accuracy of each system ({name: role id ->
    weights}, asked the beat question), of a learned head (``heads``: role id -> BeatHead or MixedHead; system
    "learned", read under the first system's weights and falling back to its question where the head does not
    cover the ask) and of the
    majority class of the role's annotated training lines. Empty when nothing is annotated. ``max_scenes``: the
    first held-out scenes of each role only, as the confusion matrix scores them."""
    out = {}
    for rid in rows:
        src = sources[rid]
        scenes = held_scenes(src, max_scenes)
        by_scene = [items for s in scenes if (items := beat_items(src.profile, s))]
        held = [it for items in by_scene for it in items]
        if not held:
            continue
        train = [it for s in src.train for it in beat_items(src.profile, s)]
        truth = {"emotion": [it.emotion for it in held], "action": [it.action for it in held]}
        row = {"n": {k: sum(1 for t in v if t) for k, v in truth.items()}, "emotion": {}, "action": {},
               "truth": [[it.emotion, it.action] for it in held], "predicted": {}}
        names = list(systems)
        got_by = {name: [] for name in names}
        for items in by_scene:  # every system a row of the same batch
            for name, got in zip(names, predict(neeko, tok, items, [systems[n](rid) for n in names])):
                got_by[name] += got
            if progress:
                progress(len(items) * len(names))
        if heads and heads.get(rid) is not None:
            got_by["learned"] = learned(neeko, tok, src, scenes, held, heads[rid], got_by[names[0]], systems[names[0]](rid))
            names.append("learned")
        for name in names:
            got = got_by[name]
            row["predicted"][name] = [list(g) for g in got]
            row["emotion"][name] = _share([g[0] for g in got], truth["emotion"])
            row["action"][name] = _share([g[1] for g in got], truth["action"])
        for kind in ("emotion", "action"):  # the most common beat of the role's annotated training lines, every time
            common = Counter(getattr(it, kind) for it in train if getattr(it, kind)).most_common(1)
            row[kind]["majority"] = _share([common[0][0]] * len(held), truth[kind]) if common else None
            row.setdefault("majority", []).append(common[0][0] if common else "")
        out[rid] = row
    return out


def _share(predicted: list[str], truth: list[str]) -> float | None:
    """Share of the annotated items (truth not empty) predicted right; None when none is annotated."""
    pairs = [(p, t) for p, t in zip(predicted, truth) if t]
    return sum(p == t for p, t in pairs) / len(pairs) if pairs else None


def pooled(beats: dict, seed: int = 0) -> dict:
    """Every annotated held-out line of every role in one pool, per kind: each system's accuracy and its
    difference from the majority class (each line scored against its own role's majority; a role with no annotated
    training line of the kind is left out), with paired bootstrap intervals (intervals.py). ``lines_for_10_points``:
    about how many lines would narrow the best system's difference interval to 10 points either side (the
    half-width shrinks as one over the square root of lines)."""
    out = {}
    for k, kind in enumerate(("emotion", "action")):
        hits: dict[str, list[bool]] = {}
        for row in beats.values():
            if not row["majority"][k]:  # no annotated training line of this kind: nothing to compare with
                continue
            for i, t in enumerate(row["truth"]):
                if not t[k]:
                    continue
                for name, got in row["predicted"].items():
                    hits.setdefault(name, []).append(got[i][k] == t[k])
                hits.setdefault("majority", []).append(row["majority"][k] == t[k])
        if not hits.get("majority"):
            continue
        res = paired_accuracy(hits, "majority", seed=seed)
        best = max((v for n, v in res["systems"].items() if n != "majority"), key=lambda v: v["accuracy"], default=None)
        if best is not None and best["half_width"] > 0:
            res["lines_for_10_points"] = int(np.ceil(res["items"] * (best["half_width"] / 0.10) ** 2))
        out[kind] = res
    return out
