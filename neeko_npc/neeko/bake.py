"""The three ways a role is made, each ending in a .nrole file:

* pre-finetune  (``neeko-npc bake``): M roles trained together, one block each;
* expansion     (``neeko-npc bake-role``): one block appended and trained, all others frozen;
* fusion        (``neeko-npc bake-role --fuse``): no training, weights over existing blocks.

A trained role whose lines carry beats also gets its learned beat head (neeko/beat_head.py), fitted on its
training lines under its finished block; ``fit_beats`` fits heads for roles already baked, blocks untouched.
A bake trains each block on its role's lines; it trains the beat question's answers too only for a role whose
head will not answer its beats, or when asked (``beat_question``; ``question_trained`` decides).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .. import defaults
from ..roles.asset import SUFFIX, FusionRef, GateSettings, RoleAsset, write_asset
from ..roles.base_model import BaseModelRef, base_info
from ..roles.dialogue import Scene, data_hash, load_scenes, split_holdout
from ..roles.folder import load_role_assets
from ..roles.profile import RoleProfile, load_profile
from .load_base import resolve_precision
from .beat_head import bake_head, head_covers
from .data import Example, encode_lines, encode_scene
from .embed import MODEL_NAME, embed_texts
from ..roles.gate import fusion_weights
from .model import NeekoLoRA
from .train import TrainConfig, TrainResult, heldout_loss, train_blocks
from .voice_check import voice_check


@dataclass
class LoraConfig:
    r: int = defaults.RANK
    alpha: float = defaults.ALPHA
    targets: tuple[str, ...] = defaults.TARGETS
    precision: str = defaults.PRECISION  # base weights while training; blocks are always float32
    dtype: str = "f32"  # tensors in the .nrole


@dataclass
class RoleSource:
    profile: RoleProfile
    scenes: list[Scene]
    holdout: float = defaults.HOLDOUT
    train: list[Scene] = field(init=False)
    held: list[Scene] = field(init=False)

    def __post_init__(self) -> None:
        self.train, self.held = split_holdout(self.scenes, self.holdout)

    @property
    def n_lines(self) -> int:
        return sum(s.npc_lines(self.profile.id) for s in self.scenes)

    @classmethod
    def from_files(cls, profile: str | Path, data: str | Path, holdout: float = defaults.HOLDOUT) -> "RoleSource":
        p = load_profile(profile)
        return cls(p, load_scenes(data, role_id=p.id), holdout)

    @classmethod
    def from_dir(cls, folder: str | Path, holdout: float = defaults.HOLDOUT) -> "RoleSource":
        folder = Path(folder)
        prof, lines = folder / "profile.json", folder / "lines.jsonl"
        for f in (prof, lines):
            if not f.is_file():
                raise FileNotFoundError(f"{folder}: a role folder needs profile.json and lines.jsonl ({f.name} is missing)")
        return cls.from_files(prof, lines, holdout)


@dataclass
class HeldOut:
    """A role's held-out loss: the base model with its profile prompt, and with its block too."""

    base: float
    block: float

    @property
    def change(self) -> float:
        """Relative change of the loss the block brings (negative: better)."""
        return (self.block - self.base) / self.base if self.base == self.base and self.base else float("nan")


@dataclass
class BakeReport:
    roles: list[str]
    assets: list[Path]
    heldout: dict[str, HeldOut]
    train: TrainResult
    voices: dict = field(default_factory=dict)  # role id -> its voice check (voice_check.py); none checked: {}


def question_trained(profile: RoleProfile, scenes: list[Scene], beat_question: bool = defaults.BEAT_QUESTION) -> bool:
    """Whether a bake trains the role's block on its annotated lines' beat question as well as on its lines."""
    return beat_question or not head_covers(profile, scenes)


def training_examples(tok, profile: RoleProfile, scenes: list[Scene], max_len: int, question: bool) -> list[Example]:
    """A role's training examples: its lines, and with ``question`` each annotated line's beat question."""
    encode = encode_scene if question else encode_lines
    return [ex for s in scenes for ex in encode(tok, profile, s, max_len)]


def _load(base_ref: BaseModelRef, lora: LoraConfig):
    from .load_base import load_for_training

    model, tok = load_for_training(base_ref, lora.precision)
    return model, tok


def _training_record(mode: str, src: RoleSource, rec, cfg: TrainConfig, lora: LoraConfig, held: HeldOut,
                     question: bool) -> dict:
    return {
        "mode": mode, "seed": cfg.seed, "steps": rec.steps, "final_loss": rec.final_loss, "tokens": rec.tokens,
        "data_sha256": data_hash(src.scenes), "lines": src.n_lines, "scenes": len(src.scenes),
        "heldout_scenes": len(src.held), "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
        "max_len": cfg.max_len, "precision": resolve_precision(lora.precision),
        "heldout_loss_base": held.base, "heldout_loss_block": held.block, "beat_question": question,
        "distinct": cfg.distinct,
        **({"distinct_final": float(np.mean(rec.distinct[-5:]))} if rec.distinct else {}),
    }


def _evaluate(neeko, tok, src: RoleSource, cfg: TrainConfig) -> HeldOut:
    """Held-out loss of the role's lines (not its beats: those are scored by accuracy, in eval)."""
    ex = [e for s in src.held for e in encode_lines(tok, src.profile, s, cfg.max_len)]
    return HeldOut(heldout_loss(neeko, ex, None, tok.pad_token_id), heldout_loss(neeko, ex, src.profile.id, tok.pad_token_id))


def _add_head(asset: RoleAsset, neeko: NeekoLoRA, tok, src: RoleSource) -> None:
    """The role's learned beats, from its annotated training lines under its own block (none: no head)."""
    asset.beats, record = bake_head(neeko, tok, src.profile, src.train)
    if record:
        asset.training["beats"] = record


def _add_voice(asset: RoleAsset, voices: dict) -> None:
    """The role's own contrast, from the bake's voice check (not checked: none, the daemon's)."""
    if asset.id in voices:
        asset.contrast = voices[asset.id]["contrast"]
        asset.training["voice_check"] = voices[asset.id]


def fit_beats(base_ref: BaseModelRef, roles_dir: Path, src_dir: Path, precision: str | None = None,
              holdout: float = defaults.HOLDOUT) -> list[Path]:
    """Fit the beat head of every trained role in ``roles_dir`` that has lines in ``src_dir/<id>/lines.jsonl``
    and rewrite its file (``refit``)."""
    def heads(neeko, tok, todo, sources):
        for a in todo:
            _add_head(a, neeko, tok, sources[a.id])
    return refit(base_ref, roles_dir, src_dir, heads, precision, holdout)


def check_voices(base_ref: BaseModelRef, roles_dir: Path, src_dir: Path, precision: str | None = None,
                 holdout: float = defaults.HOLDOUT, progress: bool = True) -> list[Path]:
    """The bake's voice check (voice_check.py) for roles baked without it: every trained role in ``roles_dir`` with
    lines in ``src_dir/<id>/lines.jsonl`` gets its own contrast, told from the others', and its file is rewritten
    (``refit``)."""
    def voices(neeko, tok, todo, sources):
        checked = voice_check(neeko, tok, sources, [a.id for a in todo], progress=progress)
        for a in todo:
            _add_voice(a, checked)
    return refit(base_ref, roles_dir, src_dir, voices, precision, holdout,
                 at_least=(2, "the voice check tells a role's voice from the others', so it needs two trained roles or "
                              "more"))


def refit(base_ref: BaseModelRef, roles_dir: Path, src_dir: Path, fit, precision: str | None = None,
          holdout: float = defaults.HOLDOUT, at_least: tuple[int, str] = (1, "")) -> list[Path]:
    """What a bake now adds to a role file, for roles baked before: ``fit(neeko, tok, todo, sources)`` sets it on
    every trained role in ``roles_dir`` with lines in ``src_dir/<id>/lines.jsonl`` (``todo``; ``sources``: id ->
    RoleSource), all blocks loaded, and each is rewritten; blocks, profiles and the rest of each file stay as they
    are. A fused role that mixes a rewritten role is re-pointed at its new content hash (the blocks it mixes are
    bit-identical). ``at_least`` (count, why): fewer roles to rewrite than count is refused before the model loads."""
    info = base_info(base_ref)
    assets, errors = load_role_assets(roles_dir, info)
    blocks = [a for a in assets if a.block is not None]
    todo = [a for a in blocks if (src_dir / a.id / "lines.jsonl").is_file()]
    unread = f" ({len(errors)} file(s) could not be read: {errors[0]})" if errors else ""
    if not todo:
        raise InputError(f"no trained role in {roles_dir} has lines in {src_dir}/<id>/lines.jsonl{unread}")
    count, why = at_least
    if len(todo) < count:
        raise InputError(f"{why} with lines in {src_dir}/<id>/lines.jsonl; found {len(todo)}{unread}")
    first = blocks[0].block
    lora = LoraConfig(r=first.r, alpha=first.alpha, targets=tuple(first.targets),
                      precision=precision or blocks[0].training.get("precision", defaults.PRECISION))
    model, tok = _load(base_ref, lora)
    neeko = NeekoLoRA(model, lora.r, lora.alpha, lora.targets)
    for a in blocks:
        neeko.load_block(a.id, a.block)
    old_sha = {a.id: a.sha256 for a in todo}
    fit(neeko, tok, todo, {a.id: RoleSource.from_dir(src_dir / a.id, holdout) for a in todo})
    paths = [write_asset(a, Path(a.path)) for a in todo]
    new_sha = {a.id: a.sha256 for a in todo}
    for a in assets:
        moved = [f.role in old_sha and f.sha256 == old_sha[f.role] for f in a.fusion or []]
        if any(moved):
            a.fusion = [FusionRef(f.role, new_sha[f.role], f.weight) if m else f for f, m in zip(a.fusion, moved)]
            paths.append(write_asset(a, Path(a.path)))
    return paths


def pre_finetune(base_ref: BaseModelRef, sources: list[RoleSource], out_dir: Path, cfg: TrainConfig,
                 lora: LoraConfig = LoraConfig(), gate: GateSettings = GateSettings(), resume: bool = False,
                 progress: bool = True, beat_question: bool = defaults.BEAT_QUESTION,
                 voice: bool = defaults.VOICE_CHECK) -> BakeReport:
    ids = [s.profile.id for s in sources]
    if len(set(ids)) != len(ids):
        raise InputError(f"duplicate role ids: {ids}")
    if cfg.distinct > 0 and len(ids) < 2:
        raise InputError("--distinct holds each block away from the other roles' lines, so the bake needs at least two "
                         "roles; pass --distinct 0 for one")
    out_dir.mkdir(parents=True, exist_ok=True)
    info = base_info(base_ref)
    model, tok = _load(base_ref, lora)
    neeko = NeekoLoRA(model, lora.r, lora.alpha, lora.targets)
    gen = torch.Generator().manual_seed(cfg.seed)
    for rid in ids:
        neeko.add_role(rid, generator=gen)
    question = {s.profile.id: question_trained(s.profile, s.train, beat_question) for s in sources}
    examples = {s.profile.id: training_examples(tok, s.profile, s.train, cfg.max_len, question[s.profile.id])
                for s in sources}
    negatives = line_negatives(tok, sources, cfg.max_len) if cfg.distinct > 0 else None
    result = train_blocks(neeko, examples, ids, cfg, tok.pad_token_id, checkpoint=out_dir / ".bake-checkpoint.pt",
                          resume=resume, run_tag=info.fingerprint, progress=progress, negatives=negatives)
    embeddings = embed_texts([s.profile.embedding_text() for s in sources])
    voices = voice_check(neeko, tok, {s.profile.id: s for s in sources}, ids, progress=progress) if voice else {}
    held, paths = {}, []
    for i, src in enumerate(sources):
        held[src.profile.id] = _evaluate(neeko, tok, src, cfg)
        asset = RoleAsset(
            profile=src.profile, embedding=embeddings[i], base=info, gate=gate,
            block=neeko.export_block(src.profile.id, lora.dtype), embedding_model=MODEL_NAME,
            training=_training_record("pre-finetune", src, result.records[src.profile.id], cfg, lora, held[src.profile.id],
                                      question[src.profile.id]),
        )
        _add_head(asset, neeko, tok, src)
        _add_voice(asset, voices)
        paths.append(write_asset(asset, out_dir / f"{src.profile.id}{SUFFIX}"))
    (out_dir / ".bake-checkpoint.pt").unlink(missing_ok=True)
    return BakeReport(ids, paths, held, result, voices)


def line_negatives(tok, sources: list[RoleSource], max_len: int) -> dict[str, list]:
    """Each role's training lines alone (no beat questions, no held-out scene): what the distinct term
    (train.distinct_penalty) holds the other roles' blocks away from."""
    return {s.profile.id: training_examples(tok, s.profile, s.train, max_len, question=False) for s in sources}


def negative_sources(src_dir: Path | None, role_ids: list[str], holdout: float) -> list[RoleSource]:
    """The role folders ``src_dir``/ID of the set's trained roles, for an expansion's distinct term and voice check."""
    if src_dir is None:
        raise InputError("--distinct above 0 needs --negatives: the folder of the set's role folders (ID/profile.json, "
                         "ID/lines.jsonl), whose lines the new block is held away from; or pass --distinct 0")
    found = [RoleSource.from_dir(src_dir / rid, holdout) for rid in role_ids if (src_dir / rid / "lines.jsonl").is_file()]
    if not found:
        raise InputError(f"{src_dir} holds no folder of the set's roles ({', '.join(role_ids)}): --negatives must be "
                         "the folder the set was baked from")
    return found


def expand(base_ref: BaseModelRef, roles_dir: Path, src: RoleSource, cfg: TrainConfig, out_path: Path | None = None,
           lora_precision: str = defaults.PRECISION, replace: bool = False, resume: bool = False, progress: bool = True,
           beat_question: bool = defaults.BEAT_QUESTION, negatives_dir: Path | None = None,
           voice: bool = defaults.VOICE_CHECK) -> BakeReport:
    info = base_info(base_ref)
    assets, errors = load_role_assets(roles_dir, info)
    old = [a for a in assets if a.block is not None and a.id != src.profile.id]
    if any(a.id == src.profile.id for a in assets) and not replace:
        raise InputError(f"{roles_dir} already has a role {src.profile.id!r}; pass --replace to re-bake it")
    if not old:
        raise InputError(f"{roles_dir} has no trained roles to expand; run `neeko-npc bake` first"
                         + (f" ({len(errors)} file(s) could not be read: {errors[0]})" if errors else ""))
    others = (negative_sources(negatives_dir, [a.id for a in old], src.holdout)
              if cfg.distinct > 0 or (voice and negatives_dir is not None) else [])
    first = old[0].block
    lora = LoraConfig(r=first.r, alpha=first.alpha, targets=tuple(first.targets), precision=lora_precision, dtype=first.dtype)
    model, tok = _load(base_ref, lora)
    neeko = NeekoLoRA(model, lora.r, lora.alpha, lora.targets)
    for a in old:
        neeko.load_block(a.id, a.block)
    gen = torch.Generator().manual_seed(cfg.seed)
    neeko.add_role(src.profile.id, generator=gen)
    question = question_trained(src.profile, src.train, beat_question)
    examples = {src.profile.id: training_examples(tok, src.profile, src.train, cfg.max_len, question)}
    out_path = out_path or roles_dir / f"{src.profile.id}{SUFFIX}"
    result = train_blocks(neeko, examples, [src.profile.id], cfg, tok.pad_token_id,
                          checkpoint=out_path.with_name(f".{src.profile.id}.bake-checkpoint.pt"), resume=resume,
                          run_tag=info.fingerprint, progress=progress,
                          negatives=line_negatives(tok, others, cfg.max_len) if others and cfg.distinct > 0 else None)
    # Nothing forgotten: every old block must be exactly what its file holds.
    for a in old:
        now = neeko.export_block(a.id, a.block.dtype)
        for key in a.block.A:
            if not (np.array_equal(now.A[key], a.block.A[key].astype(np.float32)) and
                    np.array_equal(now.B[key], a.block.B[key].astype(np.float32))):
                raise AssertionError(f"expansion changed the block of old role {a.id!r} at {key}; refusing to write")
    emb = embed_texts([src.profile.embedding_text()])[0]
    held = {src.profile.id: _evaluate(neeko, tok, src, cfg)}
    asset = RoleAsset(profile=src.profile, embedding=emb, base=info, gate=old[0].gate,
                      block=neeko.export_block(src.profile.id, lora.dtype), embedding_model=MODEL_NAME,
                      training=_training_record("expansion", src, result.records[src.profile.id], cfg, lora, held[src.profile.id],
                                                question))
    _add_head(asset, neeko, tok, src)
    voices = (voice_check(neeko, tok, {s.profile.id: s for s in [*others, src]}, [src.profile.id], progress=progress)
              if voice and others else {})  # the judge needs the set's other lines (--negatives)
    _add_voice(asset, voices)
    write_asset(asset, out_path)
    out_path.with_name(f".{src.profile.id}.bake-checkpoint.pt").unlink(missing_ok=True)
    return BakeReport([src.profile.id], [out_path], held, result, voices)


def fuse(base_ref: BaseModelRef, roles_dir: Path, profile: RoleProfile, out_path: Path | None = None,
         top_k: int = defaults.TOP_K, tau: float = defaults.FUSE_TAU, min_weight: float = defaults.MIN_WEIGHT,
         replace: bool = False) -> tuple[RoleAsset, Path]:
    info = base_info(base_ref)
    assets, errors = load_role_assets(roles_dir, info)
    if any(a.id == profile.id for a in assets) and not replace:
        raise InputError(f"{roles_dir} already has a role {profile.id!r}; pass --replace to re-bake it")
    blocks = [a for a in assets if a.block is not None and a.id != profile.id]
    if not blocks:
        raise InputError(f"{roles_dir} has no trained roles to fuse from; run `neeko-npc bake` first")
    emb = embed_texts([profile.embedding_text()])[0]
    E = np.stack([a.embedding for a in blocks])
    weights = fusion_weights(E, [a.id for a in blocks], emb, top_k=top_k, tau=tau, min_weight=min_weight)
    sims = {a.id: float(np.dot(a.embedding, emb) / (np.linalg.norm(a.embedding) * np.linalg.norm(emb))) for a in blocks}
    by_id = {a.id: a for a in blocks}
    asset = RoleAsset(
        profile=profile, embedding=emb, base=info, gate=blocks[0].gate, embedding_model=MODEL_NAME,
        fusion=[FusionRef(rid, by_id[rid].sha256, w) for rid, w in sorted(weights.items(), key=lambda kv: -kv[1])],
        training={"mode": "fusion", "top_k": top_k, "tau": tau, "min_weight": min_weight, "similarity": sims},
    )
    out_path = out_path or roles_dir / f"{profile.id}{SUFFIX}"
    write_asset(asset, out_path)
    return asset, out_path
