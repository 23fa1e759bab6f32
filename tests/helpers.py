"""Small builders shared by tests: synthetic role assets for a given base shape, and gRPC call helpers."""

import grpc
import numpy as np
import pytest

from neeko_npc.roles.asset import BaseInfo, FusionRef, GateSettings, LoraBlock, RoleAsset
from neeko_npc.roles.beats import BeatHead, Classifier
from neeko_npc.roles.prompt import EMOTIONS
from neeko_npc.roles.profile import RoleProfile

TINY_BASE = BaseInfo(fingerprint="f" * 64, name="tiny", arch="llama", n_layers=2, hidden=32, n_heads=4, n_kv_heads=2,
                     intermediate=48)


def random_block(base=TINY_BASE, r=4, targets=("q_proj", "v_proj"), seed=0, dtype="f32"):
    rng = np.random.default_rng(seed)
    A, B = {}, {}
    for layer in range(base.n_layers):
        for t in targets:
            out_f, in_f = base.linear_shape(t)
            A[(layer, t)] = rng.standard_normal((r, in_f)).astype(np.float32)
            B[(layer, t)] = rng.standard_normal((out_f, r)).astype(np.float32)
    return LoraBlock(r=r, alpha=2.0 * r, targets=tuple(targets), A=A, B=B, dtype=dtype)


def random_head(base=TINY_BASE, actions=("quote_price", "none"), seed=0):
    """A beat head of random weights on ``base``'s hidden size: all seven emotions, and ``actions``."""
    rng = np.random.default_rng(seed + 200)

    def clf(classes):
        return Classifier(tuple(classes), rng.standard_normal((len(classes), base.hidden)).astype(np.float32),
                          rng.standard_normal(len(classes)).astype(np.float32))
    return BeatHead(base.hidden, clf(EMOTIONS), clf(actions))


def block_asset(rid, base=TINY_BASE, seed=0, beats=False, contrast=None, **kw):
    rng = np.random.default_rng(seed + 100)
    emb = rng.standard_normal(16).astype(np.float32)
    return RoleAsset(profile=RoleProfile(id=rid, name=rid.title(), persona=f"{rid} persona"), embedding=emb / np.linalg.norm(emb),
                     base=base, gate=GateSettings(), block=random_block(base, seed=seed, **kw), training={"mode": "test"},
                     beats=random_head(base, seed=seed) if beats else None, contrast=contrast)


def fusion_asset(rid, refs, base=TINY_BASE):
    return RoleAsset(profile=RoleProfile(id=rid, name=rid.title(), persona="fused"), embedding=np.ones(16, np.float32) / 4,
                     base=base, fusion=[FusionRef(a.id, a.sha256, w) for a, w in refs])


def code_of(fn):
    """The status code and details of the gRPC error ``fn()`` raises (it must raise one)."""
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def collect(call):
    """A streamed reply's whole text and its chunks."""
    chunks = list(call)
    return "".join(c.text for c in chunks), chunks
