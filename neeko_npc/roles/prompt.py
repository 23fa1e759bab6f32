"""The prompt an NPC speaks under, once: training, eval and serving build their chat messages here.

* the system message is ``RoleProfile.system_text`` with the scene at its end (after the stable profile, so
  a changed time of day or mood still leaves the profile's tokens reusable in the KV cache);
* the NPC's own lines are assistant messages, the player's are user messages, anyone else's are user
  messages as "Name: text";
* a conversation that has no turn yet (an NPC speaking first) opens with :data:`OPENING_LINE` as the player's.
  Training keeps a scene the NPC opens as it is written (system, then the NPC's line).

After a line, its *beat* (what the NPC feels and does) is asked in one more exchange: a user message
(:func:`beat_question`: the feelings and the actions on offer) and an assistant answer built from
:func:`beat_pieces` ("Feeling: angry", "Action: call_guards"). The line itself is rendered as without beats,
so asking for a beat never changes the line. Training labels the answer's pieces; serving scores every
candidate piece under the NPC's block and keeps the likeliest (never free text).

Serving renders the messages with :class:`ChatTemplate` (the model's own Jinja template) and llama.cpp's
tokenizer; training renders them with the Hugging Face tokenizer's template. A test on the real model checks
that both give the same token ids for the same profile, scene, history and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .profile import RoleProfile

OPENING_LINE = "(The player approaches you.)"
EMOTIONS = ("neutral", "happy", "sad", "angry", "afraid", "surprised", "disgusted")  # a beat's feelings, in order
EMOTION_PIECE = "Feeling:"  # the beat answer: "Feeling:" + " angry" + "\nAction:" + " open_shop" + end of turn
ACTION_PIECE = "\nAction:"
BEAT_ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # an action's id (and every emotion's)


@dataclass(frozen=True)
class Action:
    """An action the game offers in a scene: an id the game acts on, and what it means."""

    id: str
    description: str = ""


@dataclass(frozen=True)
class BeatAsk:
    """What a line's beat may be: feelings (empty: no emotion asked) and actions (empty: no action asked)."""

    emotions: tuple[str, ...] = ()
    actions: tuple[Action, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.emotions or self.actions)


@dataclass
class SceneInfo:
    location: str = ""
    time_of_day: str = ""
    weather: str = ""
    npc_mood: str = ""
    npc_activity: str = ""
    player_name: str = ""
    player_standing: str = ""
    recent_events: list[str] = field(default_factory=list)
    nearby_characters: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    def text_size(self) -> int:
        return (sum(len(v) for v in (self.location, self.time_of_day, self.weather, self.npc_mood, self.npc_activity,
                                     self.player_name, self.player_standing))
                + sum(len(x) for x in self.recent_events) + sum(len(x) for x in self.nearby_characters)
                + sum(len(k) + len(v) for k, v in self.facts.items()))


def render_scene(s: SceneInfo) -> str:
    """Scene context as short sentences; empty fields are left out."""
    parts = []
    where = ", ".join(x for x in (s.location, s.time_of_day, s.weather) if x)
    if where:
        parts.append(f"Scene: {where}.")
    if s.npc_mood or s.npc_activity:
        parts.append("You are " + " and ".join(x for x in (s.npc_mood, s.npc_activity) if x) + ".")
    if s.player_name:
        who = f"The player is {s.player_name}"
        parts.append(who + (f" ({s.player_standing})." if s.player_standing else "."))
    elif s.player_standing:
        parts.append(f"The player is {s.player_standing} to you.")
    if s.nearby_characters:
        parts.append("Nearby: " + ", ".join(s.nearby_characters) + ".")
    if s.recent_events:
        parts.append("Recently: " + " ".join(e.rstrip(".") + "." for e in s.recent_events))
    for k, v in sorted(s.facts.items()):
        parts.append(f"{k}: {v}.")
    return " ".join(parts)


class ChatTemplate:
    """The model's Jinja chat template (from its GGUF), rendered in a sandbox as transformers does."""

    def __init__(self, template: str, bos: str = "", eos: str = ""):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg):
            raise ValueError(msg)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        self.template = env.from_string(template)
        self.bos, self.eos = bos, eos

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.bos, eos_token=self.eos)


def chat_messages(profile: RoleProfile, scene_text: str, turns: list[tuple[str, str]], open_with_player: bool = True,
                  npc: str | None = None) -> list[dict]:
    """Chat messages for ``profile`` in a conversation of (speaker, text) turns. The speaker ``npc`` (default
    ``profile.id``) is the NPC (assistant); "player" (any case) is the player (user); anyone else is a user
    message "Name: text". With ``open_with_player``, a conversation with no turn yet gets :data:`OPENING_LINE`
    as the player's."""
    npc = profile.id if npc is None else npc
    msgs = [{"role": "system", "content": profile.system_text(scene_text)}]
    for speaker, text in turns:
        if speaker == npc:
            msgs.append({"role": "assistant", "content": text})
        elif speaker.lower() == "player":
            msgs.append({"role": "user", "content": text})
        else:
            msgs.append({"role": "user", "content": f"{speaker}: {text}"})
    if open_with_player and len(msgs) == 1:
        msgs.append({"role": "user", "content": OPENING_LINE})
    return msgs


def build_messages(profile: RoleProfile, scene: SceneInfo, history: list[tuple[str, str]], player_line: str) -> list[dict]:
    """What the daemon sends for one line: the remembered (player, NPC) exchanges, then the player's line
    (an empty line makes the NPC speak first)."""
    turns = [t for said, replied in history for t in (("player", said), (profile.id, replied))]
    return chat_messages(profile, render_scene(scene), turns + [("player", player_line.strip() or OPENING_LINE)])


def beat_question(ask: BeatAsk) -> str:
    """The user message that asks for the beat of the line just said (the system text already says who "you" are)."""
    what = " and ".join(x for x in ("how do you feel" if ask.emotions else "", "what do you do" if ask.actions else "") if x)
    parts = [f"(Beat: {what} now?"]
    if ask.emotions:
        parts.append("Feelings: " + ", ".join(ask.emotions) + ".")
    if ask.actions:
        parts.append("Actions: " + "; ".join(f"{a.id} ({a.description})" if a.description else a.id for a in ask.actions) + ".")
    return " ".join(parts) + ")"


def beat_messages(line_messages: list[dict], line: str, ask: BeatAsk) -> list[dict]:
    """The messages a beat is asked under: the line's own messages, the line as the NPC's, then the question."""
    return line_messages + [{"role": "assistant", "content": line}, {"role": "user", "content": beat_question(ask)}]


def beat_pieces(emotion: str | None = None, action: str | None = None) -> list[str]:
    """The answer's text pieces, each tokenized on its own (training and serving alike): the emotion's two, then
    the action's two; the end of turn follows the last."""
    out = []
    if emotion is not None:
        out += [EMOTION_PIECE, " " + emotion]
    if action is not None:
        out += [ACTION_PIECE if out else ACTION_PIECE.lstrip(), " " + action]
    return out
