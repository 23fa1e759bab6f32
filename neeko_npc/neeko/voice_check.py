"""The bake's voice check: each trained role's own contrast.

Contrast (roles/sampling.py ``contrasted``) pushes an NPC's logits away from the base model's. One value does not
suit every voice: on The Office at contrast 1 the loudest role's block took most of the others' replies, and two
NPCs were recognised in 8% of theirs (docs/corpora.md, "A contrast per NPC"). So a bake tries each contrast of
``defaults.VOICE_CHECK_CONTRASTS`` on each role it trained:

- the prompts are the set's *training* prompts: the turns before each role's first line in its first
  ``defaults.VOICE_CHECK_PROMPTS`` training scenes, every role's, as attribution.prompts_from takes them; in a
  cast larger than ``defaults.VOICE_CHECK_MAX_PROMPTS // defaults.VOICE_CHECK_PROMPTS`` roles, fewer a role (at
  least one), so a role's check costs the same in a cast of 5 or 50;
- each checked role answers all of them, greedily, ``defaults.VOICE_CHECK_TOKENS`` tokens, as the eval's
  attribution answers (attribution.generate_replies);
- the eval's judge (attribution.CentroidClassifier: the nearest centroid of each role's training lines) names whose
  each reply sounds like;
- a role keeps the **lowest** contrast whose replies were given to it within noise as often as at its best one:
  the difference from the best, paired on the same prompts, has a 95% bootstrap interval that reaches 0
  (intervals.paired_accuracy). Contrast buys a louder voice with replies a language model finds less expected
  (docs/corpora.md, "The dial"), so it is spent only where the check can hear what it buys.

No held-out scene is read, so `neeko-npc eval`, which answers held-out prompts, scores the choice fairly. The judge
needs the others' lines to tell a voice from: a set of one role is not checked.
"""

from __future__ import annotations

from .. import defaults
from .attribution import CentroidClassifier, generate_replies, prompt_messages, prompts_from, role_lines
from .intervals import paired_accuracy


def choose_contrast(hits: dict[float, list[bool]]) -> float:
    """The lowest contrast whose replies were recognised within noise as often as at the best contrast (``hits``:
    contrast -> whether each reply, one a prompt, the same prompts at every contrast, was given to the role): the
    paired interval of its share minus the best's reaches 0."""
    share = {c: sum(h) / len(h) for c, h in hits.items()}
    best = max(share, key=lambda c: (share[c], -c))
    paired = paired_accuracy({c: list(h) for c, h in hits.items()}, against=best)["systems"]
    return min(c for c in hits if c == best or paired[c]["difference_ci"][1] >= 0)


def hits_text(hits: list[bool]) -> str:
    """A role's hits at one contrast as stored in its .nrole: "1" recognised, "0" not, one a prompt."""
    return "".join("1" if h else "0" for h in hits)


def stored_hits(check: dict) -> dict[float, list[bool]]:
    """A stored voice check's hits (``hits_text``), contrast -> one bool a prompt; {} for a check stored before
    hits were."""
    return {float(c): [x == "1" for x in h] for c, h in check.get("hits", {}).items()}


def prompts_per_role(n_roles: int, per_role: int = defaults.VOICE_CHECK_PROMPTS,
                     most: int = defaults.VOICE_CHECK_MAX_PROMPTS) -> int:
    """Training prompts the check takes from each role of a set of ``n_roles``: ``per_role``, fewer where the set's
    prompts would pass ``most``, at least one."""
    return max(1, min(per_role, most // max(1, n_roles)))


def voice_check(neeko, tok, sources: dict, checked: list[str], contrasts=defaults.VOICE_CHECK_CONTRASTS,
                per_role: int | None = None, reply_tokens: int = defaults.VOICE_CHECK_TOKENS,
                progress: bool = True) -> dict[str, dict]:
    """Per checked role (each a block loaded in ``neeko``, each in ``sources``: role id -> RoleSource of the whole
    set): {"contrast": the chosen one, "shares": {contrast: share of its replies given to it}, "hits": {contrast:
    ``hits_text``}, "prompts": n}. Empty
    when the set has fewer than two roles or no training prompt. ``per_role``: prompts taken from each role (None:
    ``prompts_per_role`` of the set's size)."""
    from tqdm.auto import tqdm

    rows = sorted(sources)
    per_role = prompts_per_role(len(rows)) if per_role is None else per_role
    prompts = [p for rid in rows for p in prompts_from(rid, sources[rid].train, per_role)]
    if len(rows) < 2 or not prompts or not checked:
        return {}
    judge = CentroidClassifier({rid: role_lines(rid, sources[rid].train) for rid in rows})
    convs = [prompt_messages(sources[rid].profile, p) for rid in checked for p in prompts]
    truth = [rid for rid in checked for _ in prompts]
    hits: dict[str, dict[float, list[bool]]] = {rid: {} for rid in checked}
    with tqdm(total=len(contrasts) * len(convs), desc="voice check", unit="reply", disable=not progress) as bar:
        for c in contrasts:  # every checked role's replies at one contrast in as few batches as they fit
            replies = generate_replies(neeko, tok, convs, [{rid: 1.0} for rid in truth], reply_tokens,
                                       progress=bar.update, contrast=c)
            given = judge.classify(replies)
            for rid in checked:
                hits[rid][c] = [g == t for g, t in zip(given, truth) if t == rid]
    return {rid: {"contrast": choose_contrast(h), "shares": {f"{c:g}": round(sum(x) / len(x), 4) for c, x in h.items()},
                  "hits": {f"{c:g}": hits_text(x) for c, x in h.items()}, "prompts": len(prompts)}
            for rid, h in hits.items()}
