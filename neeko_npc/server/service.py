"""The Dialogue gRPC service: request checks, status codes, streaming. The engine does the work."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import grpc

from .. import defaults
from ..engine.generate import GenOptions, NonFiniteLogits, PoolBusy
from ..engine.npc_engine import ContextTooLarge
from ..roles.prompt import SceneInfo
from ..engine.roleset import InvalidBlend, UnknownRole
from ..roles.profile import ROLE_ID_RE, ProfileError, RoleProfile
from ..v1 import dialogue_pb2 as pb
from ..v1 import dialogue_pb2_grpc as pb_grpc

log = logging.getLogger("neeko_npc.server")

FINISH = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH, "cancelled": pb.FINISH_REASON_CANCELLED}


@dataclass
class Limits:
    """Every request limit, each a `serve` flag."""

    max_player_line_chars: int = defaults.MAX_PLAYER_LINE_CHARS
    max_scene_chars: int = defaults.MAX_SCENE_CHARS
    max_profile_chars: int = defaults.MAX_PROFILE_CHARS
    max_id_chars: int = defaults.MAX_ID_CHARS
    max_stop_strings: int = defaults.MAX_STOP_STRINGS
    max_stop_chars: int = defaults.MAX_STOP_CHARS
    max_session_npcs: int = defaults.MAX_SESSION_NPCS
    max_npc_line_chars: int = defaults.MAX_NPC_LINE_CHARS


class DialogueService(pb_grpc.DialogueServicer):
    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self.engine = None  # set once the model has loaded; until then requests get UNAVAILABLE
        self.load_error: str = ""
        self._ready = threading.Event()

    def set_engine(self, engine) -> None:
        self.engine = engine
        self._ready.set()

    def _engine(self, context):
        if self.engine is None:
            msg = f"the model failed to load: {self.load_error}" if self.load_error else "the model is still loading; retry shortly"
            context.abort(grpc.StatusCode.UNAVAILABLE, msg)
        return self.engine

    # -- checks ----------------------------------------------------------------------

    def _procedural(self, req: pb.SayRequest, context) -> tuple[list[tuple[str, float]] | None, RoleProfile | None]:
        """The blend and profile of a procedural NPC, or (None, None) for a hosted role."""
        if not req.blend and not req.HasField("profile"):
            return None, None
        if not req.blend or not req.HasField("profile"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a procedural NPC needs both `profile` and `blend`; "
                          "for a hosted role, leave both empty")
        p = req.profile
        size = sum(len(x) for x in (p.name, p.persona, p.style, p.knowledge, *p.example_lines))
        if size > self.limits.max_profile_chars:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"profile has {size} characters; the limit is "
                          f"{self.limits.max_profile_chars} (--max-profile-chars)")
        try:
            profile = RoleProfile(id=req.npc_id, name=p.name, persona=p.persona, style=p.style, knowledge=p.knowledge,
                                  example_lines=list(p.example_lines))
        except ProfileError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return [(w.role_id, w.weight) for w in req.blend], profile

    def _check(self, req: pb.SayRequest, context) -> tuple[SceneInfo, GenOptions]:
        L, e = self.limits, self.engine
        bad = None
        if not req.npc_id:
            bad = "npc_id is required"
        elif len(req.npc_id) > L.max_id_chars or len(req.session_id) > L.max_id_chars:
            bad = f"npc_id and session_id are limited to {L.max_id_chars} characters"
        elif len(req.player_line) > L.max_player_line_chars:
            bad = f"player_line has {len(req.player_line)} characters; the limit is {L.max_player_line_chars} (--max-player-line-chars)"
        s = req.scene
        scene = SceneInfo(location=s.location, time_of_day=s.time_of_day, weather=s.weather, npc_mood=s.npc_mood,
                          npc_activity=s.npc_activity, player_name=s.player_name, player_standing=s.player_standing,
                          recent_events=list(s.recent_events), nearby_characters=list(s.nearby_characters), facts=dict(s.facts))
        if bad is None and scene.text_size() > L.max_scene_chars:
            bad = f"scene context has {scene.text_size()} characters; the limit is {L.max_scene_chars} (--max-scene-chars)"
        o = req.options
        opts = GenOptions(max_tokens=o.max_tokens or e.config.default_max_tokens,
                          temperature=o.temperature if o.HasField("temperature") else defaults.TEMPERATURE,
                          top_p=o.top_p if o.HasField("top_p") else defaults.TOP_P,
                          seed=o.seed if o.HasField("seed") else None, stop=tuple(o.stop))
        if bad is None:
            if opts.max_tokens > e.config.max_tokens_limit:
                bad = f"max_tokens {opts.max_tokens} is over the limit of {e.config.max_tokens_limit} (--max-tokens-limit)"
            elif not 0 <= opts.temperature <= 2:
                bad = "temperature must be between 0 and 2"
            elif not 0 < opts.top_p <= 1:
                bad = "top_p must be in (0, 1]"
            elif len(opts.stop) > L.max_stop_strings or any(len(x) > L.max_stop_chars for x in opts.stop):
                bad = f"at most {L.max_stop_strings} stop strings of at most {L.max_stop_chars} characters"
        if bad:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad)
        return scene, opts

    # -- rpcs --------------------------------------------------------------------------

    def Say(self, request, context):
        engine = self._engine(context)
        scene, opts = self._check(request, context)
        blend, profile = self._procedural(request, context)
        t0 = time.perf_counter()
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        try:
            reply = engine.say(request.npc_id, request.player_line, scene, opts, session=request.session_id,
                               cancelled=lambda: not context.is_active(), deadline=deadline, blend=blend, profile=profile)
        except UnknownRole as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, exc.args[0])
        except (ContextTooLarge, InvalidBlend) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except PoolBusy as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        weights = [pb.RoleWeight(role_id=r, weight=w) for r, w in sorted(reply.weights.items())]
        try:
            yield from self._chunks(reply, weights, t0)
        except NonFiniteLogits as exc:
            context.abort(grpc.StatusCode.INTERNAL, str(exc))

    @staticmethod
    def _chunks(reply, weights: list, t0: float):
        ttft = None
        for chunk in reply.chunks:
            if chunk.text and ttft is None:
                ttft = (time.perf_counter() - t0) * 1000
            if not chunk.done:
                yield pb.SayChunk(text=chunk.text)
                continue
            if ttft is None:
                ttft = (time.perf_counter() - t0) * 1000
            yield pb.SayChunk(text=chunk.text, done=True, finish_reason=FINISH.get(chunk.finish, 0),
                              prompt_tokens=chunk.prompt_tokens, completion_tokens=chunk.completion_tokens,
                              cached_prompt_tokens=chunk.cached_tokens, time_to_first_token_ms=ttft, role_weights=weights)

    def _role(self, served) -> pb.Role:
        a = served.asset
        return pb.Role(id=a.id, name=a.profile.name, kind=a.kind, persona=a.profile.persona, style=a.profile.style,
                       weights=[pb.RoleWeight(role_id=r, weight=w) for r, w in sorted(served.weights.items())],
                       sha256=a.sha256, file=a.path)

    def ListRoles(self, request, context):
        snap = self._engine(context).roles.snapshot
        return pb.ListRolesResponse(roles=[self._role(r) for _, r in sorted(snap.roles.items())],
                                    problems=[pb.RoleProblem(file=f, error=e) for f, e in sorted(snap.problems.items())])

    def GetRole(self, request, context):
        snap = self._engine(context).roles.snapshot
        served = snap.roles.get(request.npc_id)
        if served is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no NPC {request.npc_id!r}; known: {', '.join(sorted(snap.roles)) or 'none'}")
        return self._role(served)

    def ReloadRoles(self, request, context):
        r = self._engine(context).roles.reload()
        log.info("roles reloaded: +%s ~%s -%s, %d problem(s)", r.added, r.changed, r.removed, len(r.problems))
        return pb.ReloadRolesResponse(added=r.added, changed=r.changed, removed=r.removed,
                                      problems=[pb.RoleProblem(file=f, error=e) for f, e in sorted(r.problems.items())])

    def GetSession(self, request, context):
        engine = self._engine(context)
        if not request.session_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id is required")
        npcs = engine.memory.export(request.session_id)
        return pb.SessionMemory(session_id=request.session_id, npcs=[
            pb.NpcMemory(npc_id=npc, exchanges=[pb.Exchange(player_line=a, npc_line=b) for a, b in turns])
            for npc, turns in sorted(npcs.items())])

    def RestoreSession(self, request, context):
        engine = self._engine(context)
        L, max_turns = self.limits, engine.memory.max_turns
        bad = None
        if not request.session_id or len(request.session_id) > L.max_id_chars:
            bad = f"session_id is required and limited to {L.max_id_chars} characters"
        elif len(request.npcs) > L.max_session_npcs:
            bad = f"the session holds {len(request.npcs)} NPCs; at most {L.max_session_npcs} may be restored"
        npcs: dict[str, list[tuple[str, str]]] = {}
        for m in request.npcs if bad is None else ():
            if not ROLE_ID_RE.match(m.npc_id):
                bad = f"npc_id {m.npc_id[:80]!r} is not a valid NPC id"
            elif m.npc_id in npcs:
                bad = f"npc_id {m.npc_id!r} appears twice"
            elif len(m.exchanges) > max_turns:
                bad = f"{m.npc_id!r} has {len(m.exchanges)} exchanges; the daemon keeps at most {max_turns}"
            elif any(len(x.player_line) > L.max_player_line_chars or len(x.npc_line) > L.max_npc_line_chars for x in m.exchanges):
                bad = (f"a line of {m.npc_id!r} is over the limit ({L.max_player_line_chars} characters for the player, "
                       f"{L.max_npc_line_chars} for the NPC)")
            if bad:
                break
            npcs[m.npc_id] = [(x.player_line, x.npc_line) for x in m.exchanges]
        if bad:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad)
        n = engine.restore_session(request.session_id, npcs)
        return pb.RestoreSessionResponse(npcs=len(npcs), exchanges=n)

    def ForgetSession(self, request, context):
        if not request.session_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id is required")
        n = self._engine(context).memory.forget(request.session_id, request.npc_id)
        return pb.ForgetSessionResponse(forgotten=n)
