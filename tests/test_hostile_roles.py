"""Hostile and broken role files: each is refused with one AssetError naming the file, never anything else,
and a folder holding all of them beside good roles serves the good ones.

Most cases are built on the tiny base (fast); the last test drops real-model poisons into a real daemon."""

import hashlib
import shutil
import struct

import msgpack
import numpy as np
import pytest

from neeko_npc.roles.asset import HEADER, MAGIC, MAX_ABS_VALUE, write_asset
from neeko_npc.roles.asset_read import read_asset
from neeko_npc.errors import AssetError
from neeko_npc.roles.folder import load_role_assets
from tests.helpers import block_asset, fusion_asset

# -- building bad files ------------------------------------------------------------------------------------


def sealed(payload) -> bytes:
    """A file whose header and checksum are valid for ``payload``: only the schema checks can refuse it."""
    body = payload if isinstance(payload, bytes) else msgpack.packb(payload, use_bin_type=True)
    return HEADER.pack(MAGIC, 1, len(body), hashlib.sha256(body).digest()) + body


def payload_of(data: bytes) -> dict:
    return msgpack.unpackb(data[HEADER.size:], raw=False)


def edit(data: bytes, mutate) -> bytes:
    p = payload_of(data)
    mutate(p)
    return sealed(p)


def tensor_edit(index, fn):
    def mutate(p):
        t = p["lora"]["tensors"][index]
        arr = np.frombuffer(t[4], np.float32).copy()
        fn(arr)
        t[4] = arr.tobytes()
    return mutate


def header_edit(data: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def nested(depth: int):
    x = []
    for _ in range(depth):
        x = [x]
    return x


MB = "x" * (1 << 20)


def block_cases(good: bytes) -> dict[str, bytes]:
    n = len(good)
    cases = {}
    # truncation at every header boundary, inside the payload, one byte short
    for cut in (0, 1, 7, 8, 11, 12, 19, 20, 51, 52, 53, n // 2, n - 1):
        cases[f"truncated_{cut}"] = good[:cut]
    # bit flips in each header field and in the payload
    for bit in (0, 63, 64, 95, 96, 159, 160, 415, 416 + 7, 8 * (n // 2), 8 * n - 1):
        cases[f"bitflip_{bit}"] = flip(good, bit)
    cases["magic_gguf"] = b"GGUF" + good[4:]
    cases["version_0"] = header_edit(good, 8, "<I", 0)
    cases["version_2"] = header_edit(good, 8, "<I", 2)
    cases["version_max"] = header_edit(good, 8, "<I", 2**32 - 1)
    cases["length_longer"] = header_edit(good, 12, "<Q", n - HEADER.size + 1)
    cases["length_shorter"] = header_edit(good, 12, "<Q", n - HEADER.size - 1)
    cases["length_max"] = header_edit(good, 12, "<Q", 2**64 - 1)
    cases["extra_bytes"] = good + b"\0" * 16
    cases["not_msgpack"] = sealed(bytes(range(256)) * 8)
    cases["msgpack_trailing"] = sealed(good[HEADER.size:] + b"\xc0")
    cases["msgpack_not_a_map"] = sealed([1, 2, 3])
    cases["deeply_nested"] = sealed(b"\x91" * 100_000 + b"\x90")  # [[[[...]]]], 100,000 deep
    cases["deeply_nested_record"] = edit(good, lambda p: p.__setitem__("training", {"x": nested(200)}))
    cases["record_too_many_values"] = edit(good, lambda p: p.__setitem__("training", {"x": list(range(5000))}))
    cases["ext_type"] = sealed(msgpack.packb({"kind": msgpack.ExtType(5, b"boom")}))
    # checksum-valid edits of the payload
    cases["id_path_separator"] = edit(good, lambda p: p["profile"].__setitem__("id", "../../etc/passwd"))
    cases["id_megabytes"] = edit(good, lambda p: p["profile"].__setitem__("id", "a" * 60_000))
    cases["kind_unknown"] = edit(good, lambda p: p.__setitem__("kind", "virus"))
    cases["kind_missing"] = edit(good, lambda p: p.pop("kind"))
    cases["dtype_unknown"] = edit(good, lambda p: p["lora"].__setitem__("dtype", "bf16"))
    cases["dtype_not_a_string"] = edit(good, lambda p: p["lora"].__setitem__("dtype", [1]))
    cases["shape_negative"] = edit(good, lambda p: p["lora"]["tensors"][0].__setitem__(3, [-4, -32]))
    cases["shape_lies"] = edit(good, lambda p: p["lora"]["tensors"][0].__setitem__(3, [8, 32]))
    cases["shape_floats"] = edit(good, lambda p: p["lora"]["tensors"][0].__setitem__(3, [4.0, 32.0]))
    cases["rank_negative"] = edit(good, lambda p: p["lora"].__setitem__("r", -4))

    def duplicate(p):
        p["lora"]["tensors"][2] = list(p["lora"]["tensors"][0])
    cases["tensor_duplicate"] = edit(good, duplicate)
    cases["tensor_missing"] = edit(good, lambda p: p["lora"]["tensors"].pop())
    cases["tensor_extra"] = edit(good, lambda p: p["lora"]["tensors"].append(list(p["lora"]["tensors"][0])))
    cases["layer_out_of_range"] = edit(good, lambda p: p["lora"]["tensors"][0].__setitem__(0, 2))
    cases["layer_negative"] = edit(good, lambda p: p["lora"]["tensors"][0].__setitem__(0, -1))
    cases["layer_bool"] = edit(good, lambda p: p["lora"]["tensors"][0].__setitem__(0, False))
    cases["target_unknown"] = edit(good, lambda p: p["lora"].__setitem__("targets", ["q_proj", "lm_head"]))
    cases["bytes_short"] = edit(good, lambda p: p["lora"]["tensors"][0].__setitem__(4, b"\0" * 12))
    cases["value_nan"] = edit(good, tensor_edit(1, lambda a: a.__setitem__(0, np.nan)))
    cases["value_inf"] = edit(good, tensor_edit(0, lambda a: a.__setitem__(3, -np.inf)))
    cases["value_3e38"] = edit(good, tensor_edit(1, lambda a: a.fill(3e38)))
    cases["value_over_bound"] = edit(good, tensor_edit(2, lambda a: a.__setitem__(0, MAX_ABS_VALUE * 1.01)))
    cases["alpha_huge"] = edit(good, lambda p: p["lora"].__setitem__("alpha", 3e38))
    cases["alpha_nan"] = edit(good, lambda p: p["lora"].__setitem__("alpha", float("nan")))
    cases["tau_inf"] = edit(good, lambda p: p["gate"].__setitem__("tau", float("inf")))
    cases["embedding_zero"] = edit(good, lambda p: p["embedding"].__setitem__("data", b"\0" * len(p["embedding"]["data"])))
    cases["embedding_huge"] = edit(good, lambda p: p["embedding"].__setitem__(
        "data", np.full(len(p["embedding"]["data"]) // 4, 3e38, np.float32).tobytes()))
    cases["base_n_layers_huge"] = edit(good, lambda p: p["base"].__setitem__("n_layers", 2**62))
    cases["base_inconsistent"] = edit(good, lambda p: p["base"].__setitem__("n_heads", 5))
    # huge strings in any record
    cases["persona_megabyte"] = edit(good, lambda p: p["profile"].__setitem__("persona", MB))
    cases["persona_60k"] = edit(good, lambda p: p["profile"].__setitem__("persona", "y" * 60_000))
    cases["example_line_60k"] = edit(good, lambda p: p["profile"].__setitem__("example_lines", ["z" * 60_000]))
    cases["training_note_60k"] = edit(good, lambda p: p["training"].__setitem__("note", "n" * 60_000))
    cases["created_60k"] = edit(good, lambda p: p.__setitem__("created", "c" * 60_000))
    cases["tool_not_a_string"] = edit(good, lambda p: p.__setitem__("tool", {"a": [1, 2, 3]}))
    cases["base_name_60k"] = edit(good, lambda p: p["base"].__setitem__("name", "b" * 60_000))
    cases["embedding_model_60k"] = edit(good, lambda p: p["embedding"].__setitem__("model", "m" * 60_000))
    cases["character_card_profile"] = edit(good, lambda p: p.__setitem__(
        "profile", {"spec": "chara_card_v2", "data": {"name": "Evil", "description": "x"}}))
    # a learned beat head that lies about itself
    def head(fn):
        return edit(good, lambda p: fn(p["beats"]))

    def values(kind, name, fill):
        def mutate(b):
            arr = np.frombuffer(b[kind][name], np.float32).copy()
            arr[0] = fill
            b[kind][name] = arr.tobytes()
        return mutate
    cases["beats_not_a_map"] = edit(good, lambda p: p.__setitem__("beats", [1, 2]))
    # its own contrast: a number a request could ask for, nothing else
    cases["voice_not_a_map"] = edit(good, lambda p: p.__setitem__("voice", 0.5))
    cases["voice_contrast_missing"] = edit(good, lambda p: p.__setitem__("voice", {}))
    cases["voice_contrast_string"] = edit(good, lambda p: p["voice"].__setitem__("contrast", "1"))
    cases["voice_contrast_huge"] = edit(good, lambda p: p["voice"].__setitem__("contrast", 1e30))
    cases["voice_contrast_negative"] = edit(good, lambda p: p["voice"].__setitem__("contrast", -1.0))
    cases["voice_contrast_nan"] = edit(good, lambda p: p["voice"].__setitem__("contrast", float("nan")))
    cases["beats_dim_other_model"] = head(lambda b: b.__setitem__("dim", 64))
    cases["beats_weights_short"] = head(lambda b: b["emotion"].__setitem__("W", b["emotion"]["W"][:-4]))
    cases["beats_bias_missing"] = head(lambda b: b["action"].pop("b"))
    cases["beats_weight_nan"] = head(values("emotion", "W", np.nan))
    cases["beats_bias_huge"] = head(values("action", "b", 3e38))
    cases["beats_emotion_unknown"] = head(lambda b: b["emotion"]["classes"].__setitem__(0, "smug"))
    cases["beats_class_twice"] = head(lambda b: b["action"]["classes"].__setitem__(1, b["action"]["classes"][0]))
    cases["beats_class_path"] = head(lambda b: b["action"]["classes"].__setitem__(0, "../x"))
    cases["beats_class_not_a_string"] = head(lambda b: b["action"]["classes"].__setitem__(0, 7))
    cases["beats_classes_too_many"] = head(lambda b: b["action"].__setitem__("classes", [f"a{i}" for i in range(65)]))
    return cases


def fusion_cases(good_fusion: bytes) -> dict[str, bytes]:
    def refs(fn):
        return edit(good_fusion, lambda p: fn(p["fusion"]["weights"]))

    return {
        "fusion_weight_huge": refs(lambda w: w[0].__setitem__("weight", 1e30)),
        "fusion_weight_negative": refs(lambda w: w[0].__setitem__("weight", -0.5)),
        "fusion_weights_sum_2": refs(lambda w: [r.__setitem__("weight", 1.0) for r in w]),
        "fusion_ref_path": refs(lambda w: w[0].__setitem__("role", "../smith")),
        "fusion_ref_megabyte": refs(lambda w: w[0].__setitem__("role", "r" * 60_000)),
        "fusion_ref_self": edit(good_fusion, lambda p: p["fusion"]["weights"][0].__setitem__("role", p["profile"]["id"])),
        "fusion_ref_twice": refs(lambda w: w.__setitem__(1, {**w[0]})),
        "fusion_ref_bad_sha": refs(lambda w: w[0].__setitem__("sha256", "not-a-hash")),
        "fusion_no_refs": refs(lambda w: w.clear()),
        "fusion_too_many_refs": refs(lambda w: w.extend([{**w[0], "role": f"r{i}"} for i in range(70)])),
    }


# -- tests -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    smith, bard = block_asset("smith", beats=True, contrast=0.5), block_asset("bard", seed=1)
    write_asset(smith, d / "smith.nrole")
    write_asset(bard, d / "bard.nrole")
    write_asset(fusion_asset("knight", [(smith, 0.75), (bard, 0.25)]), d / "knight.nrole")
    return d


@pytest.fixture(scope="module")
def cases(good_files) -> dict[str, bytes]:
    return {**block_cases((good_files / "smith.nrole").read_bytes()),
            **fusion_cases((good_files / "knight.nrole").read_bytes())}


def test_the_good_files_read(good_files):
    assert [a.id for a in load_role_assets(good_files)[0]] == ["bard", "knight", "smith"]


def test_every_hostile_file_is_refused_with_one_error_naming_it(cases, tmp_path):
    assert len(cases) > 70
    for name, data in cases.items():
        path = tmp_path / f"{name}.nrole"
        path.write_bytes(data)
        with pytest.raises(AssetError) as e:  # anything but an AssetError fails the test
            read_asset(path)
        assert str(path) in str(e.value), name
        assert len(str(e.value)) < 1000, f"{name}: the error repeats the file's contents"


@pytest.mark.parametrize("case,needle", [
    ("truncated_20", "shorter than the 52-byte header"),
    ("truncated_53", "truncated"),
    ("magic_gguf", "bad magic"),
    ("version_2", "format version 2 is not supported"),
    ("length_max", "header declares"),
    ("bitflip_423", "checksum mismatch"),
    ("deeply_nested", "not valid msgpack"),
    ("persona_megabyte", "exceeds max_str_len"),
    ("id_path_separator", "role id '../../etc/passwd' is not valid"),
    ("layer_bool", "unexpected tensor"),
    ("tensor_duplicate", "appears twice"),
    ("value_3e38", "magnitude 3e+38, over the bound of 64"),
    ("alpha_huge", "lora.alpha = 3e+38"),
    ("embedding_zero", "embedding has length 0"),
    ("example_line_60k", "an example line has 60000 characters"),
    ("training_note_60k", "holds a string of 60000 characters"),
    ("deeply_nested_record", "nested more than 4 levels"),
    ("fusion_weight_huge", "fusion weight 1e+30"),
    ("voice_contrast_huge", "voice.contrast = 1e+30; it must be between 0 and 4"),
    ("voice_contrast_nan", "voice.contrast = nan"),
    ("voice_contrast_string", "field voice.contrast has the wrong type"),
    ("fusion_ref_self", "references itself"),
    ("fusion_ref_path", "'../smith', which is not a role id"),
    ("fusion_weights_sum_2", "sum to 2"),
])
def test_errors_say_what_is_wrong(cases, tmp_path, case, needle):
    path = tmp_path / f"{case}.nrole"
    path.write_bytes(cases[case])
    with pytest.raises(AssetError, match=needle.replace("(", r"\(").replace("+", r"\+")):
        read_asset(path)


def test_a_folder_of_poison_beside_good_roles_loads_the_good_ones(good_files, cases, tmp_path):
    for f in good_files.glob("*.nrole"):
        shutil.copy(f, tmp_path)
    for name, data in cases.items():
        (tmp_path / f"zz_{name}.nrole").write_bytes(data)
    assets, errors = load_role_assets(tmp_path)
    assert [a.id for a in assets] == ["bard", "knight", "smith"]
    named = sorted(e.path for e in errors)
    assert named == sorted(str(tmp_path / f"zz_{n}.nrole") for n in cases)  # one error per bad file, each naming it


def test_random_damage_is_refused_cleanly(good_files, tmp_path):
    """Fuzz: random byte edits of the payload with the checksum made valid again, and random truncations.
    Every outcome is a clean read or an AssetError."""
    rng = np.random.default_rng(0)
    for name in ("smith", "knight"):
        good = (good_files / f"{name}.nrole").read_bytes()
        body = bytearray(good[HEADER.size:])
        refused = 0
        for i in range(150):
            b = bytearray(body)
            for pos in rng.integers(0, len(b), size=int(rng.integers(1, 6))):
                b[pos] = int(rng.integers(0, 256))
            path = tmp_path / f"{name}_{i}.nrole"
            path.write_bytes(sealed(bytes(b)) if i % 3 else good[: int(rng.integers(0, len(good)))])
            try:
                read_asset(path)
            except AssetError:
                refused += 1
        assert refused > 50  # the edits do hit: most files are refused


def test_fusions_that_reference_each_other_or_missing_roles_are_skipped(good_files, tmp_path):
    from neeko_npc.engine.roleset import RoleSet
    from tests.helpers import TINY_BASE

    for f in good_files.glob("*.nrole"):
        shutil.copy(f, tmp_path)
    smith = read_asset(tmp_path / "smith.nrole")
    knight = read_asset(tmp_path / "knight.nrole")
    write_asset(fusion_asset("squire", [(knight, 1.0)]), tmp_path / "squire.nrole")  # a fusion of a fusion
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ping = fusion_asset("ping", [(smith, 1.0)])
    write_asset(ping, elsewhere / "ping.nrole")
    pong = fusion_asset("pong", [(ping, 1.0)])
    write_asset(pong, tmp_path / "pong.nrole")  # pong -> ping -> pong
    write_asset(fusion_asset("ping", [(pong, 1.0)]), tmp_path / "ping.nrole")
    gone = block_asset("ghost", seed=9)
    write_asset(gone, elsewhere / "ghost.nrole")
    write_asset(fusion_asset("haunted", [(gone, 0.5), (smith, 0.5)]), tmp_path / "haunted.nrole")

    class Handles:  # the RoleSet's backend: every block gets a number
        def load(self, asset):
            return asset.id

        def free(self, handle):
            pass

    rs = RoleSet(tmp_path, TINY_BASE, Handles())
    res = rs.reload()
    assert sorted(rs.roster.roles) == ["bard", "knight", "smith"]
    problems = {p.rsplit("/", 1)[-1]: e for p, e in res.problems.items()}
    assert set(problems) == {"squire.nrole", "ping.nrole", "pong.nrole", "haunted.nrole"}
    assert "fused role 'knight'; a fusion mixes trained blocks only" in problems["squire.nrole"]
    assert "references role 'ghost', which is not in the role set" in problems["haunted.nrole"]
    assert "references fused role 'pong'" in problems["ping.nrole"] and "references fused role 'ping'" in problems["pong.nrole"]


@pytest.mark.slow
def test_the_real_daemon_serves_the_good_roles_beside_every_poison(baked, cases, tmp_path):
    """Every hostile file above, plus poisons cut from a real role (3e38 with a valid checksum, the base model's
    fingerprint with another shape), dropped beside two real roles: the daemon serves the two and lists the rest."""
    from neeko_npc.server.client import Client
    from tests.test_server import GREEDY, collect, start

    roles = tmp_path / "roles"
    shutil.copytree(baked["before"], roles)  # smith, bard
    real = (roles / "smith.nrole").read_bytes()

    def renamed(rid, more=lambda p: None):
        def mutate(p):
            p["profile"]["id"] = rid
            more(p)
        return edit(real, mutate)

    poisons = {
        "real_3e38": renamed("smith_3e38", tensor_edit(5, lambda a: a.fill(3e38))),
        "real_over_bound": renamed("smith_65", tensor_edit(0, lambda a: a.__setitem__(0, 65.0))),
        "real_forged_shape": renamed("smith_forged", lambda p: p["base"].__setitem__("intermediate", 1537)),
        "real_duplicate_id": real,  # a second file claiming the id "smith"
        **cases,
    }
    for name, data in poisons.items():
        (roles / f"zz_{name}.nrole").write_bytes(data)
    d = start(roles, pool=1, watch=0)
    try:
        assert d.loaded.wait(60)
        c = Client(d.address)
        listed = c.roles()
        assert [r.id for r in listed.roles] == ["bard", "smith"]
        assert sorted(p.file for p in listed.problems) == sorted(str(roles / f"zz_{n}.nrole") for n in poisons)
        problems = {p.file.rsplit("/", 1)[-1]: p.error for p in listed.problems}
        assert "magnitude 3e+38" in problems["zz_real_3e38.nrole"]
        assert "declares the base model's fingerprint but another shape (intermediate 1537 vs 1536)" in problems["zz_real_forged_shape.nrole"]
        assert "role id 'smith' is also defined in" in problems["zz_real_duplicate_id.nrole"]
        for npc in ("smith", "bard"):
            text, chunks = collect(c.say(npc, "Hello!", **GREEDY))
            assert text.strip() and chunks[-1].done
        c.close()
    finally:
        d.stop(0)
