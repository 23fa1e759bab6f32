"""A small Python client for the daemon (used by `neeko-npc say` and `roles`, tests and benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
from google.protobuf import json_format

from ..v1 import dialogue_pb2 as pb
from ..v1 import dialogue_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"


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
            timeout: float | None = None, **options):
        req = pb.SayRequest(npc_id=npc_id, player_line=line, session_id=session, scene=scene,
                            options=pb.GenerationOptions(**options))
        return self.stub.Say(req, metadata=self.metadata, timeout=timeout)

    def roles(self, timeout: float = 10) -> pb.ListRolesResponse:
        return self.stub.ListRoles(pb.ListRolesRequest(), metadata=self.metadata, timeout=timeout)

    def close(self) -> None:
        self.channel.close()


def load_scene(path: str | Path) -> pb.SceneContext:
    """A SceneContext from JSON, field names as in the proto (location, time_of_day, facts, ...)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    try:
        return json_format.ParseDict(data, pb.SceneContext())
    except json_format.ParseError as exc:
        raise ValueError(f"{path}: not a valid scene ({exc})") from None
