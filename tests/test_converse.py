"""Converse: NPCs talking to each other, each turn under its speaker's own voice, over a real daemon on 127.0.0.1
with the real SmolLM2 and the shipped village roles."""

import threading
import time
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from neeko_npc.cli import main
from neeko_npc.engine.facade import Engine, EngineConfig
from neeko_npc.errors import BadRequest
from neeko_npc.v1 import dialogue_pb2 as pb

SHIPPED = Path(__file__).parent.parent / "assets" / "roles"
GREEDY = dict(temperature=0.0, max_tokens=12)


def test_the_npc_named_last_speaks_next():
    npcs = ["blacksmith", "innkeeper", "merchant"]
    names = {"blacksmith": "Bram Hollis", "innkeeper": "Marta Vell", "merchant": "Osric Fenn"}
    nxt = Engine._next_speaker
    assert nxt(npcs, names, "blacksmith", "Ask Osric, or Marta if he's out.", "named_last") == "innkeeper"
    assert nxt(npcs, names, "blacksmith", "Ask Marta. Osric knows too.", "named_last") == "merchant"
    assert nxt(npcs, names, "innkeeper", "merchant, your turn", "named_last") == "merchant"  # ids count too
    assert nxt(npcs, names, "merchant", "Nobody named here.", "named_last") == "blacksmith"  # round robin
    assert nxt(npcs, names, "merchant", "Ask Marta.", "round_robin") == "blacksmith"
    assert nxt(npcs, names, "blacksmith", "I, Bram, say so.", "named_last") == "innkeeper"  # never itself


@pytest.fixture(scope="module")
def daemon():
    from neeko_npc.engine.llama_engine import LlamaEngine
    from neeko_npc.server.app import Daemon, ServerConfig

    d = Daemon(ServerConfig(port=0, watch_interval=0),
               lambda: LlamaEngine(SHIPPED, config=EngineConfig(pool_size=2, n_threads=2))).start()
    assert d.loaded.wait(120), d.service.load_error
    yield d
    d.stop(0)


@pytest.fixture
def client(daemon):
    from neeko_npc.server.client import Client

    c = Client(daemon.address)
    yield c
    c.close()


def turns_of(chunks):
    out = {}
    for c in chunks:
        if not c.done:
            out.setdefault(c.turn, []).append(c)
    return out


@pytest.mark.slow
def test_turns_alternate_blocks_and_name_their_speaker(client):
    chunks = list(client.converse(["blacksmith", "innkeeper", "merchant"], pb.SceneContext(location="the inn"),
                                  topic="the bandits on the north road", turns=4, **GREEDY))
    assert chunks[-1].done and all(not c.done for c in chunks[:-1])
    turns = turns_of(chunks)
    assert sorted(turns) == [0, 1, 2, 3]
    speakers = [turns[t][0].npc_id for t in range(4)]
    assert speakers == ["blacksmith", "innkeeper", "merchant", "blacksmith"]  # round robin
    for t, cs in turns.items():
        assert all(c.npc_id == speakers[t] for c in cs)  # every chunk names its speaker
        last = cs[-1]
        assert last.turn_done and all(not c.turn_done for c in cs[:-1])
        assert [(w.role_id, round(w.weight, 3)) for w in last.role_weights] == [(speakers[t], 1.0)]  # its own block
        assert last.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH) and "".join(c.text for c in cs).strip()
    # every turn reads the lines before it: the prompts grow
    prompts = [turns[t][-1].prompt_tokens for t in range(4)]
    assert prompts[3] > prompts[0]


@pytest.mark.slow
def test_a_fused_npc_speaks_with_its_stored_weights(client):
    chunks = list(client.converse(["young_guard", "guard_captain"], turns=2, **GREEDY))
    turns = turns_of(chunks)
    young = {w.role_id for w in turns[0][-1].role_weights}
    assert len(young) > 1 and "young_guard" not in young  # a fused role: the blocks it mixes
    assert [w.role_id for w in turns[1][-1].role_weights] == ["guard_captain"]


@pytest.mark.slow
def test_the_player_interjects_between_turns(client):
    said = threading.Event()

    def lines():
        said.wait(60)
        yield "Enough! Who stole my horse?"

    call = client.converse(["blacksmith", "merchant"], turns=4, interjections=lines(), **GREEDY)
    seen = []
    for c in call:
        seen.append(c)
        if c.turn_done and c.turn == 0:
            said.set()
            time.sleep(0.3)  # the line reaches the server before the next turn starts
    # taken in once, before the first turn that starts after it arrived (which one depends on timing), on that
    # turn's first chunk; that turn's prompt holds it
    heard = [c for c in seen if c.player_line]
    assert len(heard) == 1 and heard[0].player_line == "Enough! Who stole my horse?" and heard[0].turn >= 1
    t = heard[0].turn
    assert [c for c in seen if not c.done and c.turn == t][0] is heard[0]
    ends = {c.turn: c for c in seen if c.turn_done}
    grew = [ends[i].prompt_tokens - ends[i - 1].prompt_tokens for i in range(1, len(ends))]
    assert grew[t - 1] > ends[t - 1].completion_tokens + 8  # more than the last line alone: the player's line too


@pytest.mark.slow
def test_cancel_stops_within_a_token_and_frees_the_context(daemon, client):
    engine = daemon.service.engine
    call = client.converse(["blacksmith", "innkeeper"], turns=20, temperature=0.0, max_tokens=200)
    next(call)
    call.cancel()
    assert engine.pool.wait_idle(5)
    with pytest.raises(grpc.RpcError) as e:
        list(client.converse(["blacksmith", "innkeeper"], turns=20, timeout=1.0, temperature=0.0, max_tokens=200))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert engine.pool.wait_idle(5) and engine.busy() == 0


@pytest.mark.slow
def test_bad_conversations_are_one_clear_error(client):
    for npcs, kw, code, words in ((["blacksmith"], {}, grpc.StatusCode.INVALID_ARGUMENT, "2 to 4 different NPCs"),
                                  (["blacksmith", "blacksmith"], {}, grpc.StatusCode.INVALID_ARGUMENT, "2 to 4"),
                                  (["blacksmith", "ghost"], {}, grpc.StatusCode.NOT_FOUND, "no NPC 'ghost'"),
                                  (["blacksmith", "merchant"], {"turns": 99}, grpc.StatusCode.INVALID_ARGUMENT, "at most 32"),
                                  (["blacksmith", "merchant"], {"topic": "x" * 3000}, grpc.StatusCode.INVALID_ARGUMENT, "topic"),
                                  ([], {}, grpc.StatusCode.INVALID_ARGUMENT, "npc_ids: a conversation needs 2 to 4"),
                                  (["blacksmith", "merchant"], {"opening_line": "x" * 1_000_000},
                                   grpc.StatusCode.INVALID_ARGUMENT, "opening_line has 1000000 characters")):
        with pytest.raises(grpc.RpcError) as e:
            list(client.converse(npcs, **kw))
        assert e.value.code() == code and words in e.value.details(), e.value.details()


@pytest.mark.slow
def test_cli_converse_prints_one_speaker_a_line(daemon):
    res = CliRunner().invoke(main, ["converse", "blacksmith", "innkeeper", "--topic", "the weather", "--turns", "3",
                                    "--temperature", "0", "--max-tokens", "10", "--address", daemon.address])
    assert res.exit_code == 0, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 3
    assert lines[0].startswith("blacksmith: ") and lines[1].startswith("innkeeper: ") and lines[2].startswith("blacksmith: ")
    res = CliRunner().invoke(main, ["converse", "blacksmith", "--address", daemon.address])
    assert res.exit_code != 0 and "INVALID_ARGUMENT" in res.output
