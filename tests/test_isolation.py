"""Isolation on the real model: adding or removing a role never changes another NPC, and a role whose output
goes non-finite fails its own line only."""

import json
import logging
import shutil

import grpc
import numpy as np
import pytest

from neeko_npc.engine.llama_pool import default_cache_dir
from neeko_npc.export.fold import fold
from neeko_npc.export.gguf_lora import write_gguf_lora
from neeko_npc.roles.asset import write_asset
from neeko_npc.roles.asset_read import read_asset
from neeko_npc.server.client import Client
from neeko_npc.v1 import dialogue_pb2 as pb
from tests.conftest import DATA, FAST, run
from tests.helpers import fusion_asset
from tests.test_server import GREEDY, code_of, collect, start

pytestmark = pytest.mark.slow  # the real model


def served_state(daemon, client, npcs):
    """Every NPC's served weights, and its greedy reply from a cold cache (so every reply is computed the same way)."""
    weights = {r.id: [(w.role_id, w.weight) for w in r.weights] for r in client.roles().roles}
    replies = {}
    for npc in npcs:
        daemon.service.engine.forget_cache()
        text, chunks = collect(client.say(npc, "What news from the road?", **GREEDY))
        assert chunks[-1].cached_prompt_tokens == 0 and text.strip()
        replies[npc] = text
    return {npc: weights[npc] for npc in npcs}, replies


def test_adding_and_removing_a_near_duplicate_role_changes_no_other_npc(baked, tmp_path):
    roles = tmp_path / "roles"
    shutil.copytree(baked["dir"], roles)  # smith, bard (pre-finetuned), fisher (expansion)
    smith, bard = read_asset(roles / "smith.nrole"), read_asset(roles / "bard.nrole")
    write_asset(fusion_asset("harbor_singer", [(bard, 0.6), (smith, 0.4)], base=smith.base), roles / "harbor_singer.nrole")
    old = ["bard", "fisher", "harbor_singer", "smith"]

    # The twin: the smith's own profile under a new id, trained on the smith's lines. Its profile embedding is
    # nearly the smith's, which is what used to pull it into the smith's voice through the gate.
    twin = json.loads((DATA / "smith" / "profile.json").read_text())
    twin["id"] = "smith_twin"
    (tmp_path / "twin.json").write_text(json.dumps(twin))
    # four of the smith's scenes are enough for a block of its own (what it learns is not what this test checks)
    lines = "".join((DATA / "smith" / "lines.jsonl").read_text().splitlines(keepends=True)[:4])
    lines = lines.replace('"speaker": "smith"', '"speaker": "smith_twin"')
    (tmp_path / "twin.jsonl").write_text(lines)
    run("bake-role", "--profile", tmp_path / "twin.json", "--data", tmp_path / "twin.jsonl", "--roles", roles,
        "--out", tmp_path / "smith_twin.nrole", *FAST, "--epochs", "1")
    e_twin = read_asset(tmp_path / "smith_twin.nrole").embedding
    assert float(np.dot(smith.embedding, e_twin)) > 0.95

    d = start(roles, pool=1, watch=0)
    try:
        assert d.loaded.wait(60)
        c = Client(d.address)
        before = served_state(d, c, old)
        assert before[0]["smith"] == [("smith", 1.0)] and before[0]["fisher"] == [("fisher", 1.0)]
        assert before[0]["harbor_singer"] == [("bard", pytest.approx(0.6)), ("smith", pytest.approx(0.4))]  # as stored

        shutil.copy(tmp_path / "smith_twin.nrole", roles)  # the designer drops the new role in
        res = c.stub.ReloadRoles(pb.ReloadRolesRequest())
        assert list(res.added) == ["smith_twin"] and not res.problems
        assert served_state(d, c, old) == before
        twin_weights = {r.id: [(w.role_id, w.weight) for w in r.weights] for r in c.roles().roles}["smith_twin"]
        assert twin_weights == [("smith_twin", 1.0)]

        (roles / "smith_twin.nrole").unlink()
        res = c.stub.ReloadRoles(pb.ReloadRolesRequest())
        assert list(res.removed) == ["smith_twin"]
        assert served_state(d, c, old) == before
        c.close()
    finally:
        d.stop(0)


def test_a_role_whose_output_goes_non_finite_fails_alone(baked, tmp_path, caplog):
    """A broken adapter that slipped past the file checks (here: a damaged adapter cache file with 3e38 in it)
    ends that NPC's line with INTERNAL, clears its context, is logged once, and every other NPC keeps serving."""
    roles = tmp_path / "roles"
    shutil.copytree(baked["before"], roles)  # smith, bard
    broken = read_asset(roles / "smith.nrole")
    broken.profile.id = "smith_broken"
    write_asset(broken, roles / "smith_broken.nrole")
    lora = fold(broken)
    for k in lora.A:
        lora.A[k] = np.full_like(lora.A[k], 3e38)
    cache = default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    write_gguf_lora(lora, broken.base, cache / f"{broken.sha256}.gguf")

    d = start(roles, pool=1, watch=0)
    try:
        assert d.loaded.wait(60)
        c = Client(d.address)
        engine = d.service.engine
        engine.forget_cache()  # waits for the warm-up, which refused the broken role's prefix (a warning) ...
        assert any("could not warm smith_broken" in r.getMessage() for r in caplog.records)
        good = collect(c.say("bard", "Sing!", **GREEDY))[0]  # ... and the bard's line starts cold, like the one below
        with caplog.at_level(logging.ERROR, logger="neeko_npc.engine"):
            for _ in range(2):
                code, details = code_of(lambda: collect(c.say("smith_broken", "Hello?", **GREEDY)))
                assert code == grpc.StatusCode.INTERNAL and "NPC 'smith_broken' produced non-finite logits" in details
                assert engine.busy() == 0 and engine.pool.slots[0].tokens == []  # context freed and cleared
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "smith_broken" in r.getMessage()]
        assert len(errors) == 1  # logged once
        engine.forget_cache()
        assert collect(c.say("bard", "Sing!", **GREEDY))[0] == good  # the same context serves others as before
        assert collect(c.say("smith", "Hello?", **GREEDY))[0].strip()
        c.close()
    finally:
        d.stop(0)
