"""A small Python client for the daemon (used by `neeko-npc say` and `roles`, tests and benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
from google.protobuf import json_format

from .. import defaults
from ..v1 import dialogue_pb2 as pb
from ..v1 import dialogue_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = defaults.ADDRESS


class Client:
    def __init__(self, address: str = DEFAULT_ADDRESS, token: str = "", tls_ca: str | Path | None = None,
                 server_name: str | None = None):
        if tls_ca:
            creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
            opts = [("grpc.ssl_target_name_override", server_name)] if server_name else []
            self.channel = grpc.secure_channel(address, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.DialogueStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []

    def say(self, npc_id: str, line: str, scene: pb.SceneContext | None = None, session: str = "",
            timeout: float | None = None, profile: pb.NpcProfile | None = None, blend: dict[str, float] | None = None,
            beats: pb.BeatRequest | None = None, **options):
        """Stream a line. ``profile`` and ``blend`` (role id -> weight) make ``npc_id`` a procedural NPC; with
        ``beats``, the last chunk carries the line's emotion and action."""
        req = self.request(npc_id, line, scene, session, profile, blend, **options)
        if beats is not None:
            req.beats.CopyFrom(beats)
        return self.stub.Say(req, metadata=self.metadata, timeout=timeout)

    def converse(self, npc_ids: list[str], scene: pb.SceneContext | None = None, topic: str = "", opening_line: str = "",
                 turns: int = 0, order: int = 0, interjections=(), timeout: float | None = None, **options):
        """Stream a conversation among hosted NPCs; ``interjections`` yields player lines to send after the start
        (an iterator may block: each line is sent when it yields)."""
        start = pb.ConverseStart(npc_ids=npc_ids, scene=scene, topic=topic, opening_line=opening_line, turns=turns,
                                 order=order, options=pb.GenerationOptions(**options))

        def requests():
            yield pb.ConverseRequest(start=start)
            for line in interjections:
                yield pb.ConverseRequest(player_line=line)

        return self.stub.Converse(requests(), metadata=self.metadata, timeout=timeout)

    def prepare(self, npc_id: str, scene: pb.SceneContext | None = None, session: str = "", timeout: float | None = 10,
                profile: pb.NpcProfile | None = None, blend: dict[str, float] | None = None) -> pb.PrepareResponse:
        """Read the NPC's prompt up to the player's line now (the player is walking up); see the proto."""
        return self.stub.Prepare(self.request(npc_id, "", scene, session, profile, blend), metadata=self.metadata,
                                 timeout=timeout)

    @staticmethod
    def request(npc_id: str, line: str = "", scene: pb.SceneContext | None = None, session: str = "",
                profile: pb.NpcProfile | None = None, blend: dict[str, float] | None = None, **options) -> pb.SayRequest:
        return pb.SayRequest(npc_id=npc_id, player_line=line, session_id=session, scene=scene, profile=profile,
                             blend=[pb.RoleWeight(role_id=r, weight=w) for r, w in (blend or {}).items()],
                             options=pb.GenerationOptions(**options))

    def get_session(self, session: str, timeout: float = 10) -> pb.SessionMemory:
        return self.stub.GetSession(pb.GetSessionRequest(session_id=session), metadata=self.metadata, timeout=timeout)

    def restore_session(self, memory: pb.SessionMemory, timeout: float = 10) -> pb.RestoreSessionResponse:
        return self.stub.RestoreSession(memory, metadata=self.metadata, timeout=timeout)

    def roles(self, timeout: float = 10) -> pb.ListRolesResponse:
        return self.stub.ListRoles(pb.ListRolesRequest(), metadata=self.metadata, timeout=timeout)

    def close(self) -> None:
        self.channel.close()


def parse_blend(text: str) -> dict[str, float]:
    """``innkeeper=0.7,merchant=0.3`` -> {"innkeeper": 0.7, "merchant": 0.3}. The daemon checks the rest."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        rid, eq, w = part.partition("=")
        try:
            weight = float(w)
        except ValueError:
            weight = None
        if not part or not eq or not rid.strip() or weight is None:
            raise ValueError(f"blend {text!r}: write ROLE=WEIGHT pairs separated by commas, e.g. innkeeper=0.7,merchant=0.3")
        if rid.strip() in out:
            raise ValueError(f"blend {text!r} names {rid.strip()!r} twice")
        out[rid.strip()] = weight
    return out


def beat_request(emotion: bool = False, emotions: str = "", actions: list[str] = ()) -> pb.BeatRequest | None:
    """A BeatRequest from the CLI's words: ``emotions`` "happy,angry" narrows (and implies) the emotion; each
    action is "ID" or "ID:what it means". None when nothing is asked. The daemon checks the rest."""
    narrowed = [e.strip() for e in emotions.split(",") if e.strip()]
    acts = []
    for a in actions:
        aid, _, desc = a.partition(":")
        if not aid.strip():
            raise ValueError(f"action {a!r}: write ID or ID:DESCRIPTION, e.g. open_shop:show the shop window")
        acts.append(pb.Action(id=aid.strip(), description=desc.strip()))
    if not (emotion or narrowed or acts):
        return None
    return pb.BeatRequest(emotion=bool(emotion or narrowed), emotions=narrowed, actions=acts)


def describe_beats(chunk: pb.SayChunk) -> str:
    """"[feels angry 0.62 · does call_guards 0.91]" for a last chunk with beats; "" without."""
    parts = []
    if chunk.HasField("emotion"):
        parts.append(f"feels {chunk.emotion.id} {chunk.emotion.probability:.2f}")
    if chunk.HasField("action"):
        parts.append(f"does {chunk.action.id} {chunk.action.probability:.2f}")
    return f"[{' · '.join(parts)}]" if parts else ""


def load_npc_profile(path: str | Path, npc_id: str) -> pb.NpcProfile:
    """A procedural NPC's profile from a role profile JSON or a Character Card V2 (docs/making-roles.md, 'Role profile
    format'). The id may be left out; if given, it must be ``npc_id``."""
    from ..roles.profile import RoleProfile

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON profile ({exc})") from None
    if isinstance(data, dict) and data.get("spec") != "chara_card_v2":
        data = {"id": npc_id, **data}
    p = RoleProfile.from_dict(data, source=str(path))
    if p.id != npc_id:
        raise ValueError(f"{path}: the profile's id {p.id!r} is not the NPC id {npc_id!r}; drop the id or make them match")
    return pb.NpcProfile(name=p.name, persona=p.persona, style=p.style, knowledge=p.knowledge, example_lines=p.example_lines)


def load_scene(path: str | Path) -> pb.SceneContext:
    """A SceneContext from JSON, field names as in the proto (location, time_of_day, facts, ...)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    try:
        return json_format.ParseDict(data, pb.SceneContext())
    except json_format.ParseError as exc:
        raise ValueError(f"{path}: not a valid scene ({exc})") from None
