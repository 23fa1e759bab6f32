"""Saved warm prefixes on disk (engine/snapshots.py, WarmFiles): a file is only ever handed back for the very model,
llama.cpp build, adapters, scales and tokens it was saved under. No model: the state is opaque bytes here
(test_town.py restores real ones)."""

from neeko_npc.engine.snapshots import WarmFiles

KEY = (("a" * 64, 1.0),)
TOKENS = [1, 2, 3, 4]


def test_a_saved_state_comes_back_only_for_what_it_was_saved_under(tmp_path):
    files = WarmFiles([tmp_path], "fp-1", "llama 0.3")
    assert files.save(KEY, TOKENS, b"kv-bytes")
    assert files.load(KEY, TOKENS) == b"kv-bytes"
    assert WarmFiles([tmp_path], "fp-2", "llama 0.3").load(KEY, TOKENS) is None  # another base model
    assert WarmFiles([tmp_path], "fp-1", "llama 0.4").load(KEY, TOKENS) is None  # another llama.cpp
    assert files.load((("a" * 64, 0.5),), TOKENS) is None  # another scale
    assert files.load(KEY, TOKENS + [5]) is None  # other tokens
    assert [p.suffix for p in tmp_path.iterdir()] == [".kv"]  # nothing half-written left behind


def test_a_damaged_or_foreign_file_is_ignored(tmp_path):
    files = WarmFiles([tmp_path], "fp", "b")
    files.save(KEY, TOKENS, b"x" * 100)
    path = tmp_path / files.name(KEY, TOKENS)
    raw = path.read_bytes()
    path.write_bytes(raw[:20])  # cut inside the header
    assert files.load(KEY, TOKENS) is None
    path.write_bytes(b"GGUF" + raw[4:])  # not ours
    assert files.load(KEY, TOKENS) is None
    other = WarmFiles([tmp_path], "fp", "b")
    path.write_bytes(raw.replace(b'"fp"', b'"fq"'))  # a header that names another model under this name
    assert other.load(KEY, TOKENS) is None


def test_later_folders_are_read_and_only_the_first_is_written(tmp_path):
    shipped, cache = tmp_path / "bundle-warm", tmp_path / "cache"
    WarmFiles([shipped], "fp", "b").save(KEY, TOKENS, b"from the bundle")
    files = WarmFiles([cache, shipped], "fp", "b")
    assert files.load(KEY, TOKENS) == b"from the bundle"
    assert files.save(KEY, [9, 9], b"new") and (cache / files.name(KEY, [9, 9])).is_file()
    assert not (shipped / files.name(KEY, [9, 9])).exists()


def test_a_cache_that_cannot_be_written_only_means_nothing_is_saved(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # even root cannot make a folder inside a file
    assert WarmFiles([blocker / "warm"], "fp", "b").save(KEY, TOKENS, b"x") is False
    assert WarmFiles([], "fp", "b").save(KEY, TOKENS, b"x") is False
