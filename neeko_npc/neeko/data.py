"""Turning scenes into training examples with the model's own chat template.

The role profile (and the scene text) is the system message, the NPC's own
lines are assistant messages, everyone else's are user messages. Labels are -100
everywhere except the NPC's lines (content plus the end-of-turn token), so the
loss is only on what the NPC says.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..roles.dialogue import Scene
from ..roles.profile import RoleProfile
from ..roles.prompt import EMOTIONS, BeatAsk, beat_messages, beat_pieces, chat_messages

IGNORE = -100


@dataclass
class Example:
    role: str
    input_ids: list[int]
    labels: list[int]


def scene_messages(profile: RoleProfile, scene: Scene) -> list[dict]:
    """A training scene as it is written: the NPC's lines are what the block learns to say."""
    return chat_messages(profile, scene.scene, [(t.speaker, t.text) for t in scene.turns], open_with_player=False)


def _ids(tok, msgs, gen: bool = False) -> list[int]:
    out = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def _encode_messages(tok, msgs: list[dict], train_on: set[int]) -> tuple[list[int], list[int]]:
    """input_ids and labels for msgs; only assistant messages with an index in train_on carry labels."""
    ids: list[int] = []
    labels: list[int] = []
    for i in range(1, len(msgs)):
        if msgs[i]["role"] != "assistant":
            continue
        head = _ids(tok, msgs[:i], gen=True)
        full = _ids(tok, msgs[: i + 1])
        if full[: len(head)] != head or head[: len(ids)] != ids:
            raise InputError("the chat template does not extend its prefix token for token; cannot mask turns")
        labels += [IGNORE] * (len(head) - len(ids))
        target = full[len(head):]
        labels += target if i in train_on else [IGNORE] * len(target)
        ids = full
    tail = _ids(tok, msgs)
    if tail[: len(ids)] != ids:
        raise InputError("the chat template does not extend its prefix token for token; cannot mask turns")
    labels += [IGNORE] * (len(tail) - len(ids))
    return tail, labels


def piece_ids(tok, text: str) -> list[int]:
    """A text piece's ids on its own, as serving tokenizes it (Engine.piece_tokens): no BOS, specials parsed."""
    return list(tok.encode(text, add_special_tokens=False))


@dataclass
class BeatItem:
    """One NPC line annotated with a beat: the messages before it, the line, what is asked, and the answer."""

    messages: list[dict]
    line: str
    ask: BeatAsk
    emotion: str
    action: str


def beat_items(profile: RoleProfile, scene: Scene) -> list[BeatItem]:
    """The NPC's annotated lines in a scene: asked the seven emotions when the turn has an emotion, the scene's
    actions when it has an action (a request would ask the same)."""
    out = []
    turns = [(t.speaker, t.text) for t in scene.turns]
    for j, t in enumerate(scene.turns):
        if t.speaker == profile.id and (t.emotion or t.action):
            ask = BeatAsk(EMOTIONS if t.emotion else (), scene.actions if t.action else ())
            out.append(BeatItem(chat_messages(profile, scene.scene, turns[:j], open_with_player=False), t.text, ask,
                                t.emotion, t.action))
    return out


def beat_prompt_ids(tok, item: BeatItem) -> list[int]:
    """The beat prompt of an annotated line, as the daemon reads it: ending where the answer begins."""
    return _ids(tok, beat_messages(item.messages, item.line, item.ask), gen=True)


def encode_beats(tok, profile: RoleProfile, scene: Scene, max_len: int) -> list[Example]:
    """One example per NPC line annotated with a beat: the line's messages, the line, the beat question and the
    answer's pieces (roles/prompt.py), the only labelled tokens. The oldest turns are dropped until it fits."""
    out = []
    for item in beat_items(profile, scene):
        answer = [i for piece in beat_pieces(item.emotion or None, item.action or None) for i in piece_ids(tok, piece)]
        answer += piece_ids(tok, tok.eos_token)
        while True:
            head = beat_prompt_ids(tok, item)
            if len(head) + len(answer) <= max_len or len(item.messages) <= 1:
                break
            item.messages = [item.messages[0]] + item.messages[2:]  # the oldest turn goes, the system text stays
        if len(head) + len(answer) <= max_len:
            out.append(Example(profile.id, head + answer, [IGNORE] * len(head) + answer))
    return out


def encode_scene(tok, profile: RoleProfile, scene: Scene, max_len: int) -> list[Example]:
    """One example per scene; a scene too long for max_len becomes one example per NPC line,
    each with the oldest turns dropped until it fits. Lines annotated with beats add their beat examples."""
    return encode_lines(tok, profile, scene, max_len) + encode_beats(tok, profile, scene, max_len)


def encode_lines(tok, profile: RoleProfile, scene: Scene, max_len: int) -> list[Example]:
    """encode_scene without the beats: the NPC's lines only (held-out loss measures the voice; beats are scored
    by accuracy, neeko/beat_eval.py)."""
    msgs = scene_messages(profile, scene)
    npc_idx = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    if not npc_idx:
        return []
    ids, labels = _encode_messages(tok, msgs, set(npc_idx))
    if len(ids) <= max_len:
        return [Example(profile.id, ids, labels)]
    out = []
    for j in npc_idx:
        window = msgs[: j + 1]
        while True:
            ids, labels = _encode_messages(tok, window, {len(window) - 1})
            if len(ids) <= max_len or len(window) <= 2:
                break
            window = [window[0]] + window[2:]
        if len(ids) > max_len:
            ids, labels = ids[:max_len], labels[:max_len]  # system text alone is too long; keep what fits
        if any(x != IGNORE for x in labels):
            out.append(Example(profile.id, ids, labels))
    return out


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    lab = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    att = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        L = len(e.input_ids)
        ids[i, :L] = torch.tensor(e.input_ids)
        lab[i, :L] = torch.tensor(e.labels)
        att[i, :L] = 1
    return {"input_ids": ids, "labels": lab, "attention_mask": att}
