"""--base-model with a Hugging Face folder: a tiny random llama saved as safetensors beside SmolLM2's tokenizer."""

import pytest
from click.testing import CliRunner

from neeko_npc.cli import main
from neeko_npc.roles.asset_read import read_asset
from neeko_npc.roles.base_model import base_info, resolve_base_model
from neeko_npc.errors import BaseModelError
from tests.conftest import DATA

pytestmark = pytest.mark.slow  # the real model


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    ref = resolve_base_model(None)
    tok = AutoTokenizer.from_pretrained(str(ref.path.parent), gguf_file=ref.path.name)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
    folder = tmp_path_factory.mktemp("tiny-llama-hf")
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def test_bake_on_a_hf_folder_base(hf_folder, tmp_path):
    res = CliRunner().invoke(main, ["bake", str(DATA / "smith"), str(DATA / "bard"), "--out", str(tmp_path),
                                    "--base-model", str(hf_folder), "--epochs", "1", "--precision", "fp32", "--quiet",
                                    "--rank", "4", "--targets", "q_proj,k_proj,up_proj"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    a = read_asset(tmp_path / "smith.nrole", expect_base=base_info(resolve_base_model(hf_folder)))
    assert a.base.hidden == 64 and a.base.n_layers == 2 and a.block.r == 4
    assert a.block.targets == ("q_proj", "k_proj", "up_proj")
    assert a.block.A[(1, "up_proj")].shape == (4, 64) and a.block.B[(1, "up_proj")].shape == (96, 4)
    assert a.base.fingerprint != base_info(resolve_base_model(None)).fingerprint


def test_fingerprint_follows_the_weights(hf_folder, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    copy = tmp_path / "copy"
    shutil.copytree(hf_folder, copy)
    assert base_info(resolve_base_model(copy)).fingerprint == base_info(resolve_base_model(hf_folder)).fingerprint
    weights = load_file(str(copy / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name].copy()
    weights[name].flat[0] += 1.0
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert base_info(resolve_base_model(copy)).fingerprint != base_info(resolve_base_model(hf_folder)).fingerprint


def test_not_a_model(tmp_path):
    with pytest.raises(BaseModelError, match="no config.json"):
        resolve_base_model(tmp_path)
    with pytest.raises(BaseModelError, match="no such file or folder"):
        resolve_base_model(tmp_path / "missing")


def test_base_info_reads_a_gguf_once_per_version_of_the_file(tmp_path, monkeypatch):
    """A fingerprint hashes every weight of the model; the daemon, each bake and each engine ask for the base's fingerprint
    and shape, so both are kept per (path, size, mtime) and read again only when the file changes."""
    import os
    import shutil

    from neeko_npc.roles import base_model

    copy = tmp_path / "base.gguf"
    shutil.copy(resolve_base_model(None).path, copy)
    first = base_info(resolve_base_model(copy))
    assert first == base_info(resolve_base_model(None))  # the same weights: the same fingerprint and shape

    def read_again(*args, **kwargs):
        raise AssertionError("the GGUF was read again")

    monkeypatch.setattr(base_model, "GGUFFile", read_again)
    assert base_info(resolve_base_model(copy)) == first
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the file changed
    with pytest.raises(AssertionError, match="read again"):
        base_info(resolve_base_model(copy))
