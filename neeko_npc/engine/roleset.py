"""The roles a daemon serves: loaded from a folder, resolved to adapter scales, hot-reloaded.

Every trained block becomes an adapter of the serving backend, through the backend's
``load(asset) -> handle``, ``free(handle)`` and optionally ``retire(sha256)`` (told as
soon as a reload retires an adapter): for llama.cpp a GGUF LoRA exported once
and cached under the asset's content hash (llama_pool.LlamaAdapters), for torch a
block of the block LoRA (torch_engine.TorchBlocks). A request for an NPC
resolves to (adapters, scales), and which other roles are loaded never enters it:

* a trained NPC: its own block alone, weight 1;
* a fused NPC: the weights stored in its file (a fusion whose blocks are gone or
  changed is reported as a problem and not served);
* a procedural NPC (no file): the blend its request names, over hosted roles.

Its learned beats follow the same weights: a trained NPC's own head; a fused or procedural NPC's mix of its
blocks' heads (roles/beats.py MixedHead).

``reload`` swaps in a new roster atomically; a stream in flight keeps the
adapters it started with, and an adapter is freed only once no request uses it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .. import defaults
from ..errors import AssetError, BlendError, InvalidBlend, UnknownRole
from ..roles.gate import normalise_blend
from ..roles.asset import BaseInfo, RoleAsset
from ..roles.beats import BeatHead, MixedHead
from ..roles.profile import RoleProfile
from ..roles.folder import file_stamps, load_role_assets, resolve_fusion

log = logging.getLogger("neeko_npc.roles")


@dataclass
class Adapter:
    sha256: str
    handle: object  # the backend's handle: a llama.cpp adapter pointer, or a torch block index
    users: int = 0
    retired: bool = False


@dataclass
class ServedRole:
    asset: RoleAsset
    weights: dict[str, float]  # block role id -> gate weight

    @property
    def id(self) -> str:
        return self.asset.id

    @property
    def contrast(self) -> float | None:
        """Its own contrast: a trained role's, from its bake's voice check; a fused role has none."""
        return self.asset.contrast if self.asset.block is not None else None


@dataclass
class Voice:
    """Who speaks for one request: the NPC id, the profile its prompt is built from, its block weights."""

    id: str
    profile: RoleProfile
    weights: dict[str, float]  # block role id -> scale
    beats: BeatHead | MixedHead | None = None  # its learned beats: its own head, or its blocks' heads mixed
    contrast: float | None = None  # its own contrast (a trained role's .nrole, from its bake's voice check); None: none


def mixed_heads(snap: "Roster", weights: dict[str, float]) -> MixedHead | None:
    """The learned beats of an NPC speaking with these blocks: their roles' heads, mixed by the same weights."""
    return MixedHead.of([(snap.roles[b].asset.beats, w) for b, w in weights.items() if b in snap.roles])


@dataclass
class Roster:
    roles: dict[str, ServedRole] = field(default_factory=dict)
    adapters: dict[str, Adapter] = field(default_factory=dict)  # block role id -> adapter
    problems: dict[str, str] = field(default_factory=dict)  # file -> error


@dataclass
class ReloadResult:
    added: list[str]
    changed: list[str]
    removed: list[str]
    problems: dict[str, str]


class RoleSet:
    def __init__(self, roles_dir: str | Path, base: BaseInfo, backend):
        self.roles_dir = Path(roles_dir)
        self.base = base
        self.backend = backend
        self._lock = threading.Lock()  # guards roster swaps and adapter refcounts
        self._reload_lock = threading.Lock()  # one reload at a time
        self._roster = Roster()
        self._by_sha: dict[str, Adapter] = {}
        self._seen: dict[str, tuple[int, int]] = {}  # file -> (mtime_ns, size) at the last scan

    # -- loading -----------------------------------------------------------------

    def _adapter_for(self, asset: RoleAsset) -> Adapter:
        a = self._by_sha.get(asset.sha256)
        if a is not None and not a.retired:
            return a
        a = Adapter(asset.sha256, self.backend.load(asset))
        self._by_sha[asset.sha256] = a
        return a

    def scan_changed(self) -> bool:
        """Cheap check for the file watcher: did any .nrole file appear, change or vanish?"""
        return file_stamps(self.roles_dir) != self._seen

    def reload(self) -> ReloadResult:
        with self._reload_lock:
            return self._reload()

    def _reload(self) -> ReloadResult:
        old = self._roster
        seen = file_stamps(self.roles_dir)  # stamped before reading: a later change triggers another reload
        loaded, errors = load_role_assets(self.roles_dir, self.base)
        problems = {e.path: str(e) for e in errors}
        if not self.roles_dir.is_dir():
            problems[str(self.roles_dir)] = "roles folder does not exist"
        assets = {a.id: a for a in loaded}
        blocks = {rid: a for rid, a in assets.items() if a.block is not None}
        new = Roster(problems=problems)
        for rid, a in sorted(blocks.items()):
            try:
                new.adapters[rid] = self._adapter_for(a)
            except Exception as exc:  # the backend refused it: report, keep serving the rest
                problems[a.path] = f"{a.path}: {exc}"
        blocks = {rid: a for rid, a in blocks.items() if rid in new.adapters}
        for rid, a in sorted(assets.items()):
            if a.block is not None:
                if rid in blocks:
                    new.roles[rid] = ServedRole(a, {rid: 1.0})  # its own block alone, whatever else is loaded
                continue
            try:
                parts = resolve_fusion(a, {r: x for r, x in assets.items() if x.block is None or r in blocks})
                new.roles[rid] = ServedRole(a, {src.id: w for src, w in parts if w > 0})
            except AssetError as exc:
                problems[a.path] = str(exc)
        for path, err in problems.items():
            log.warning("skipped role file: %s", err)
        with self._lock:
            self._roster = new
            self._seen = seen
            live = {a.sha256 for a in new.adapters.values()}
            for sha, ad in list(self._by_sha.items()):
                if sha not in live:
                    ad.retired = True
                    del self._by_sha[sha]
                    retire = getattr(self.backend, "retire", None)
                    if retire is not None:
                        retire(sha)  # e.g. drop the KV snapshots computed under it
                    self._maybe_free(ad)
        # The retired adapters of the old roster are freed when their last user releases them.
        added = sorted(set(new.roles) - set(old.roles))
        removed = sorted(set(old.roles) - set(new.roles))
        changed = sorted(r for r in set(new.roles) & set(old.roles) if new.roles[r].asset.sha256 != old.roles[r].asset.sha256)
        return ReloadResult(added, changed, removed, dict(problems))

    def _maybe_free(self, ad: Adapter) -> None:
        if ad.retired and ad.users == 0 and ad.handle is not None:
            self.backend.free(ad.handle)
            ad.handle = None

    # -- serving -----------------------------------------------------------------

    @property
    def roster(self) -> Roster:
        return self._roster

    def acquire(self, npc_id: str, blend: list[tuple[str, float]] | None = None, profile: RoleProfile | None = None,
                max_blend: int = defaults.TOP_K) -> tuple[Voice, list[Adapter], list[float]]:
        """Resolve an NPC to its adapters and scales, and pin those adapters until ``release``.

        Without ``blend``, ``npc_id`` is a hosted role. With it, ``npc_id`` is a procedural NPC speaking as
        ``profile`` with a mix of hosted roles (a fused role counts as the blocks it mixes); at most
        ``max_blend`` roles may be named and at most ``max_blend`` blocks may result."""
        with self._lock:
            snap = self._roster
            if blend is None:
                role = snap.roles.get(npc_id)
                if role is None:
                    raise UnknownRole(f"no NPC {npc_id!r}; known: {known_roles(snap)}")
                beats = role.asset.beats if role.asset.block is not None else mixed_heads(snap, role.weights)
                voice = Voice(role.id, role.asset.profile, role.weights, beats, role.contrast)
            else:
                weights = self._blend(snap, npc_id, blend, max_blend)
                voice = Voice(npc_id, profile, weights, mixed_heads(snap, weights))
            pairs = sorted(voice.weights.items())
            adapters = [snap.adapters[rid] for rid, _ in pairs]
            for a in adapters:
                a.users += 1
            return voice, adapters, [w for _, w in pairs]

    @staticmethod
    def _blend(snap: Roster, npc_id: str, pairs: list[tuple[str, float]], limit: int) -> dict[str, float]:
        if npc_id in snap.roles:
            raise InvalidBlend(f"npc_id {npc_id!r} is a hosted role; a procedural NPC needs an id of its own")
        try:
            asked = normalise_blend(pairs, limit)
        except BlendError as exc:
            raise InvalidBlend(str(exc)) from None
        unknown = sorted(rid for rid in asked if rid not in snap.roles)
        if unknown:
            raise InvalidBlend(f"the blend names {', '.join(map(repr, unknown))}, not hosted here; known: {known_roles(snap)}")
        mixed: dict[str, float] = {}
        for rid, w in asked.items():
            for block, x in snap.roles[rid].weights.items():
                mixed[block] = mixed.get(block, 0.0) + w * x
        if len(mixed) > limit:
            raise InvalidBlend(f"the blend mixes {len(mixed)} blocks ({', '.join(sorted(mixed))}); at most {limit} "
                               "may speak at once (--max-blend)")
        total = sum(mixed.values())
        return {block: w / total for block, w in sorted(mixed.items())}

    def release(self, adapters: list[Adapter]) -> None:
        with self._lock:
            for a in adapters:
                a.users -= 1
                self._maybe_free(a)


def known_roles(snap: Roster) -> str:
    return ", ".join(sorted(snap.roles)) or "none"


def adapter_key(adapters, scales) -> tuple:
    """What a KV cache is valid under: the adapters (by content hash) and their scales, in order."""
    return tuple((a.sha256, float(s)) for a, s in zip(adapters, scales))
