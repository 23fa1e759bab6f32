"""Attribution: does a role's generated reply sound like that role?

Each system (our blocks, in-context prompting, a shared LoRA) answers the same held-out prompts as
every role. A reply is attributed to the role whose centroid of real training lines is nearest in
MiniLM embedding space (cosine); a role's accuracy is the share of its replies attributed to it. The
same classifier on the roles' real held-out lines shows how separable the roles are at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..roles.dialogue import Scene
from ..roles.profile import RoleProfile
from ..roles.prompt import chat_messages
from ..roles.sampling import sample
from .embed import embed_texts
from .model import NeekoLoRA


@dataclass
class Prompt:
    source_role: str  # whose held-out scene it comes from
    scene: Scene
    cut: int  # number of turns before the role's first line


def prompts_from(role_id: str, scenes: list[Scene], limit: int | None) -> list[Prompt]:
    """The turns before the role's first line in each held-out scene (scenes where the role speaks first
    after at least one other turn come first; a scene it opens gives an empty conversation)."""
    out = []
    for s in scenes:
        first = next((i for i, t in enumerate(s.turns) if t.speaker == role_id), None)
        if first is not None:
            out.append(Prompt(role_id, s, first))
    out.sort(key=lambda p: p.cut == 0)
    return out[:limit] if limit else out


def prompt_messages(profile: RoleProfile, p: Prompt) -> list[dict]:
    """Role ``profile`` answers the conversation of prompt ``p`` (other speakers become user turns)."""
    # npc="": every earlier turn, even one by the answering role, is someone the NPC hears (as the bake's
    # figures were measured)
    return chat_messages(profile, p.scene.scene, [(t.speaker, t.text) for t in p.scene.turns[: p.cut]], npc="")


@torch.no_grad()
def generate_replies(neeko: NeekoLoRA, tok, conversations: list[list[dict]], weights, max_new_tokens: int = 40,
                     batch_size: int = 32, progress=None, sampling=None, seed: int = 0) -> list[str]:
    """Replies, batched with left padding; ``weights`` is a role id, {role: weight} or None (base), for every
    conversation, or a list of those, one per conversation (rows of a batch may speak as different roles).

    Greedy unless ``sampling`` (anything with ``temperature`` and ``top_p``) has a temperature above 0: then each
    token is drawn by the daemon's own sampler (roles/sampling.py), reply ``i`` from a generator seeded ``seed + i``.
    On CPU a decode step costs about the same for 3 rows as for 32 (it reads every weight once): 36 replies of 16
    tokens took 20.1 s in batches of 8 and 11.9 s in batches of 32 on a 2-core machine."""
    out = []
    pad = tok.pad_token_id
    per_row = weights if isinstance(weights, list) else [weights] * len(conversations)
    for i in range(0, len(conversations), batch_size):
        chunk = conversations[i:i + batch_size]
        ids = [list(_ids(tok, m)) for m in chunk]
        n = max(len(x) for x in ids)
        input_ids = torch.tensor([[pad] * (n - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (n - len(x)) + [1] * len(x) for x in ids])
        rows = per_row[i:i + batch_size]
        w = None if all(r is None for r in rows) else neeko.weights([{} if r is None else r for r in rows])
        if sampling is not None and sampling.temperature > 0:
            rngs = [np.random.default_rng(seed + i + j) for j in range(len(chunk))]
            out += [tok.decode(g, skip_special_tokens=True).strip()
                    for g in _sampled(neeko, tok, input_ids, mask, w, max_new_tokens, sampling, rngs)]
        else:
            with neeko.gate(w):
                gen = neeko.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                           do_sample=False, pad_token_id=pad)
            out += [tok.decode(g[n:], skip_special_tokens=True).strip() for g in gen]
        if progress:
            progress(len(chunk))
    return out


@torch.no_grad()
def _sampled(neeko: NeekoLoRA, tok, input_ids, mask, w, max_new_tokens: int, sampling, rngs) -> list[list[int]]:
    """Token-by-token decoding on a KV cache, every row's next token from ``sample``; a row ends at an EOS."""
    eos = neeko.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tok.eos_token_id}
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    # logits_to_keep=1: only the last position's logits are read (the LM head is a fifth of a token's work)
    res = neeko.forward(w, input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    gen, done = [[] for _ in rngs], [False] * len(rngs)
    for _ in range(max_new_tokens):
        logits = res.logits[:, -1].float().numpy()
        nxt = []
        for j, rng in enumerate(rngs):
            t = tok.pad_token_id if done[j] else sample(logits[j], sampling, rng)
            if not done[j] and t in eos:
                done[j] = True
            elif not done[j]:
                gen[j].append(t)
            nxt.append(t)
        if all(done):
            break
        mask = torch.cat([mask, torch.ones((len(rngs), 1), dtype=mask.dtype)], 1)
        pos = pos[:, -1:] + 1
        res = neeko.forward(w, input_ids=torch.tensor(nxt)[:, None], attention_mask=mask, position_ids=pos,
                            past_key_values=res.past_key_values, use_cache=True)
    return gen


def _ids(tok, msgs):
    x = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    return x["input_ids"] if hasattr(x, "keys") else x


class CentroidClassifier:
    """Nearest role centroid of real lines, by cosine similarity of MiniLM embeddings."""

    def __init__(self, lines: dict[str, list[str]]):
        self.roles = sorted(lines)
        cents = []
        for r in self.roles:
            e = embed_texts(lines[r])
            c = e.mean(0)
            cents.append(c / np.linalg.norm(c))
        self.C = np.stack(cents)

    def classify(self, texts: list[str]) -> list[str]:
        if not texts:
            return []
        e = embed_texts([t if t.strip() else "..." for t in texts])
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        return [self.roles[i] for i in np.argmax(e @ self.C.T, axis=1)]


def accuracy(predicted: list[str], truth: list[str]) -> dict[str, float]:
    """Per true role: the share of its items attributed to it."""
    return {r: sum(h) / len(h) for r, h in sorted(hits_by_role(predicted, truth).items())}


def hits_by_role(predicted: list[str], truth: list[str]) -> dict[str, list[bool]]:
    """Per true role: whether each of its items was attributed to it."""
    out: dict[str, list[bool]] = {}
    for p, t in zip(predicted, truth):
        out.setdefault(t, []).append(p == t)
    return out


def role_lines(role_id: str, scenes: list[Scene]) -> list[str]:
    return [t.text for s in scenes for t in s.turns if t.speaker == role_id]
