"""The Dialogue gRPC service: it only translates. Protobuf in, engine facade call, protobuf or status code out;
every check and every decision is the engine's (engine/facade.py)."""

from __future__ import annotations

import logging
import threading
import time

import grpc

from .. import defaults
from ..errors import Kind, NeekoError
from ..engine.limits import check_procedural
from ..engine.stream import GenOptions
from ..roles.prompt import EMOTIONS, Action, BeatAsk, SceneInfo
from ..v1 import dialogue_pb2 as pb
from ..v1 import dialogue_pb2_grpc as pb_grpc
from .words import CACHE, FINISH, ORDER_WORD

log = logging.getLogger("neeko_npc.server")

# The one mapping of expected failures to status codes: an error's kind (errors.py) picks its code.
STATUS = {Kind.INVALID: grpc.StatusCode.INVALID_ARGUMENT, Kind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
          Kind.BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED, Kind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
          Kind.BROKEN: grpc.StatusCode.INTERNAL}


class Malformed:
    """A request message that did not parse (app.add_dialogue_service reads every message leniently)."""

    def __init__(self, error: str):
        self.error = error


def malformed_detail(message: str, m: Malformed) -> str:
    return f"the request is not a valid {message} message ({m.error})"


def abort_malformed(context, message: str, m: Malformed) -> None:
    """End the call with INVALID_ARGUMENT for a ``message`` that did not parse, and one log line."""
    log.warning("refused a request that is not a valid %s message: %s", message, m.error)
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, malformed_detail(message, m))


def refuse_malformed(method, message: str):
    """``method`` for a single-request RPC, answering a request that did not parse with abort_malformed."""

    def run(request, context):
        if isinstance(request, Malformed):
            abort_malformed(context, message, request)
        return method(request, context)

    return run


class DialogueService(pb_grpc.DialogueServicer):
    def __init__(self, max_converse: int = defaults.MAX_CONVERSE, converse_start_s: float = defaults.CONVERSE_START_S):
        self.engine = None  # set once the model has loaded; until then requests get UNAVAILABLE
        self.load_error: str = ""
        self._ready = threading.Event()
        # Each Converse holds a worker thread for as long as it streams: at most max_converse at once, so the
        # other workers always answer health checks, ListRoles and lines.
        self.max_converse = max_converse
        self.converse_start_s = converse_start_s
        self._converse_slots = threading.BoundedSemaphore(max_converse)

    def set_engine(self, engine) -> None:
        self.engine = engine
        self._ready.set()

    def _engine(self, context):
        if self.engine is None:
            msg = f"the model failed to load: {self.load_error}" if self.load_error else "the model is still loading; retry shortly"
            context.abort(grpc.StatusCode.UNAVAILABLE, msg)
        return self.engine

    # -- protobuf to engine types ------------------------------------------------------------------

    @staticmethod
    def _scene(s: pb.SceneContext) -> SceneInfo:
        return SceneInfo(location=s.location, time_of_day=s.time_of_day, weather=s.weather, npc_mood=s.npc_mood,
                         npc_activity=s.npc_activity, player_name=s.player_name, player_standing=s.player_standing,
                         recent_events=list(s.recent_events), nearby_characters=list(s.nearby_characters), facts=dict(s.facts))

    @staticmethod
    def _options(o: pb.GenerationOptions) -> GenOptions:
        return GenOptions(max_tokens=o.max_tokens,  # 0: the engine's default
                          temperature=o.temperature if o.HasField("temperature") else defaults.TEMPERATURE,
                          top_p=o.top_p if o.HasField("top_p") else defaults.TOP_P,
                          seed=o.seed if o.HasField("seed") else None, stop=tuple(o.stop),
                          contrast=o.contrast if o.HasField("contrast") else None)  # None: the engine's --contrast

    @staticmethod
    def _beats(b: pb.BeatRequest) -> BeatAsk | None:
        """The beat a request asks for; None when it asks none. Checks are the engine's (Limits.check_beats)."""
        emotions = tuple(b.emotions) or (EMOTIONS if b.emotion else ())
        ask = BeatAsk(emotions, tuple(Action(a.id, a.description) for a in b.actions))
        return ask if ask else None

    @staticmethod
    def _beat(beat) -> pb.Beat | None:
        return pb.Beat(id=beat.id, probability=beat.probability, probabilities=beat.probabilities) if beat else None

    @staticmethod
    def _procedural(engine, req: pb.SayRequest):
        """The blend and profile of a procedural NPC, or (None, None) for a hosted role (the rule is the engine's,
        checked before the profile is read)."""
        blend = [(w.role_id, w.weight) for w in req.blend] or None
        p = req.profile if req.HasField("profile") else None
        check_procedural(blend, p)
        if p is None:
            return None, None
        return blend, engine.limits.profile(req.npc_id, p.name, p.persona, p.style, p.knowledge, list(p.example_lines))

    # -- rpcs --------------------------------------------------------------------------------------

    @staticmethod
    def _abort(context, exc: NeekoError):
        context.abort(STATUS[exc.kind], str(exc))

    def Say(self, request, context):
        engine = self._engine(context)
        t0 = time.perf_counter()
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        try:
            blend, profile = self._procedural(engine, request)
            reply = engine.say(request.npc_id, request.player_line, self._scene(request.scene), self._options(request.options),
                               session=request.session_id, cancelled=lambda: not context.is_active(), deadline=deadline,
                               blend=blend, profile=profile, beats=self._beats(request.beats))
            weights = [pb.RoleWeight(role_id=r, weight=w) for r, w in sorted(reply.weights.items())]
            yield from self._chunks(reply, weights, t0)
        except NeekoError as exc:
            self._abort(context, exc)

    def Converse(self, request_iterator, context):
        engine = self._engine(context)
        if not self._converse_slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.max_converse} conversations are streaming already (--max-converse); retry when one ends")
        try:
            yield from self._converse(engine, request_iterator, context)
        finally:
            self._converse_slots.release()

    def _first_request(self, request_iterator, context):
        """The call's first message, waited for at most converse_start_s: a call that sends nothing is closed
        instead of holding its worker until its own deadline."""
        box: list = []
        got = threading.Event()

        def read():
            try:
                box.append(next(request_iterator, None))
            except Exception:  # the client went away, or the call was closed below
                box.append(None)
            got.set()

        threading.Thread(target=read, name="converse-start", daemon=True).start()
        if not got.wait(self.converse_start_s):
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                          f"no start message within {self.converse_start_s:g} s; a Converse call begins with `start`")
        return box[0]

    def _converse(self, engine, request_iterator, context):
        first = self._first_request(request_iterator, context)
        if isinstance(first, Malformed):
            abort_malformed(context, "ConverseRequest", first)
        if first is None or first.WhichOneof("kind") != "start":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first ConverseRequest must be `start`")
        start = first.start
        heard: list[str] = []
        problem: list[str] = []  # the first thing wrong with what the client sent after `start`
        lock = threading.Lock()

        def listen():  # later messages are the player's interjections, taken in before the next turn
            try:
                for req in request_iterator:
                    with lock:
                        if isinstance(req, Malformed):
                            bad = malformed_detail("ConverseRequest", req)
                        elif req.WhichOneof("kind") == "start":
                            bad = "a second `start`; a Converse call has one"
                        else:
                            bad = engine.limits.check_interjection(req.player_line, len(heard))
                        if bad:
                            problem.append(bad)
                            return  # the scene stops within one token (cancelled below) and the call says why
                        heard.append(req.player_line)
            except Exception:  # the client went away: the call's own cancellation stops the scene
                pass

        def interjections() -> list[str]:
            with lock:
                out = heard[:]
                heard.clear()
            return out

        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        try:
            scene = engine.converse(list(start.npc_ids), self._scene(start.scene), start.topic, start.opening_line,
                                    start.turns, ORDER_WORD.get(start.order, ""), self._options(start.options),
                                    cancelled=lambda: bool(problem) or not context.is_active(), deadline=deadline,
                                    interjections=interjections)
            threading.Thread(target=listen, name="converse-listen", daemon=True).start()
            for c in scene:
                if problem:
                    scene.close()  # its turn and adapters are released now, not when the generator is collected
                    break
                yield pb.ConverseChunk(npc_id=c.npc, turn=c.turn, text=c.text, turn_done=c.turn_done,
                                       finish_reason=FINISH.get(c.finish, 0), prompt_tokens=c.prompt_tokens,
                                       completion_tokens=c.completion_tokens, player_line=c.player_line, done=c.done,
                                       role_weights=[pb.RoleWeight(role_id=r, weight=w) for r, w in sorted(c.weights.items())])
        except NeekoError as exc:
            self._abort(context, exc)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem[0])

    def Prepare(self, request, context):
        engine = self._engine(context)
        try:
            blend, profile = self._procedural(engine, request)
            p = engine.prepare(request.npc_id, self._scene(request.scene), session=request.session_id, blend=blend,
                               profile=profile)
        except NeekoError as exc:
            self._abort(context, exc)
        return pb.PrepareResponse(prompt_tokens=p.prompt_tokens, read_tokens=p.read_tokens,
                                  prompt_cache=CACHE.get(p.cache, 0), skipped=p.skipped, elapsed_ms=p.ms)

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
                              cached_prompt_tokens=chunk.cached_tokens, time_to_first_token_ms=ttft, role_weights=weights,
                              prompt_cache=CACHE.get(chunk.cache, 0), emotion=DialogueService._beat(chunk.emotion),
                              action=DialogueService._beat(chunk.action))

    @staticmethod
    def _role(served) -> pb.Role:
        a = served.asset
        return pb.Role(id=a.id, name=a.profile.name, kind=a.kind, persona=a.profile.persona, style=a.profile.style,
                       weights=[pb.RoleWeight(role_id=r, weight=w) for r, w in sorted(served.weights.items())],
                       sha256=a.sha256, file=a.path)

    @staticmethod
    def _problems(problems: dict[str, str]) -> list:
        return [pb.RoleProblem(file=f, error=e) for f, e in sorted(problems.items())]

    def ListRoles(self, request, context):
        snap = self._engine(context).roles()
        return pb.ListRolesResponse(roles=[self._role(r) for _, r in sorted(snap.roles.items())],
                                    problems=self._problems(snap.problems))

    def GetRole(self, request, context):
        engine = self._engine(context)
        try:
            return self._role(engine.role(request.npc_id))
        except NeekoError as exc:
            self._abort(context, exc)

    def ReloadRoles(self, request, context):
        r = self._engine(context).reload()
        log.info("roles reloaded: +%s ~%s -%s, %d problem(s)", r.added, r.changed, r.removed, len(r.problems))
        return pb.ReloadRolesResponse(added=r.added, changed=r.changed, removed=r.removed, problems=self._problems(r.problems))

    def GetSession(self, request, context):
        engine = self._engine(context)
        try:
            npcs = engine.session(request.session_id)
        except NeekoError as exc:
            self._abort(context, exc)
        return pb.SessionMemory(session_id=request.session_id, npcs=[
            pb.NpcMemory(npc_id=npc, exchanges=[pb.Exchange(player_line=a, npc_line=b) for a, b in turns])
            for npc, turns in sorted(npcs.items())])

    def RestoreSession(self, request, context):
        engine = self._engine(context)
        npcs = [(m.npc_id, [(x.player_line, x.npc_line) for x in m.exchanges]) for m in request.npcs]
        try:
            n = engine.restore_session(request.session_id, npcs)
        except NeekoError as exc:
            self._abort(context, exc)
        return pb.RestoreSessionResponse(npcs=len(npcs), exchanges=n)

    def ForgetSession(self, request, context):
        engine = self._engine(context)
        try:
            return pb.ForgetSessionResponse(forgotten=engine.forget(request.session_id, request.npc_id))
        except NeekoError as exc:
            self._abort(context, exc)
