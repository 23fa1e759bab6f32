"""The .nrole format: round trip, and one clear error per kind of bad file."""

import hashlib
import struct

import msgpack
import numpy as np
import pytest

from neeko_npc.export.fold import fold
from neeko_npc.roles.folder import load_role_assets
from neeko_npc.roles.asset import HEADER, MAGIC, write_asset
from neeko_npc.roles.asset_read import check_base, read_asset
from neeko_npc.errors import AssetError
from tests.helpers import TINY_BASE, block_asset, fusion_asset


def test_roundtrip_is_exact(tmp_path):
    a = block_asset("smith")
    path = write_asset(a, tmp_path / "smith.nrole")
    b = read_asset(path)
    assert b.id == "smith" and b.kind == "block" and b.base == TINY_BASE
    assert b.sha256 == a.sha256 == hashlib.sha256(path.read_bytes()[HEADER.size:]).hexdigest()
    for key in a.block.A:
        assert np.array_equal(a.block.A[key], b.block.A[key]) and np.array_equal(a.block.B[key], b.block.B[key])
    assert np.array_equal(a.embedding, b.embedding)


def test_a_roles_own_contrast_is_kept_and_a_role_without_one_has_none(tmp_path):
    write_asset(block_asset("smith", contrast=0.5), tmp_path / "smith.nrole")
    write_asset(block_asset("bard", seed=1), tmp_path / "bard.nrole")
    smith, bard = read_asset(tmp_path / "smith.nrole"), read_asset(tmp_path / "bard.nrole")
    assert smith.contrast == 0.5 and smith.summary()["voice"] == {"contrast": 0.5}
    assert bard.contrast is None and "voice" not in bard.summary()


def test_f16_storage_halves_the_file(tmp_path):
    big = write_asset(block_asset("a"), tmp_path / "a.nrole").stat().st_size
    small = write_asset(block_asset("a", dtype="f16"), tmp_path / "b.nrole").stat().st_size
    assert small < 0.6 * big
    assert read_asset(tmp_path / "b.nrole").block.A[(0, "q_proj")].dtype == np.float16


def _rewrite(path, mutate):
    """Decode the payload, change it, and write a file with a *valid* checksum, so the schema check must catch it."""
    raw = path.read_bytes()
    payload = msgpack.unpackb(raw[HEADER.size:], raw=False)
    mutate(payload)
    body = msgpack.packb(payload, use_bin_type=True)
    path.write_bytes(HEADER.pack(MAGIC, 1, len(body), hashlib.sha256(body).digest()) + body)


@pytest.fixture
def asset_file(tmp_path):
    return write_asset(block_asset("smith"), tmp_path / "smith.nrole")


def test_truncated(asset_file):
    data = asset_file.read_bytes()
    asset_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(AssetError, match="truncated"):
        read_asset(asset_file)
    asset_file.write_bytes(data[:10])
    with pytest.raises(AssetError, match="shorter than the 52-byte header"):
        read_asset(asset_file)


def test_bad_checksum(asset_file):
    data = bytearray(asset_file.read_bytes())
    data[-5] ^= 0xFF
    asset_file.write_bytes(bytes(data))
    with pytest.raises(AssetError, match="checksum mismatch") as e:
        read_asset(asset_file)
    assert str(asset_file) in str(e.value) and "re-bake" in str(e.value)


def test_foreign_file(tmp_path):
    f = tmp_path / "model.nrole"
    f.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(AssetError, match="not a neeko-npc role asset"):
        read_asset(f)


def test_unknown_version(asset_file):
    data = bytearray(asset_file.read_bytes())
    data[8:12] = struct.pack("<I", 99)
    asset_file.write_bytes(bytes(data))
    with pytest.raises(AssetError, match="format version 99 is not supported.*upgrade neeko-npc"):
        read_asset(asset_file)


def test_other_base_model(asset_file):
    other = TINY_BASE.__class__(**{**TINY_BASE.to_dict(), "fingerprint": "0" * 64, "name": "other"})
    with pytest.raises(AssetError, match="baked for base model 'tiny'.*loaded base model is 'other'"):
        read_asset(asset_file, expect_base=other)
    check_base(read_asset(asset_file), TINY_BASE)  # the right base passes


def test_shape_mismatch(asset_file):
    def grow(p):
        p["lora"]["tensors"][0][3] = [4, 64]
    _rewrite(asset_file, grow)
    with pytest.raises(AssetError, match=r"shape mismatch: layer 0 q_proj.A is \[4, 64\], the base model needs \[4, 32\]"):
        read_asset(asset_file)


@pytest.mark.parametrize("field,value,needle", [
    ("r", 10**9, "lora.r = 1000000000 is outside the sane range"),
    ("n_layers", 10**7, "base.n_layers = 10000000 is outside the sane range"),
    ("dim", 10**8, "embedding.dim = 100000000 is outside the sane range"),
])
def test_absurd_sizes_are_rejected_before_allocating(asset_file, field, value, needle):
    def mutate(p):
        {"r": p["lora"], "n_layers": p["base"], "dim": p["embedding"]}[field][field] = value
    _rewrite(asset_file, mutate)
    with pytest.raises(AssetError, match=needle):
        read_asset(asset_file)


def test_nan_weights(asset_file):
    def poison(p):
        arr = np.frombuffer(p["lora"]["tensors"][1][4], np.float32).copy()
        arr[0] = np.nan
        p["lora"]["tensors"][1][4] = arr.tobytes()
    _rewrite(asset_file, poison)
    with pytest.raises(AssetError, match="NaN"):
        read_asset(asset_file)


def test_a_bad_file_does_not_stop_the_others(tmp_path):
    write_asset(block_asset("smith"), tmp_path / "smith.nrole")
    write_asset(block_asset("bard", seed=1), tmp_path / "bard.nrole")
    (tmp_path / "broken.nrole").write_bytes(b"NEEKOROL" + b"\x01" * 30)
    assets, errors = load_role_assets(tmp_path)
    assert [a.id for a in assets] == ["bard", "smith"]
    assert len(errors) == 1 and "broken.nrole" in str(errors[0])


def test_fusion_folds_exactly_and_checks_its_references(tmp_path):
    a = block_asset("smith")
    b = block_asset("bard", seed=1)
    write_asset(a, tmp_path / "smith.nrole")
    write_asset(b, tmp_path / "bard.nrole")
    fused = fusion_asset("knight", [(a, 0.75), (b, 0.25)])
    write_asset(fused, tmp_path / "knight.nrole")
    fused = read_asset(tmp_path / "knight.nrole")
    known = {x.id: x for x in (a, b)}
    lora = fold(fused, known)
    assert lora.r == 8 and lora.alpha / lora.r == 1.0
    key = (1, "v_proj")
    want = 0.75 * a.block.scale * a.block.B[key] @ a.block.A[key] + 0.25 * b.block.scale * b.block.B[key] @ b.block.A[key]
    np.testing.assert_allclose(lora.B[key] @ lora.A[key], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(AssetError, match="references role 'bard', which is not in the role set"):
        fold(fused, {"smith": a})
    changed = block_asset("bard", seed=5)
    write_asset(changed, tmp_path / "bard2.nrole")
    with pytest.raises(AssetError, match="different version of role 'bard'"):
        fold(fused, {"smith": a, "bard": changed})
