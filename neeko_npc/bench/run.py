"""The benchmark as one call: build the target and the baselines, run every section, return a BenchResult.

Each section's figures are plain data (JSON-ready, snake_case keys); report.py turns a BenchResult into the
table, the targets and the plot.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputError
from .. import defaults
from .speed import DecodeRow
from .targets import BENCH_SCENE, InProcess, Remote
from .town import WALK_S

FULL = dict(ttft_reps=10, switch_reps=12, levels=[1, 2, 4, 8], per_stream=3, decode_tokens=64, decode_rounds=5,
            adapter_switch_reps=40, reload_reps=6, role_counts=[0, 1, 10, 50], merged_counts=[1, 5], mixture_blocks=50,
            town_npcs=24, town_levels=[1, 4, 8], town_stops=6, town_tokens=24, town_walk_s=WALK_S, beat_reps=6,
            converse_turns=8, startup_reps=3, neighbour_reps=5, neighbour_levels=[0, 1, 2])
QUICK = dict(ttft_reps=3, switch_reps=4, levels=[1, 2, 4, 8], per_stream=1, decode_tokens=24, decode_rounds=2,
             adapter_switch_reps=10, reload_reps=2, role_counts=[0, 2], merged_counts=[1, 2], mixture_blocks=10,
             town_npcs=8, town_levels=[1, 2], town_stops=3, town_tokens=12, town_walk_s=WALK_S, beat_reps=2,
             converse_turns=4, startup_reps=1, neighbour_reps=2, neighbour_levels=[0, 1])


@dataclass
class BenchConfig:
    roles_dir: Path = Path(defaults.ROLES_DIR)
    base_model: str | None = None
    address: str | None = None  # a running daemon; None benchmarks an engine in this process
    token: str = ""
    tls_ca: str | None = None
    quick: bool = False
    pool_size: int = defaults.POOL_SIZE
    threads: int | None = None
    contrast: float = defaults.CONTRAST or 1.0  # the contrasted decode row's (1.0 while serving leaves contrast off)
    memory: bool = True
    town: bool = True
    startup: bool = True  # start server processes: `neeko-npc serve`, and the bundle when one is given
    neighbours: bool = True  # lines beside busy processes standing in for a game
    bundle: Path | None = None  # a folder from `neeko-npc bundle`, started beside serve
    workdir: Path | None = None
    sizes: dict = field(default_factory=dict)  # overrides of FULL / QUICK

    def size(self, key: str):
        return self.sizes.get(key, (QUICK if self.quick else FULL)[key])


@dataclass
class BenchResult:
    machine: dict
    mode: str  # "in-process" or "daemon"
    quick: bool
    target: dict = field(default_factory=dict)  # what was measured: base model, roles folder, pool, or an address
    roles: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # role files the engine skipped
    ttft: dict = field(default_factory=dict)  # speed.first_and_follow_up
    switching: dict = field(default_factory=dict)  # speed.switching
    concurrency: dict = field(default_factory=dict)  # streams ("1", "2", ...) -> speed.concurrency's figures
    decode: list[DecodeRow] = field(default_factory=list)  # speed.decode_rates, one row per setup
    decode_prompt_tokens: int = 0
    adapter_switch: dict = field(default_factory=dict)  # speed.adapter_switch
    reload_per_npc: dict = field(default_factory=dict)  # baselines.reload_per_npc
    memory: dict = field(default_factory=dict)  # memory.memory_by_role_count, plus merged_models
    town: dict = field(default_factory=dict)  # town.town: many NPCs, few contexts, with and without snapshots
    beats: dict = field(default_factory=dict)  # speed.beat_cost: what a line's beat adds to its time
    converse: dict = field(default_factory=dict)  # speed.speaker_changes: the gap between turns of a Converse
    startup: dict = field(default_factory=dict)  # startup.startup: a server process to its ready line and first line
    neighbours: dict = field(default_factory=dict)  # neighbours.beside_a_game: hot and cold lines beside busy processes
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall-clock time of each step, in the order they ran

    def decode_row(self, key: str) -> DecodeRow | None:
        return next((row for row in self.decode if row.key == key), None)

    def to_dict(self) -> dict:
        return asdict(self)


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    try:
        import llama_cpp

        llama = llama_cpp.__version__
    except Exception:
        llama = "missing"
    return {"cpus": os.cpu_count(), "cpu": cpu, "platform": platform.platform(), "python": platform.python_version(),
            "llama_cpp_python": llama}


def run_bench(cfg: BenchConfig, progress=None) -> BenchResult:
    tick = progress.update if progress is not None else None
    out = BenchResult(machine(), "daemon" if cfg.address else "in-process", cfg.quick)
    started = [None, time.perf_counter()]  # the step running and when it began

    def step(name: str | None):
        """Start the step ``name`` (None: the end); the one before is timed into ``out.seconds``."""
        now = time.perf_counter()
        if started[0] is not None:
            out.seconds[started[0]] = out.seconds.get(started[0], 0.0) + now - started[1]
        started[:] = [name, now]
        if progress is not None and name:
            progress.set_description(name)

    try:
        if cfg.address:
            return _run_remote(cfg, out, step, tick)
        work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="neeko-bench-"))
        try:
            return off_main_thread(_run_local, cfg, out, work, step, tick)
        finally:
            if not cfg.workdir:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        step(None)


def off_main_thread(fn, *args):
    """Run ``fn`` in a worker thread, as the daemon runs every request (on gRPC's workers).

    llama.cpp built with OpenMP keeps a team of threads for each thread that decodes; once the main
    thread has decoded, decodes from other threads run several times slower, and the concurrency section would
    measure that instead of the daemon."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="neeko-bench", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _sections_through(target, cfg: BenchConfig, out: BenchResult, step, tick) -> list[str]:
    roles = target.roles
    if not roles:
        raise InputError("the role set is empty: nothing to benchmark")
    out.roles = roles
    from . import speed

    step("time to first token")
    out.ttft = speed.first_and_follow_up(target, roles, cfg.size("ttft_reps"), progress=tick)
    step("switching NPC")
    out.switching = speed.switching(target, roles, cfg.size("switch_reps"), progress=tick)
    step("concurrency")
    out.concurrency = speed.concurrency(target, roles, cfg.size("levels"), cfg.size("per_stream"), progress=tick)
    step("beats")
    out.beats = speed.beat_cost(target, roles, cfg.size("beat_reps"), progress=tick)
    step("converse")
    out.converse = speed.speaker_changes(target, roles, cfg.size("converse_turns"), progress=tick)
    return roles


def _run_remote(cfg: BenchConfig, out: BenchResult, step, tick) -> BenchResult:
    from ..server.client import Client

    client = Client(cfg.address, token=cfg.token, tls_ca=cfg.tls_ca)
    try:
        out.target = {"address": cfg.address}
        _sections_through(Remote(client), cfg, out, step, tick)
    finally:
        client.close()
    out.skipped = ["decode rates, the adapter switch alone, baselines and memory run only in process (without --address)"]
    return out


def _run_local(cfg: BenchConfig, out: BenchResult, work: Path, step, tick) -> BenchResult:
    from ..engine.facade import EngineConfig
    from ..engine.llama_engine import LlamaEngine
    from ..roles.base_model import resolve_base_model
    from . import baselines, memory, speed
    from .speed import DecodeSetup

    step("loading the model")
    engine = LlamaEngine(cfg.roles_dir, cfg.base_model, EngineConfig(pool_size=cfg.pool_size, n_threads=cfg.threads))
    try:
        snap = engine.roles()
        out.target = {"base_model": engine.base.name, "roles_dir": str(cfg.roles_dir), "pool_size": cfg.pool_size,
                         "threads": cfg.threads or defaults.default_threads()}
        out.problems = dict(snap.problems)
        _sections_through(InProcess(engine), cfg, out, step, tick)

        blocks = [snap.roles[r].asset for r in sorted(snap.adapters)]
        if not blocks:
            out.skipped = ["no trained block in the role set: decode, switch and memory sections need one"]
            return out
        one = blocks[0]
        fused = next((r for r in snap.roles.values() if len(r.weights) > 1), None)
        model = engine.model
        prompt = engine.build_prompt(one.profile, "", one.id, speed.OPENING[0], BENCH_SCENE, 64)
        ctx = model.new_context(engine.config.n_ctx, cfg.threads)
        base_ctx = model.new_context(engine.config.n_ctx, cfg.threads)  # the contrasted row's base model
        handle = {rid: a.handle for rid, a in snap.adapters.items()}

        step("baselines: merging models")
        ref = resolve_base_model(cfg.base_model)
        merged = baselines.merged_models(blocks[: max(2, max(cfg.size("merged_counts")))], ref.path, engine.base, work / "merged")
        merged_model = baselines.LlamaModel(merged[one.id])
        merged_ctx = merged_model.new_context(engine.config.n_ctx, cfg.threads)
        mixture_n = max(cfg.size("mixture_blocks"), len(blocks))
        adapter_files = [engine.adapters.path(a) for a in blocks]
        extra = baselines.copies_of_adapters(model, adapter_files, mixture_n - len(blocks))
        try:
            dense = baselines.dense_weights(blocks, one.id)
            setups = [DecodeSetup("base", "base model alone", ctx, [], []),
                      DecodeSetup("one_role", f"neeko: one role ({one.id})", ctx, [handle[one.id]], [1.0]),
                      DecodeSetup("one_role_contrast", f"neeko: one role, contrast {cfg.contrast:g} ({one.id})", ctx,
                                  [handle[one.id]], [1.0], "two contexts, two decodes a token", base_ctx, cfg.contrast)]
            if fused is not None:
                pairs = sorted(fused.weights.items())
                setups.append(DecodeSetup("fused", f"neeko: fused role ({fused.id})", ctx, [handle[r] for r, _ in pairs], [w for _, w in pairs]))
            setups += [DecodeSetup("merged", f"merged single LoRA ({one.id})", merged_ctx, [], [],
                                   "role merged into the weights (f16 q/v); cannot switch"),
                       DecodeSetup("dense", f"dense mixture ({len(blocks)} blocks)", ctx, [handle[a.id] for a in blocks], dense,
                                   "every block on every request"),
                       DecodeSetup("dense_many", f"dense mixture ({mixture_n} blocks)", ctx, [handle[a.id] for a in blocks] + extra,
                                   dense + [1e-6] * len(extra), f"{mixture_n - len(blocks)} copies of the trained blocks")]
            step("decode rates")
            out.decode = speed.decode_rates(setups, prompt, cfg.size("decode_tokens"), cfg.size("decode_rounds"), progress=tick)
            out.decode_prompt_tokens = len(prompt)
            step("adapter switch")
            other = blocks[1] if len(blocks) > 1 else None
            if other is not None:
                out.adapter_switch = speed.adapter_switch(ctx, ([handle[one.id]], [1.0]), ([handle[other.id]], [1.0]),
                                                             prompt[:16], cfg.size("adapter_switch_reps"))
        finally:
            for h in extra:
                model.free_adapter(h)
            ctx.close()
            base_ctx.close()
            merged_ctx.close()
            merged_model.close()
        if len(merged) > 1:
            step("baseline: one model per NPC")
            out.reload_per_npc = baselines.reload_per_npc(list(merged.values())[:2], prompt, cfg.size("reload_reps"))
        tick and tick()
    finally:
        engine.close()

    if cfg.startup:
        from . import startup

        step("start-up: server processes")
        out.startup = startup.startup(startup.start_commands(cfg.roles_dir, cfg.base_model, cfg.bundle, cfg.threads),
                                      cfg.size("startup_reps"), progress=tick)
    if cfg.neighbours:
        step("beside a game: lines beside busy processes")
        out.neighbours = run_neighbours(cfg, tick)
    if cfg.town:
        step(f"town: {cfg.size('town_npcs')} NPCs on 4 contexts")
        out.town = run_town(cfg, blocks, work / "town", tick)
    if cfg.memory:
        step("memory: daemon RSS by role count")
        out.memory = memory.memory_by_role_count(blocks, cfg.size("role_counts"), cfg.base_model, work, progress=tick)
        step("memory: one merged model per NPC")
        counts = [n for n in cfg.size("merged_counts") if n <= len(merged)]
        out.memory["merged_models"] = [{"count": n, "rss_bytes": memory.models_rss(list(merged.values())[:n]),
                                           "disk_bytes": sum(p.stat().st_size for p in list(merged.values())[:n])} for n in counts]
    return out


def run_neighbours(cfg: BenchConfig, tick=None) -> dict:
    """The beside-a-game section: the default threads (or --threads) against every core."""
    from ..engine.facade import EngineConfig
    from ..engine.llama_engine import LlamaEngine
    from . import neighbours

    def make(threads: int):
        engine = LlamaEngine(cfg.roles_dir, cfg.base_model, EngineConfig(pool_size=cfg.pool_size, n_threads=threads))
        engine.warmed.wait()
        return engine

    chosen = cfg.threads or defaults.default_threads()
    options = {f"--threads {chosen} ({'given' if cfg.threads else 'default'})": chosen}
    if defaults.cores() != chosen:
        options[f"--threads {defaults.cores()} (every core)"] = defaults.cores()
    return neighbours.beside_a_game(make, options, cfg.size("neighbour_levels"), cfg.size("neighbour_reps"), 24,
                                    progress=tick)


def run_town(cfg: BenchConfig, blocks, folder: Path, tick=None) -> dict:
    """The town section on ``blocks`` (role assets with a block), its roles written to ``folder``."""
    import time

    from ..engine.facade import EngineConfig
    from ..engine.llama_engine import LlamaEngine
    from . import town

    npcs = town.town_roles(blocks, cfg.size("town_npcs"), folder)

    def make(pool: int, snapshots: bool):
        t0 = time.perf_counter()
        # warm prefixes saved in this run's folder: the first engine warms from nothing (no earlier run's files,
        # not even the base model's prefixes of the same profiles), the next ones restore what it saved
        config = EngineConfig(pool_size=pool, n_threads=cfg.threads, warm_save_dir=folder / "warm")
        if not snapshots:
            config.snapshot_bytes = 0
        engine = LlamaEngine(folder, cfg.base_model, config)
        engine.warmed.wait()
        return engine, time.perf_counter() - t0

    return town.town(make, npcs, cfg.size("town_levels"), cfg.size("town_stops"), cfg.size("town_tokens"), progress=tick,
                     walk_s=cfg.size("town_walk_s"), beside=cfg.neighbours)


def total_steps(cfg: BenchConfig) -> int:
    """Progress-bar length: one tick per timed unit of work."""
    s = cfg.size
    n = s("ttft_reps") + 3 + len(s("levels")) + s("beat_reps") + 2
    if not cfg.address:
        n += 6 * s("decode_rounds") + 1
        n += len(s("role_counts")) if cfg.memory else 0
        n += (4 if cfg.neighbours else 3) if cfg.town else 0
        n += s("startup_reps") * (4 if cfg.bundle else 2) if cfg.startup else 0
        n += s("neighbour_reps") * len(s("neighbour_levels")) * 2 if cfg.neighbours else 0
    return n
