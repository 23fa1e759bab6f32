"""roles/gguf_file.py reads what gguf-py's own reader reads, fast, and says so in one line when a file is damaged."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import quantize

from neeko_npc.export.merge import rewrite_gguf
from neeko_npc.roles.gguf_file import GGUFFile
from neeko_npc.errors import GGUFFormatError


@pytest.fixture
def small(tmp_path):
    """A GGUF with a value of every type, arrays of numbers and of strings, and f32, f16 and Q8_0 tensors."""
    path = tmp_path / "small.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_uint8("t.u8", 7)
    w.add_int8("t.i8", -7)
    w.add_uint16("t.u16", 65535)
    w.add_int16("t.i16", -300)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -5)
    w.add_float32("t.f32", 0.1)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "Grüße, smith — 3.5 kg")
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**40))
    w.add_float64("t.f64", 1e-300)
    w.add_array("t.strings", ["a", "", "Ā b", "<|im_end|>"])
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, -1.25])
    w.add_key_value("t.bools", [True, False], GGUFValueType.ARRAY, sub_type=GGUFValueType.BOOL)
    rng = np.random.default_rng(0)
    w.add_tensor("a.weight", rng.standard_normal((3, 64)).astype(np.float32))
    w.add_tensor("b.weight", rng.standard_normal((2, 32)).astype(np.float16))
    q = rng.standard_normal((4, 64)).astype(np.float32)
    w.add_tensor("c.weight", quantize(q, Q.Q8_0), raw_shape=quantize(q, Q.Q8_0).shape, raw_dtype=Q.Q8_0)
    w.add_tensor("norm", rng.standard_normal(5).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, q


def test_reads_what_gguf_py_reads(small):
    path, q = small
    mine, theirs = GGUFFile(path), GGUFReader(str(path))
    fields = {n: f for n, f in theirs.fields.items() if not n.startswith("GGUF.")}  # gguf-py's own header entries
    assert list(mine.fields) == list(fields)
    for name, f in fields.items():
        got = mine.fields[name]
        assert got.type == f.types[0] and got.value == f.contents(), name
        assert got.item_type == (f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None)
    assert mine.value("t.str") == "Grüße, smith — 3.5 kg" and mine.value("t.u64") == 2**63 + 5
    assert [t.name for t in mine.tensors] == [t.name for t in theirs.tensors]
    for t, ref in zip(mine.tensors, theirs.tensors):
        raw = mine.raw(t)
        assert t.type == ref.tensor_type and list(t.dims) == [int(x) for x in ref.shape]
        assert raw.shape == ref.data.shape and raw.dtype == ref.data.dtype and raw.tobytes() == ref.data.tobytes()
    c = next(t for t in mine.tensors if t.name == "c.weight")
    assert mine.as_float(c).shape == (4, 64) and np.abs(mine.as_float(c) - q).max() < 0.05  # Q8_0's rounding


def test_a_rewrite_that_changes_nothing_is_the_same_file(small, tmp_path):
    path, _ = small
    out = rewrite_gguf(path, tmp_path / "same.gguf", lambda name, weight: None)
    assert out.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:0], "empty file"),
    (lambda b: b"GGML" + b[4:], "not a GGUF file"),
    (lambda b: b[:4] + (3).to_bytes(4, "big") + b[8:], "big-endian"),
    (lambda b: b[:200], "truncated|damaged"),
    (lambda b: b[:-40], "truncated"),
])
def test_a_damaged_file_is_one_clear_error(small, tmp_path, damage, message):
    path, _ = small
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(damage(path.read_bytes()))
    with pytest.raises(GGUFFormatError, match=message):
        GGUFFile(bad)


def test_a_fingerprint_spells_shapes_as_the_shipped_roles_were_fingerprinted():
    """The fingerprint hashes each tensor's shape as text, written out so that it does not follow numpy's repr."""
    from neeko_npc.roles.base_model import _dims_text

    assert _dims_text((576, 49152)) == "[np.uint64(576), np.uint64(49152)]"


@pytest.mark.slow
def test_the_default_base_fingerprints_as_every_shipped_role_records(tmp_path, monkeypatch):
    """Read fresh (no cached fingerprint), the installed SmolLM2 GGUF is the base every shipped role names."""
    from pathlib import Path

    from neeko_npc.roles.asset_read import read_asset
    from neeko_npc.roles.base_model import base_info, resolve_base_model

    monkeypatch.setenv("NEEKO_NPC_CACHE", str(tmp_path))
    info = base_info(resolve_base_model(None))
    shipped = sorted((Path(__file__).parent.parent / "assets" / "roles").glob("*.nrole"))
    assert shipped and all(read_asset(p).base == info for p in shipped)
