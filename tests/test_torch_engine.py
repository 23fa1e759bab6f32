"""--engine torch: the block LoRA served from torch, batched, and checked against llama.cpp on the same float weights."""

import threading

import numpy as np
import pytest
import torch

from neeko_npc import defaults
from neeko_npc.engine.stream import GenOptions
from neeko_npc.engine.facade import EngineConfig
from neeko_npc.engine.llama_engine import LlamaEngine
from neeko_npc.roles.beats import BeatHead, Classifier
from neeko_npc.roles.prompt import EMOTION_PIECE, EMOTIONS, Action, BeatAsk, SceneInfo
from neeko_npc.engine.torch_engine import TorchEngine
from neeko_npc.v1 import dialogue_pb2 as pb
from neeko_npc.roles.asset import write_asset
from neeko_npc.roles.asset_read import read_asset
from neeko_npc.roles.base_model import base_info, default_model_path, resolve_base_model
from tests.gguf_f32 import write_f32_copy

pytestmark = pytest.mark.slow  # the real model

LINE = "What do you do all day?"
ACTIONS = (Action("wave", "wave at the player"), Action("work", "go back to work"))


def random_head(dim: int) -> BeatHead:
    """Smith's head in these tests: random weights, for the serving maths (what a bake learns is test_learned_beats')."""
    rng = np.random.default_rng(7)
    return BeatHead(dim, Classifier(EMOTIONS, rng.normal(0, 0.05, (len(EMOTIONS), dim)).astype(np.float32),
                                    rng.normal(0, 0.5, len(EMOTIONS)).astype(np.float32)),
                    Classifier(tuple(a.id for a in ACTIONS), rng.normal(0, 0.05, (2, dim)).astype(np.float32),
                               np.zeros(2, np.float32)))


@pytest.fixture(scope="module")
def f32_setup(baked, gguf_base, tmp_path_factory):
    """The same float weights twice: the float copy of SmolLM2 the trainer keeps (a Hugging Face folder, for torch)
    and an f32 GGUF of the same dequantized tensors (for llama.cpp), with the baked roles re-stamped for each; smith
    carries a beat head (random_head)."""
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
            a.beats = random_head(info.hidden) if rid == "smith" else None
            a.contrast = None  # served at the default contrast (1) unless a test asks otherwise
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
        contrasted, plain = {}, {}
        for npc in ("smith", "bard"):
            assert llama.store.covers((), llama.profile_prefix(llama.role(npc).asset.profile))  # the base's prefix is kept
            contrasted[npc] = reply(torch_engine, npc, contrast=1.0)[0]
            assert reply(llama, npc)[0] == contrasted[npc] and contrasted[npc].strip(), npc
            plain[npc] = reply(torch_engine, npc, contrast=0.0)[0]
            assert plain[npc] != contrasted[npc] and reply(llama, npc, contrast=0.0)[0] == plain[npc]
            # the torch engine's own default is the daemon's, contrast 0 (off): the plain line
            assert defaults.CONTRAST == 0 and solo[npc][0] == plain[npc]
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
    assert results == {"smith": contrasted["smith"], "bard": plain["bard"]}


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


def greedy_replay(engine, npc, prompt, max_tokens):
    """The NPC's plain greedy line re-read from the start at every token (no cache, no batch): (tokens, the
    final-norm state at the line's last token)."""
    k = engine.roles().adapters[npc].handle
    w = torch.zeros(1, engine.neeko.n_blocks)
    w[0, k] = 1.0
    held = list(prompt)
    with torch.no_grad(), engine.lock, engine.neeko.gate(w):
        for _ in range(max_tokens + 1):
            h = engine.model.base_model(input_ids=torch.tensor([held])).last_hidden_state[0, -1]
            tok = int(engine.model.lm_head(h).argmax())
            if tok in engine.eos_ids or len(held) - len(prompt) == max_tokens:
                return held[len(prompt):], h.float().numpy()
            held.append(tok)


def test_a_learned_beat_on_the_torch_engine_reads_the_lines_last_state(torch_engine):
    """A replay without cache or batch of the same greedy line gives, from smith's head on the state of the line's
    last token, the engine's probabilities; bard's line in the same batch is unchanged by the beat asked beside it."""
    ask = BeatAsk(EMOTIONS, ACTIONS)
    for max_tokens in (24, 6):  # ended by the end of turn or by the length (its last token decoded for the beat)
        opts = dict(contrast=0.0, max_tokens=max_tokens)
        results = {}
        jobs = {"smith": ask, "bard": None}

        def talk(npc):
            r = torch_engine.say(npc, LINE, SceneInfo(location="the village square"),
                                 GenOptions(temperature=0.0, **opts), beats=jobs[npc])
            chunks = list(r.chunks)
            results[npc] = ("".join(c.text for c in chunks), chunks[-1])

        threads = [threading.Thread(target=talk, args=(n,)) for n in jobs]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        text, last = results["smith"]
        prompt, _ = torch_engine.prompt(torch_engine.role("smith").asset.profile, "", "smith", LINE,
                                        SceneInfo(location="the village square"), max_tokens)
        tokens, h = greedy_replay(torch_engine, "smith", prompt, max_tokens)
        assert torch_engine.tok.decode(tokens, skip_special_tokens=True).strip() == text.strip() and text.strip()
        assert last.completion_tokens == len(tokens) and last.finish == ("length" if len(tokens) == max_tokens else "stop")
        emotion, action = random_head(h.shape[0]).choose(h, ask)
        assert (last.emotion.id, last.action.id) == (emotion.id, action.id)
        assert last.emotion.probabilities == pytest.approx(emotion.probabilities, abs=1e-4)
        assert last.action.probabilities == pytest.approx(action.probabilities, abs=1e-4)
        assert results["bard"][0] == reply(torch_engine, "bard", **opts)[0] and results["bard"][1].emotion is None
    assert torch_engine.batcher.inflight.wait_idle(10)


def test_a_beat_no_head_covers_is_the_question_scored_on_torch(torch_engine):
    """Bard has no head, so its beat is the question after its line: each emotion's probability is its whole
    answer's, scored here by one plain forward a candidate under bard's block; a cancelled line gets no beat."""
    ask = BeatAsk(EMOTIONS[:3], ())
    scene = SceneInfo(location="the village square")
    r = torch_engine.say("bard", LINE, scene, GenOptions(temperature=0.0, max_tokens=12, contrast=0.0), beats=ask)
    chunks = list(r.chunks)
    text, last = "".join(c.text for c in chunks), chunks[-1]
    assert last.emotion.id in ask.emotions and last.action is None
    _, msgs = torch_engine.prompt(torch_engine.role("bard").asset.profile, "", "bard", LINE, scene, 12)
    job = torch_engine.beat_job(msgs, ask, torch_engine.role("bard").asset.beats)
    assert not job.learned
    head = job.prompt_for(text.strip()) + torch_engine.piece_tokens(EMOTION_PIECE)
    w = torch.zeros(1, torch_engine.neeko.n_blocks)
    w[0, torch_engine.roles().adapters["bard"].handle] = 1.0
    logps = []
    with torch.no_grad(), torch_engine.lock, torch_engine.neeko.gate(w):
        for e in ask.emotions:
            cont = torch_engine.piece_tokens(" " + e) + job.end[:1]
            logits = torch_engine.model(input_ids=torch.tensor([head + cont[:-1]])).logits[0].double()
            lp = torch.log_softmax(logits, -1)
            logps.append(sum(float(lp[len(head) - 1 + j, c]) for j, c in enumerate(cont)))
    p = np.exp(np.array(logps) - max(logps))
    assert dict(zip(ask.emotions, p / p.sum())) == pytest.approx(last.emotion.probabilities, abs=1e-4)

    r = torch_engine.say("smith", LINE, scene, GenOptions(max_tokens=300), beats=BeatAsk(EMOTIONS, ACTIONS))
    next(r.chunks)
    r.chunks.close()  # dropped: the row stops, and no beat is scored for a line never finished
    assert torch_engine.batcher.inflight.wait_idle(30)


def test_learned_beats_are_the_same_on_llama_cpp_and_torch(f32_setup, torch_engine):
    """On the same float weights the two engines give smith's line the same learned beat: the head reads the same
    state (llama.cpp's embeddings output, torch's final norm) up to the kernels' rounding."""
    model, roles = f32_setup["llama"]
    llama = LlamaEngine(roles, model, EngineConfig(pool_size=1, n_threads=2))
    ask = BeatAsk(EMOTIONS, ACTIONS)
    try:
        beats = []
        for engine in (torch_engine, llama):
            r = engine.say("smith", LINE, SceneInfo(location="the village square"),
                           GenOptions(temperature=0.0, max_tokens=24, contrast=0.0), beats=ask)
            chunks = list(r.chunks)
            beats.append(("".join(c.text for c in chunks), chunks[-1].emotion, chunks[-1].action))
        (t_text, t_em, t_act), (l_text, l_em, l_act) = beats
        assert t_text == l_text and (t_em.id, t_act.id) == (l_em.id, l_act.id)
        assert t_em.probabilities == pytest.approx(l_em.probabilities, abs=2e-3)
        assert t_act.probabilities == pytest.approx(l_act.probabilities, abs=2e-3)
    finally:
        llama.close()


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
