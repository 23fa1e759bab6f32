"""The two things a benchmark can talk to: an engine in this process, or a running daemon over gRPC.

Both answer ``say`` with a :class:`Line`: client-side times (to the first text, to the end), the
token counts the engine reports, and the error if the line failed. Nothing here retries: an error
is a measured result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..errors import InputError
from ..engine.stream import GenOptions
from ..roles.prompt import Action, BeatAsk, EMOTIONS, SceneInfo

BENCH_SCENE = SceneInfo(location="the market square", time_of_day="late afternoon", weather="light rain",
                        npc_mood="busy", player_name="Ash", player_standing="a stranger",
                        recent_events=["a cart lost a wheel by the well"])
BENCH_BEATS = BeatAsk(EMOTIONS, (Action("trade", "offer something for sale"), Action("point_the_way", "point where to go"),
                                 Action("none", "nothing")))  # the beats section's question: actions no role learned


@dataclass
class Line:
    npc: str
    ttft: float  # seconds from the request to the first text (or to the end, if there was none)
    total: float  # seconds from the request to the end
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    text: str = ""
    error: str = ""
    cache: str = ""  # how the prompt was served: hot, snapshot or cold (in process only)
    beat: tuple[str, str] = ("", "")  # (emotion, action) the last chunk carried, when beats were asked

    @property
    def decode_rate(self) -> float | None:
        """Tokens per second after the first one (None for replies of fewer than 4 tokens)."""
        gap = self.total - self.ttft
        return (self.completion_tokens - 1) / gap if self.completion_tokens >= 4 and gap > 0 else None


def timed_line(npc: str, t0: float, chunks, cached, beat=lambda chunk: ("", "")) -> Line:
    """Consume a reply's chunks, timing its first text and its end; ``cached(last_chunk)`` is the reused prefix,
    ``beat(last_chunk)`` its (emotion, action). An engine's chunks also say how the prompt was served."""
    first = None
    text = []
    for chunk in chunks:
        if first is None and (chunk.text or chunk.done):
            first = time.perf_counter()
        text.append(chunk.text)
        if chunk.done:
            return Line(npc, first - t0, time.perf_counter() - t0, chunk.completion_tokens, chunk.prompt_tokens,
                        cached(chunk), "".join(text), cache=getattr(chunk, "cache", ""), beat=beat(chunk))
    raise RuntimeError("the reply ended without a final chunk")


def failed_line(npc: str, t0: float, error: str) -> Line:
    t = time.perf_counter() - t0
    return Line(npc, t, t, error=error)


class InProcess:
    """An engine (LlamaEngine or TorchEngine) in this process."""

    kind = "in-process"

    def __init__(self, engine, scene: SceneInfo = BENCH_SCENE):
        self.engine = engine
        self.scene = scene

    @property
    def roles(self) -> list[str]:
        return sorted(self.engine.roles().roles)

    def say(self, npc: str, line: str, session: str = "", max_tokens: int = 32, temperature: float = 0.0,
            seed: int | None = 0, beats: BeatAsk | None = None) -> Line:
        t0 = time.perf_counter()
        try:
            reply = self.engine.say(npc, line, self.scene, GenOptions(max_tokens=max_tokens, temperature=temperature, seed=seed),
                                    session=session, beats=beats)
            return timed_line(npc, t0, reply.chunks, lambda c: c.cached_tokens,
                              lambda c: (c.emotion.id if c.emotion else "", c.action.id if c.action else ""))
        except Exception as exc:  # measured, not raised: the concurrency section counts errors
            return failed_line(npc, t0, f"{type(exc).__name__}: {exc}")

    def learned_ask(self, npc: str) -> BeatAsk | None:
        """Every beat the NPC's learned head knows (its seven emotions and its actions), or None without one."""
        head = self.engine.roles().roles[npc].asset.beats
        if head is None or head.emotion is None:
            return None
        return BeatAsk(head.emotion.classes, tuple(Action(a) for a in head.action.classes) if head.action else ())

    def converse(self, npcs: list[str], turns: int, max_tokens: int = 16):
        """A conversation's chunks as (npc, turn, text, turn_done, seconds since the request)."""
        t0 = time.perf_counter()
        for c in self.engine.converse(npcs, self.scene, "the news of the day", turns=turns,
                                      opts=GenOptions(max_tokens=max_tokens, temperature=0.0)):
            yield c.npc, c.turn, c.text, c.turn_done or c.done, time.perf_counter() - t0

    def forget_cache(self) -> bool:
        """Drop every context's cached prefix, so the next line is cold."""
        self.engine.forget_cache()
        return True

    def history(self, session: str, npc: str) -> list[tuple[str, str]]:
        return self.engine.session(session).get(npc, [])

    def set_history(self, session: str, npc: str, turns: list[tuple[str, str]]) -> None:
        self.engine.restore_session(session, [(npc, turns)])


def bench_scene_message():
    """BENCH_SCENE as the daemon's SceneContext message."""
    from google.protobuf import json_format

    from ..v1 import dialogue_pb2 as pb

    return json_format.ParseDict({k: v for k, v in vars(BENCH_SCENE).items() if v}, pb.SceneContext())


class Remote:
    """A running daemon, through the Python client."""

    kind = "daemon"

    def __init__(self, client):
        self.client = client

    def learned_ask(self, npc: str) -> BeatAsk | None:
        """None: the daemon does not say which beats a role learned."""
        return None

    @property
    def roles(self) -> list[str]:
        import grpc

        try:
            return sorted(r.id for r in self.client.roles().roles)
        except grpc.RpcError as exc:
            raise InputError(f"cannot list the daemon's roles: {exc.code().name}: {exc.details()}") from None

    def say(self, npc: str, line: str, session: str = "", max_tokens: int = 32, temperature: float = 0.0,
            seed: int | None = 0, beats: BeatAsk | None = None) -> Line:
        import grpc

        from ..v1 import dialogue_pb2 as pb

        scene = bench_scene_message()
        opts = {"max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            opts["seed"] = seed
        t0 = time.perf_counter()
        try:
            ask = None
            if beats:
                ask = pb.BeatRequest(emotions=list(beats.emotions),
                                     actions=[pb.Action(id=a.id, description=a.description) for a in beats.actions])
            chunks = self.client.say(npc, line, scene=scene, session=session, timeout=300, beats=ask, **opts)
            return timed_line(npc, t0, chunks, lambda c: c.cached_prompt_tokens,
                              lambda c: (c.emotion.id if c.HasField("emotion") else "", c.action.id if c.HasField("action") else ""))
        except grpc.RpcError as exc:
            return failed_line(npc, t0, f"{exc.code().name}: {exc.details()}")
        except Exception as exc:
            return failed_line(npc, t0, f"{type(exc).__name__}: {exc}")

    def converse(self, npcs: list[str], turns: int, max_tokens: int = 16):
        scene = bench_scene_message()
        t0 = time.perf_counter()
        for c in self.client.converse(npcs, scene, "the news of the day", turns=turns, timeout=300,
                                      max_tokens=max_tokens, temperature=0.0):
            yield c.npc_id, c.turn, c.text, c.turn_done or c.done, time.perf_counter() - t0

    def prepare(self, npc: str, session: str = "") -> int:
        """What the Unity package's NpcVoice does as the player walks up: read the NPC's prompt up to the player's
        line now. Returns the tokens it read."""
        return self.client.prepare(npc, bench_scene_message(), session=session, timeout=300).read_tokens

    def forget_cache(self) -> bool:
        return False  # a daemon's KV cache is not ours to clear

    def history(self, session, npc):
        return None

    def set_history(self, session, npc, turns):
        raise NotImplementedError
