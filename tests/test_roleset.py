"""What the daemon serves for each NPC, on real role files of the tiny base: isolation and request-time blends."""

import numpy as np
import pytest

from neeko_npc.engine.roleset import RoleSet
from neeko_npc.errors import InvalidBlend
from neeko_npc.roles.asset import write_asset
from neeko_npc.roles.profile import RoleProfile
from tests.helpers import TINY_BASE, block_asset, fusion_asset


class Handles:
    """The RoleSet's backend, reduced to naming each loaded block (the engines turn them into adapters)."""

    def __init__(self):
        self.loaded, self.freed = [], []

    def load(self, asset):
        self.loaded.append(asset.id)
        return asset.id

    def free(self, handle):
        self.freed.append(handle)


@pytest.fixture
def roles(tmp_path):
    smith, bard = block_asset("smith"), block_asset("bard", seed=1)
    write_asset(smith, tmp_path / "smith.nrole")
    write_asset(bard, tmp_path / "bard.nrole")
    write_asset(fusion_asset("knight", [(smith, 0.75), (bard, 0.25)]), tmp_path / "knight.nrole")
    rs = RoleSet(tmp_path, TINY_BASE, Handles())
    rs.reload()
    return rs


def served(rs):
    return {rid: r.weights for rid, r in rs.roster.roles.items()}


def test_a_trained_npc_speaks_with_its_own_block_whatever_else_is_loaded(roles, tmp_path):
    before = served(roles)
    assert before == {"smith": {"smith": 1.0}, "bard": {"bard": 1.0}, "knight": {"smith": 0.75, "bard": 0.25}}
    twin = block_asset("smith_twin", seed=2)
    twin.embedding = roles.roster.roles["smith"].asset.embedding.copy()  # the very same profile embedding
    write_asset(twin, tmp_path / "smith_twin.nrole")
    roles.reload()
    assert served(roles) == {**before, "smith_twin": {"smith_twin": 1.0}}
    (tmp_path / "smith_twin.nrole").unlink()
    roles.reload()
    assert served(roles) == before and roles.backend.freed == ["smith_twin"]


def test_a_blend_resolves_fused_roles_to_their_blocks_and_pins_them(roles):
    ada = RoleProfile(id="villager_1", name="Ada", persona="A baker.")
    voice, adapters, scales = roles.acquire("villager_1", [("knight", 1.0), ("bard", 1.0)], ada)
    assert voice.profile is ada and voice.id == "villager_1"
    assert voice.weights == pytest.approx({"bard": 0.625, "smith": 0.375})
    assert [a.handle for a in adapters] == ["bard", "smith"] and np.allclose(scales, [0.625, 0.375])
    assert all(a.users == 1 for a in adapters)
    roles.release(adapters)
    assert all(a.users == 0 for a in adapters)


def test_a_bad_blend_pins_nothing(roles):
    ada = RoleProfile(id="villager_1", name="Ada", persona="A baker.")
    for blend, limit, needle in [
        ([("knight", 1.0), ("bard", 1.0)], 1, "names 2 roles; at most 1"),
        ([("knight", 1.0)], 1, "mixes 2 blocks (bard, smith); at most 1"),
        ([("ghost", 1.0)], 3, "'ghost', not hosted here; known: bard, knight, smith"),
    ]:
        with pytest.raises(InvalidBlend, match=needle.replace("(", r"\(").replace(")", r"\)")):
            roles.acquire("villager_1", blend, ada, limit)
    with pytest.raises(InvalidBlend, match="'smith' is a hosted role"):
        roles.acquire("smith", [("bard", 1.0)], ada)
    assert all(a.users == 0 for a in roles.roster.adapters.values())
