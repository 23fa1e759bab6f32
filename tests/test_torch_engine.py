"""--engine torch: the block LoRA served from torch, batched, and checked against llama.cpp on the same float weights."""

import threading

import pytest

from neeko_npc.engine.stream import GenOptions
from neeko_npc.engine.facade import EngineConfig
from neeko_npc.engine.llama_engine import LlamaEngine
from neeko_npc.roles.prompt import SceneInfo
from neeko_npc.engine.torch_engine import TorchEngine
from neeko_npc.v1 import dialogue_pb2 as pb
from neeko_npc.roles.asset import write_asset
from neeko_npc.roles.asset_read import read_asset
from neeko_npc.roles.base_model import base_info, default_model_path, resolve_base_model
from tests.gguf_f32 import write_f32_copy

pytestmark = pytest.mark.slow  # the real model

LINE = "What do you do all day?"


@pytest.fixture(scope="module")
def f32_setup(baked, gguf_base, tmp_path_factory):
    """The same float weights twice: the float copy of SmolLM2 the trainer keeps (a Hugging Face folder, for torch)
    and an f32 GGUF of the same dequantized tensors (for llama.cpp), with the baked roles re-stamped for each."""
    from neeko_npc.neeko.load_base import float_cache_dir

    root = tmp_path_factory.mktemp("f32")
    gguf = write_f32_copy(default_model_path(), root / "smollm2-f32.gguf")
    hf = float_cache_dir(gguf_base[0])
    folders = {}
    for name, model in (("llama", gguf), ("torch", hf)):
        info = base_info(resolve_base_model(model))
        folders[name] = root / name
        folders[name].mkdir()
        for rid in ("smith", "bard"):
            a = read_asset(baked["before"] / f"{rid}.nrole")
            a.base = info
            write_asset(a, folders[name] / f"{rid}.nrole")
    return {"llama": (str(gguf), folders["llama"]), "torch": (str(hf), folders["torch"])}


@pytest.fixture(scope="module")
def torch_engine(f32_setup):
    model, roles = f32_setup["torch"]
    e = TorchEngine(roles, model, EngineConfig(max_batch=4), device="cpu")
    yield e
    e.close()


@pytest.fixture(scope="module")
def solo(torch_engine):
    """Each NPC's greedy 24-token reply on the torch engine alone and its last chunk, computed once for the tests that
    compare with it."""
    return {npc: reply(torch_engine, npc) for npc in ("smith", "bard")}


def reply(engine, npc, line=LINE, **opts):
    r = engine.say(npc, line, SceneInfo(location="the village square"), GenOptions(**{"temperature": 0.0, "max_tokens": 24, **opts}))
    chunks = list(r.chunks)
    return "".join(c.text for c in chunks), chunks[-1]


def test_same_greedy_reply_as_llama_cpp_on_an_unquantized_base(f32_setup, torch_engine, solo):
    model, roles = f32_setup["llama"]
    llama = LlamaEngine(roles, model, EngineConfig(pool_size=1, n_threads=2))
    try:
        for npc in ("smith", "bard"):
            t_text, t_last = solo[npc]
            l_text, l_last = reply(llama, npc)
            assert t_last.prompt_tokens == l_last.prompt_tokens  # same prompt, token for token
            assert t_text == l_text and t_text.strip(), (npc, t_text, l_text)
    finally:
        llama.close()


def test_contrasted_lines_are_the_same_on_llama_cpp_and_torch(f32_setup, torch_engine, solo):
    """Contrastive decoding (serve --contrast): on the same float weights, llama.cpp (a second context without adapters
    beside the NPC's, its prefix warmed at start) and torch (a second forward of the batch without the gate) draw the
    same greedy contrasted line, which is not the plain one; contrast 0 is the plain line. In one torch batch a
    contrasted row and a plain row each equal their solo lines."""
    model, roles = f32_setup["llama"]
    llama = LlamaEngine(roles, model, EngineConfig(pool_size=1, n_threads=2, contrast=1.0))  # lines contrast by default
    try:
        assert llama.warmed.wait(120)
        for npc in ("smith", "bard"):
            assert llama.store.covers((), llama.profile_prefix(llama.role(npc).asset.profile))  # the base's prefix is kept
            contrasted, _ = reply(torch_engine, npc, contrast=1.0)
            assert reply(llama, npc)[0] == contrasted and contrasted.strip(), npc
            assert contrasted == solo[npc][0]  # the torch engine's default is contrast 1 too
            plain = reply(torch_engine, npc, contrast=0.0)[0]
            assert plain != contrasted and reply(llama, npc, contrast=0.0)[0] == plain
        prepared = llama.prepare("bard", SceneInfo(location="the market"))  # what a contrasted line will start with
        slot = llama.pool.slots[0]
        assert not prepared.skipped and len(slot.tokens) == prepared.prompt_tokens and slot.base.tokens == slot.tokens
    finally:
        llama.close()
    results = {}
    jobs = {"smith": dict(contrast=1.0), "bard": dict(contrast=0.0)}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, reply(torch_engine, n, **jobs[n])[0]))
               for n in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {"smith": solo["smith"][0], "bard": reply(torch_engine, "bard", contrast=0.0)[0]}


def test_batched_rows_equal_their_solo_replies(torch_engine, solo):
    solo = {npc: text for npc, (text, _) in solo.items()}
    assert solo["smith"] != solo["bard"]
    before = len(torch_engine.batcher.batch_sizes)
    results = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, reply(torch_engine, n)[0])) for n in ("smith", "bard")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == solo
    assert 2 in torch_engine.batcher.batch_sizes[before:]  # both NPCs decoded in the same forward passes


def test_stop_strings_and_dropped_streams(torch_engine, solo):
    text = solo["bard"][0]
    word = text.split()[1]
    cut, last = reply(torch_engine, "bard", stop=(word,))
    assert word not in cut and text.startswith(cut) and last.finish == "stop"
    r = torch_engine.say("smith", "Talk for a long time.", SceneInfo(), GenOptions(temperature=0.9, max_tokens=300, seed=1))
    next(r.chunks)
    r.chunks.close()
    assert torch_engine.batcher.inflight.wait_idle(30)  # the dropped row stopped long before 300 tokens


def test_prepare_on_the_torch_engine_says_why_it_reads_nothing(torch_engine):
    p = torch_engine.prepare("smith", SceneInfo(location="the forge"))
    assert p.role_id == "smith" and p.prompt_tokens > 0 and p.read_tokens == 0 and "keeps no prompt cache" in p.skipped


def test_beats_on_the_torch_engine_are_one_clear_error(torch_engine):
    from neeko_npc.errors import BadRequest
    from neeko_npc.roles.prompt import BeatAsk

    with pytest.raises(BadRequest, match="does not score beats yet; serve with --engine llama.cpp"):
        torch_engine.say("smith", LINE, SceneInfo(), GenOptions(max_tokens=4), beats=BeatAsk(("happy", "sad")))
    assert torch_engine.busy() == 0


def test_a_row_whose_output_goes_non_finite_fails_alone(torch_engine, solo):
    """A block that escaped the file checks (set here in memory: 1e30 everywhere) ends its own row with
    NonFiniteLogits naming the NPC; the NPC batched beside it gets its solo reply."""
    from neeko_npc.errors import NonFiniteLogits

    smith = solo["smith"][0]
    k = torch_engine.roles().adapters["bard"].handle
    saved = {name: [t.clone() for t in mod.block(k)] for name, mod in torch_engine.neeko.modules.items()}
    try:
        for mod in torch_engine.neeko.modules.values():
            A, B = mod.block(k)
            mod.set_block(k, A.new_full(A.shape, 1e30), B.new_full(B.shape, 1e30))
        results, errors = {}, {}

        def talk(npc):
            try:
                results[npc] = reply(torch_engine, npc)[0]
            except NonFiniteLogits as exc:
                errors[npc] = str(exc)

        before = len(torch_engine.batcher.batch_sizes)
        threads = [threading.Thread(target=talk, args=(n,)) for n in ("smith", "bard")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert 2 in torch_engine.batcher.batch_sizes[before:]
        assert results == {"smith": smith}
        assert list(errors) == ["bard"] and "NPC 'bard' produced non-finite logits" in errors["bard"]
    finally:
        for name, mod in torch_engine.neeko.modules.items():
            mod.set_block(k, *saved[name])
    assert torch_engine.batcher.inflight.wait_idle(10)


def test_grpc_service_on_the_torch_engine(torch_engine, solo):
    """Last in this file: the daemon takes the module's engine (one model load fewer) and closes it when it stops."""
    from neeko_npc.server.app import Daemon, ServerConfig
    from neeko_npc.server.client import Client

    smith = solo["smith"][0]
    d = Daemon(ServerConfig(port=0, watch_interval=0), lambda: torch_engine).start()
    try:
        assert d.loaded.wait(120) and d.service.engine is torch_engine, d.service.load_error
        c = Client(d.address)
        chunks = list(c.say("smith", LINE, scene=pb.SceneContext(location="the village square"), temperature=0.0, max_tokens=24))
        assert chunks[-1].done and "".join(x.text for x in chunks) == smith and smith.strip()
        assert [w.role_id for w in chunks[-1].role_weights] == ["smith"]
        c.close()
    finally:
        d.stop(0)
    assert torch_engine.busy() == 0 and torch_engine._closing  # the daemon drained and closed it
