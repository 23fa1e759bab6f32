"""The daemon's contract in the fast tier: a real gRPC daemon on 127.0.0.1 with the real service, facade, roles
folder, limits and CLI, over the scripted engine (tests/scripted.py) in place of the model. It checks what the
daemon promises around a line: status codes for every kind of failure, limits as `Limits()` sets them, the token
on every RPC, usage and finish reasons, turn order, sessions, the client commands. How a line sounds is the slow
tier's (test_server.py runs the same promises against SmolLM2)."""

import threading
import time

import grpc
import pytest
from click.testing import CliRunner
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neeko_npc import defaults
from neeko_npc.cli import main
from neeko_npc.engine.facade import Abilities, EngineConfig
from neeko_npc.engine.limits import Limits
from neeko_npc.server.app import Daemon, ServerConfig
from neeko_npc.server.client import Client
from neeko_npc.v1 import dialogue_pb2 as pb

from neeko_npc.roles.asset import write_asset

from .helpers import block_asset, code_of, collect, fusion_asset
from .scripted import ScriptedEngine, write_roles

TOKEN = "s3cret"
LIMITS = Limits()
ADA = pb.NpcProfile(name="Ada", persona="A baker who trades gossip for flour.")
CODE = grpc.StatusCode


def start(roles_dir, make=None, token=TOKEN, **config) -> Daemon:
    d = Daemon(ServerConfig(port=0, watch_interval=0, token=token),
               make or (lambda: ScriptedEngine(roles_dir, EngineConfig(**config)))).start()
    return d


@pytest.fixture(scope="module")
def roles_dir(tmp_path_factory):
    return write_roles(tmp_path_factory.mktemp("roles"))


@pytest.fixture(scope="module")
def daemon(roles_dir):
    d = start(roles_dir, pool_size=2, queue_timeout=0.5)
    assert d.loaded.wait(30)
    yield d
    d.stop(0)


@pytest.fixture
def client(daemon):
    c = Client(daemon.address, token=TOKEN)
    yield c
    c.close()


def weights(chunk) -> dict[str, float]:
    return {w.role_id: round(w.weight, 6) for w in chunk.role_weights}


# -- a line ------------------------------------------------------------------------------------


def test_a_line_streams_in_pieces_and_ends_with_its_usage_and_voice(daemon, client):
    text, chunks = collect(client.say("smith", "Can you mend my sword?"))
    asked = daemon.service.engine.lines[-1]
    assert text == f"[smith] heard {asked['prompt_tokens']} tokens."
    assert len(chunks) > 1 and [c.done for c in chunks].count(True) == 1 and chunks[-1].done
    last = chunks[-1]
    assert last.finish_reason == pb.FINISH_REASON_STOP and last.completion_tokens == 4
    assert last.prompt_tokens == asked["prompt_tokens"] and weights(last) == {"smith": 1.0}
    assert last.prompt_cache == pb.PROMPT_CACHE_COLD and last.time_to_first_token_ms > 0
    assert asked["opts"].max_tokens == LIMITS.default_max_tokens  # 0 in the request: the daemon's default


def test_a_fused_role_speaks_with_the_blocks_it_mixes(daemon, client):
    text, chunks = collect(client.say("squire", "Who trained you?"))
    assert weights(chunks[-1]) == {"smith": 0.75, "bard": 0.25}
    assert sorted(daemon.service.engine.lines[-1]["blocks"]) == ["bard", "smith"] and text.startswith("[")


def test_max_tokens_ends_a_line_at_length_and_a_stop_string_ends_it_at_stop(client):
    text, chunks = collect(client.say("smith", "hi", max_tokens=2))
    assert text == "[smith] heard" and chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert chunks[-1].completion_tokens == 2
    text, chunks = collect(client.say("smith", "hi", stop=[" heard"]))
    assert text == "[smith]" and chunks[-1].finish_reason == pb.FINISH_REASON_STOP


def test_a_procedural_npc_speaks_with_its_blend(daemon, client):
    text, chunks = collect(client.say("ada", "Bread?", profile=ADA, blend={"smith": 1, "bard": 3}))
    assert weights(chunks[-1]) == {"smith": 0.25, "bard": 0.75}
    assert daemon.service.engine.lines[-1]["npc"] == ""  # a procedural NPC has no hosted name


def test_contrast_defaults_to_the_daemons_and_a_request_may_set_it(daemon, client):
    collect(client.say("smith", "hi"))
    assert daemon.service.engine.lines[-1]["opts"].contrast == defaults.CONTRAST
    collect(client.say("smith", "hi", contrast=0.0))
    assert daemon.service.engine.lines[-1]["opts"].contrast == 0.0


def test_an_npc_speaks_at_its_own_contrast_unless_serve_or_the_request_says_otherwise(tmp_path):
    """A role's file may carry its own contrast (its bake's voice check). A line that leaves contrast unset gets it;
    serve --contrast overrides every NPC's, a request overrides both; a role without one, a fused role and a blend
    get the default; each speaker of a conversation speaks at its own; a backend that cannot contrast gets 0."""
    smith, bard = block_asset("smith", seed=1), block_asset("bard", seed=2, contrast=0.5)
    for a in (smith, bard):
        write_asset(a, tmp_path / f"{a.id}.nrole")
    write_asset(fusion_asset("squire", [(smith, 0.25), (bard, 0.75)]), tmp_path / "squire.nrole")

    def contrasts(d, *calls) -> list[float]:
        c = Client(d.address, token=TOKEN)
        try:
            for call in calls:
                collect(call(c))
        finally:
            c.close()
        return [line["opts"].contrast for line in d.service.engine.lines]

    bard_, smith_, squire_ = (lambda c: c.say("bard", "hi")), (lambda c: c.say("smith", "hi")), (lambda c: c.say("squire", "hi"))
    blend_ = lambda c: c.say("ada", "hi", profile=ADA, blend={"bard": 1})  # noqa: E731
    asked_ = lambda c: c.say("bard", "hi", contrast=2.0)  # noqa: E731
    talk_ = lambda c: c.converse(["bard", "smith"], turns=2)  # noqa: E731
    D = defaults.CONTRAST
    for make, calls, want in [
        (None, [bard_, smith_, squire_, blend_, asked_, talk_], [0.5, D, D, D, 2.0, 0.5, D]),
        (lambda: ScriptedEngine(tmp_path, EngineConfig(contrast=0.25)), [bard_, smith_, squire_, blend_, asked_, talk_],
         [0.25, 0.25, 0.25, 0.25, 2.0, 0.25, 0.25]),
        (lambda: Bare(tmp_path), [bard_, smith_, squire_, talk_], [0.0] * 5),
    ]:
        d = start(tmp_path, make=make)
        try:
            assert d.loaded.wait(30)
            assert contrasts(d, *calls) == want
        finally:
            d.stop(0)


def test_the_base_model_warms_a_roles_prefix_only_where_its_lines_are_contrasted(tmp_path):
    """llama.cpp reads each role's prompt prefix at start-up, and under the base model too where that role's lines
    are contrasted unless a request says otherwise (serve --contrast, else its own contrast, else the default)."""
    from neeko_npc.engine.llama_engine import LlamaEngine

    smith, bard = block_asset("smith", seed=1, contrast=0.0), block_asset("bard", seed=2, contrast=0.5)
    for a in (smith, bard):
        write_asset(a, tmp_path / f"{a.id}.nrole")
    write_asset(fusion_asset("squire", [(smith, 0.25), (bard, 0.75)]), tmp_path / "squire.nrole")
    own = LlamaEngine._warm_prefixes(ScriptedEngine(tmp_path))  # the method reads only the facade's roles
    # the squire has no contrast of its own: the default's, 0 (off)
    assert defaults.CONTRAST == 0 and own == [("bard", False), ("bard", True), ("smith", False), ("squire", False)]
    assert LlamaEngine._warm_prefixes(ScriptedEngine(tmp_path, EngineConfig(contrast=1.0))) == [
        ("bard", False), ("bard", True), ("smith", False), ("smith", True), ("squire", False), ("squire", True)]
    assert LlamaEngine._warm_prefixes(ScriptedEngine(tmp_path, EngineConfig(contrast=0.0))) == [
        ("bard", False), ("smith", False), ("squire", False)]


# -- failures: one status code a kind ----------------------------------------------------------


def test_every_kind_of_failure_answers_its_status_code_with_limits_from_Limits(daemon, client):
    lim, room = LIMITS, EngineConfig().n_ctx - LIMITS.default_max_tokens
    say = client.say
    cases = [
        (lambda: say("nobody", "hi"), CODE.NOT_FOUND, "no NPC 'nobody'; known: bard, broken, smith, squire"),
        (lambda: say("", "hi"), CODE.INVALID_ARGUMENT, "npc_id is required"),
        (lambda: say("smith", "x" * (lim.max_player_line_chars + 1)), CODE.INVALID_ARGUMENT,
         f"the limit is {lim.max_player_line_chars} (--max-player-line-chars)"),
        (lambda: say("smith", "hi", max_tokens=lim.max_tokens_limit + 1), CODE.INVALID_ARGUMENT,
         f"over the limit of {lim.max_tokens_limit} (--max-tokens-limit)"),
        (lambda: say("smith", "hi", scene=pb.SceneContext(location="x" * (lim.max_scene_chars + 1))),
         CODE.INVALID_ARGUMENT, f"the limit is {lim.max_scene_chars} (--max-scene-chars)"),
        (lambda: say("smith", "hi", scene=pb.SceneContext(location="x" * (room + 1))), CODE.INVALID_ARGUMENT,
         f"but only {room} fit"),
        (lambda: say("smith", "hi", contrast=defaults.MAX_CONTRAST + 0.5), CODE.INVALID_ARGUMENT,
         f"contrast must be between 0 and {defaults.MAX_CONTRAST:g}"),
        (lambda: say("ada", "hi", profile=ADA), CODE.INVALID_ARGUMENT, "needs both"),
        (lambda: say("ada", "hi", profile=pb.NpcProfile(name="Ada"), blend={"smith": 1}), CODE.INVALID_ARGUMENT,
         "'persona' is empty"),
        (lambda: say("ada", "hi", profile=ADA, blend={"nobody": 1}), CODE.INVALID_ARGUMENT, "nobody"),
        (lambda: say("broken", "hi"), CODE.INTERNAL, "NPC 'broken' produced non-finite logits"),
    ]
    for call, code, needle in cases:
        got, details = code_of(lambda: collect(call()))
        assert (got, needle in details) == (code, True), (needle, got, details)
    code, details = code_of(lambda: client.stub.GetRole(pb.GetRoleRequest(npc_id="nobody"), metadata=client.metadata))
    assert code == CODE.NOT_FOUND and "known: bard" in details
    assert daemon.service.engine.busy() == 0  # no failure kept a context


def test_a_full_pool_is_resource_exhausted_and_a_dropped_client_frees_its_context(roles_dir):
    d = start(roles_dir, pool_size=1, queue_timeout=0.0)
    try:
        assert d.loaded.wait(30)
        engine = d.service.engine
        engine.delay = 0.3
        c = Client(d.address, token=TOKEN)
        hold = c.say("smith", "Talk for a while.")
        next(iter(hold))
        code, details = code_of(lambda: collect(c.say("bard", "hi")))
        assert code == CODE.RESOURCE_EXHAUSTED and "--pool-size 1" in details
        hold.cancel()
        deadline = time.monotonic() + 5
        while engine.busy() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.busy() == 0
        engine.delay = 0.0
        assert collect(c.say("bard", "hi"))[0].startswith("[bard]")
        c.close()
    finally:
        d.stop(0)


def test_unavailable_while_the_engine_loads_then_serving(roles_dir):
    loaded = threading.Event()

    def slow():
        loaded.wait(30)
        return ScriptedEngine(roles_dir)

    d = start(roles_dir, make=slow)
    try:
        c = Client(d.address, token=TOKEN)
        code, details = code_of(lambda: collect(c.say("smith", "hi")))
        assert code == CODE.UNAVAILABLE and "still loading" in details
        health = health_pb2_grpc.HealthStub(c.channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        loaded.set()
        assert d.loaded.wait(30)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        c.close()
    finally:
        d.stop(0)


# -- the token ---------------------------------------------------------------------------------


SERVICE = pb.DESCRIPTOR.services_by_name["Dialogue"]


def call_rpc(channel, method, metadata):
    """Call any Dialogue RPC with an empty request (Converse: a bare start), as its streaming shape needs."""
    m = SERVICE.methods_by_name[method]
    path = f"/{SERVICE.full_name}/{m.name}"
    request_cls = message_factory.GetMessageClass(m.input_type)
    reply_cls = message_factory.GetMessageClass(m.output_type)
    args = (path, request_cls.SerializeToString, reply_cls.FromString)
    request = request_cls(start=pb.ConverseStart()) if method == "Converse" else request_cls()
    if m.client_streaming:
        return list(channel.stream_stream(*args)(iter([request]), metadata=metadata, timeout=5))
    if m.server_streaming:
        return list(channel.unary_stream(*args)(request, metadata=metadata, timeout=5))
    return channel.unary_unary(*args)(request, metadata=metadata, timeout=5)


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
def test_every_rpc_needs_the_token(daemon, method):
    channel = grpc.insecure_channel(daemon.address)
    try:
        for metadata in ([], [("authorization", "Bearer wrong")]):
            code, details = code_of(lambda: call_rpc(channel, method, metadata))
            assert code == CODE.UNAUTHENTICATED and "Bearer" in details
        try:  # with the token, the RPC itself answers (an empty request may be refused, but not for the token)
            call_rpc(channel, method, [("authorization", f"Bearer {TOKEN}")])
        except grpc.RpcError as exc:
            assert exc.code() != CODE.UNAUTHENTICATED
        # health probes need none
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()


def test_the_token_check_covers_the_streaming_rpcs():
    names = {m.name for m in SERVICE.methods}
    assert {"Say", "Converse", "Prepare", "ListRoles", "RestoreSession"} <= names  # the parametrisation has teeth


# -- what a backend lacks ----------------------------------------------------------------------


class Bare(ScriptedEngine):
    """A backend that declares no ability: no contrast, beats, prompt cache or blends."""

    name = "bare"
    abilities = Abilities(blends=False)


def test_abilities_a_backend_lacks_are_refused_with_one_message_each(roles_dir):
    d = start(roles_dir, make=lambda: Bare(roles_dir))
    try:
        assert d.loaded.wait(30)
        c = Client(d.address, token=TOKEN)
        collect(c.say("smith", "hi"))
        assert d.service.engine.lines[-1]["opts"].contrast == 0.0  # its default: it cannot contrast
        refusals = [
            (lambda: c.say("smith", "hi", contrast=1.0), "contrast 1: the bare engine cannot contrast a line"),
            (lambda: c.say("smith", "hi", beats=pb.BeatRequest(emotion=True)), "the bare engine does not score beats"),
            (lambda: c.say("ada", "hi", profile=ADA, blend={"smith": 1}),
             "the bare engine cannot mix blocks"),
        ]
        for call, needle in refusals:
            code, details = code_of(lambda: collect(call()))
            assert code == CODE.INVALID_ARGUMENT and needle in details, details
        p = c.prepare("smith")
        assert p.read_tokens == 0 and p.prompt_tokens > 0 and p.skipped == "the bare engine keeps no prompt cache"
        assert d.service.engine.busy() == 0
        c.close()
    finally:
        d.stop(0)


# -- conversations and sessions ----------------------------------------------------------------


def test_a_conversation_takes_turns_in_order_and_ends_once(daemon, client):
    chunks = list(client.converse(["smith", "bard"], topic="the festival", turns=3))
    ends = [c for c in chunks if c.turn_done]
    assert [(c.npc_id, c.turn) for c in ends] == [("smith", 0), ("bard", 1), ("smith", 2)]
    assert all(c.finish_reason == pb.FINISH_REASON_STOP for c in ends) and chunks[-1].done
    assert [c.done for c in chunks].count(True) == 1
    code, details = code_of(lambda: list(client.converse(["smith", "bard"], turns=LIMITS.max_converse_turns + 1)))
    assert code == CODE.INVALID_ARGUMENT and f"at most {LIMITS.max_converse_turns} (--max-converse-turns)" in details
    code, details = code_of(lambda: list(client.converse(["smith"])))
    assert code == CODE.INVALID_ARGUMENT and "2 to" in details


def test_a_session_remembers_restores_and_forgets(daemon, client):
    text, _ = collect(client.say("smith", "Remember me?", session="save-1"))
    memory = client.stub.GetSession(pb.GetSessionRequest(session_id="save-1"), metadata=client.metadata)
    assert [(n.npc_id, [(x.player_line, x.npc_line) for x in n.exchanges]) for n in memory.npcs] == \
        [("smith", [("Remember me?", text)])]
    restored = client.restore_session(pb.SessionMemory(session_id="save-2", npcs=memory.npcs))
    assert (restored.npcs, restored.exchanges) == (1, 1)
    forgot = client.stub.ForgetSession(pb.ForgetSessionRequest(session_id="save-2"), metadata=client.metadata)
    assert forgot.forgotten == 1
    long_id = "s" * (LIMITS.max_id_chars + 1)
    code, details = code_of(lambda: client.stub.GetSession(pb.GetSessionRequest(session_id=long_id),
                                                           metadata=client.metadata))
    assert code == CODE.INVALID_ARGUMENT and f"limited to {LIMITS.max_id_chars} characters" in details


# -- the CLI's client commands -----------------------------------------------------------------


def test_the_cli_says_lists_and_converses_through_the_daemon(daemon):
    env = {defaults.TOKEN_ENV: TOKEN}
    cli = CliRunner()
    res = cli.invoke(main, ["say", "smith", "Hello!", "--address", daemon.address], env=env)
    assert res.exit_code == 0 and res.output.startswith("[smith] heard "), res.output
    res = cli.invoke(main, ["roles", "--address", daemon.address], env=env)
    assert res.exit_code == 0
    assert [line.split("\t")[:3] for line in res.output.splitlines()] == [
        ["bard", "Bard", "block"], ["broken", "Broken", "block"], ["smith", "Smith", "block"],
        ["squire", "Squire", "fusion"]]
    res = cli.invoke(main, ["converse", "smith", "bard", "--turns", "2", "--address", daemon.address], env=env)
    assert res.exit_code == 0 and res.output.splitlines() == [
        line for line in res.output.splitlines() if line.startswith(("smith: [smith]", "bard: [bard]"))]
    assert len(res.output.splitlines()) == 2
    res = cli.invoke(main, ["say", "ghost", "boo", "--address", daemon.address], env=env)
    assert res.exit_code == 1 and "NOT_FOUND: no NPC 'ghost'" in res.output
    res = cli.invoke(main, ["roles", "--address", daemon.address], env={defaults.TOKEN_ENV: "wrong"})
    assert res.exit_code == 1 and "UNAUTHENTICATED" in res.output


def test_every_protocol_word_has_one_proto_value_both_ways():
    from neeko_npc.protocol import Cache, Finish, Order
    from neeko_npc.server.words import CACHE, CACHE_WORD, FINISH, ORDER, ORDER_WORD

    assert set(FINISH) == {Finish.STOP, Finish.LENGTH, Finish.CANCELLED} and 0 not in FINISH.values()
    assert set(ORDER) == set(Order.ALL) and set(CACHE) == set(Cache.ALL)
    assert all(ORDER_WORD[ORDER[w]] == w for w in Order.ALL) and all(CACHE_WORD[CACHE[w]] == w for w in Cache.ALL)
    assert len(set(FINISH.values())) == len(FINISH)
