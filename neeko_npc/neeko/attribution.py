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
from ..roles.sampling import contrasted, sample
from .embed import embed_texts
from .data import IGNORE
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
                     batch_size: int = 32, progress=None, sampling=None, seed: int = 0, contrast: float = 0.0) -> list[str]:
    """Replies, batched with left padding; ``weights`` is a role id, {role: weight} or None (base), for every
    conversation, or a list of those, one per conversation (rows of a batch may speak as different roles).

    Greedy unless ``sampling`` (anything with ``temperature`` and ``top_p``) has a temperature above 0: then each
    token is drawn by the daemon's own sampler (roles/sampling.py), reply ``i`` from a generator seeded ``seed + i``.
    ``contrast`` c > 0 decodes each token from ``contrasted`` logits: the blocks' pushed away from the base model's
    by c, within the blocks' plausible tokens (two forwards a token). On CPU a decode step costs about the same for
    3 rows as for 32 (it reads every weight once), so rows go in batches of 32."""
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
        if (sampling is not None and sampling.temperature > 0) or contrast > 0:
            rngs = [np.random.default_rng(seed + i + j) for j in range(len(chunk))]
            out += [tok.decode(g, skip_special_tokens=True).strip()
                    for g in _decoded(neeko, tok, input_ids, mask, w, max_new_tokens, sampling, rngs, contrast)]
        else:
            with neeko.gate(w):
                gen = neeko.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                           do_sample=False, pad_token_id=pad)
            out += [tok.decode(g[n:], skip_special_tokens=True).strip() for g in gen]
        if progress:
            progress(len(chunk))
    return out


@torch.no_grad()
def _decoded(neeko: NeekoLoRA, tok, input_ids, mask, w, max_new_tokens: int, sampling, rngs,
             contrast: float = 0.0) -> list[list[int]]:
    """Token-by-token decoding on a KV cache, every row's next token greedy or drawn by ``sample``; a row ends at an
    EOS. With ``contrast``, the base model decodes the same tokens on a cache of its own."""
    eos = neeko.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tok.eos_token_id}
    greedy = sampling is None or sampling.temperature <= 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    # logits_to_keep=1: only the last position's logits are read (the LM head is a fifth of a token's work)
    res = neeko.forward(w, input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    base = (neeko.forward(None, input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True,
                          logits_to_keep=1) if contrast > 0 else None)
    gen, done = [[] for _ in rngs], [False] * len(rngs)
    for _ in range(max_new_tokens):
        logits = res.logits[:, -1].float().numpy()
        if base is not None:
            logits = contrasted(logits, base.logits[:, -1].float().numpy(), contrast)
        nxt = []
        for j, rng in enumerate(rngs):
            t = tok.pad_token_id if done[j] else int(np.argmax(logits[j])) if greedy else sample(logits[j], sampling, rng)
            if not done[j] and t in eos:
                done[j] = True
            elif not done[j]:
                gen[j].append(t)
            nxt.append(t)
        if all(done):
            break
        mask = torch.cat([mask, torch.ones((len(rngs), 1), dtype=mask.dtype)], 1)
        pos = pos[:, -1:] + 1
        step = dict(input_ids=torch.tensor(nxt)[:, None], attention_mask=mask, position_ids=pos, use_cache=True)
        res = neeko.forward(w, past_key_values=res.past_key_values, **step)
        if base is not None:
            base = neeko.forward(None, past_key_values=base.past_key_values, **step)
    return gen


@torch.no_grad()
def reply_nll(neeko: NeekoLoRA, tok, conversations: list[list[dict]], replies: list[str],
              batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Coherence: how the base model alone (no block) reads each reply after its conversation. Returns the
    per-reply sums of the reply tokens' negative log-likelihoods and their token counts; a system's perplexity
    is exp(sum of sums / sum of counts). Rows are right-padded, so every real token keeps its position.

    The judge is the model that in-context prompting decodes greedily, so it favours those replies; the real
    held-out lines, scored the same way, show how far from the judge's own taste a human line sits."""
    sums, counts = np.zeros(len(replies)), np.zeros(len(replies))
    pad = tok.pad_token_id
    for i in range(0, len(replies), batch_size):
        prompts = [list(_ids(tok, m)) for m in conversations[i:i + batch_size]]
        answers = [tok(r, add_special_tokens=False)["input_ids"] for r in replies[i:i + batch_size]]
        rows = [p + a for p, a in zip(prompts, answers)]
        n = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
        labels = torch.tensor([[IGNORE] * len(p) + a + [IGNORE] * (n - len(p) - len(a)) for p, a in zip(prompts, answers)])
        nll = neeko.loss(None, input_ids, mask, labels, reduction="none").double().numpy()
        at = 0
        for j, a in enumerate(answers):  # the labelled tokens come row by row
            sums[i + j], counts[i + j] = nll[at:at + len(a)].sum(), len(a)
            at += len(a)
    return sums, counts


def loop_start(text: str, n: int = 3) -> int | None:
    """Where a reply starts saying again a run of ``n`` words it already said, as an index into ``text.split()``
    (words compared lower-case, without the punctuation around them), or None where no run comes twice.
    "Aye, aye, aye, aye" starts again at 1: the run "aye aye aye" at 1 is the one at 0 said again."""
    words = [w.strip(".,;:!?'\"()").lower() for w in text.split()]
    seen = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        if gram in seen:
            return i
        seen.add(gram)
    return None


def repeats(text: str, n: int = 3) -> bool:
    """Whether a reply says some run of ``n`` words twice ("Aye, aye, aye, aye"): a loop the base model's
    perplexity rewards, so the eval counts it beside."""
    return loop_start(text, n) is not None


def until_loop(text: str, n: int = 3) -> str:
    """The reply up to where it starts repeating itself (``loop_start``), the whole reply where it never does: what
    a judge's perplexity can read without being paid for the loop ("Aye, aye, aye, aye" reads as "Aye,")."""
    at = loop_start(text, n)
    return text if at is None else " ".join(text.split()[:at])


def on_topic(said: list[str | None], replies: list[str]) -> list[float]:
    """Coherence by a judge other than the base model: the cosine of each reply's MiniLM embedding with the line it
    answers. A reply that takes up what was said scores higher than one that could follow anything ("I'm not sure.")
    or a loop; one that repeats the line back scores highest, so the real lines show where an answer sits.
    ``said`` is None where the NPC opens the scene (nothing to answer): those replies are left out."""
    pairs = [(s, r) for s, r in zip(said, replies) if s is not None]
    if not pairs:
        return []
    e = embed_texts([t if t.strip() else "..." for p in pairs for t in p])
    return [float(x) for x in np.sum(e[0::2] * e[1::2], axis=1)]


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
