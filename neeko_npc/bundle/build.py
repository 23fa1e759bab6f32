"""``neeko-npc bundle``: freeze the serving side with PyInstaller (one-folder mode) and lay the base model and the
roles beside it, so a game can ship the folder and start ``neeko-npc-server`` on a machine with nothing
installed.

PyInstaller builds for the system it runs on: a Linux build runs on Linux x86-64, a Windows build must be made
on Windows, a macOS build on macOS. The llama.cpp inside is whatever llama-cpp-python is installed here.
scripts/setup.sh builds one CPU backend for AVX2 (``cpu_features`` names its instruction sets). ``--cpu-variants``
adds every CPU variant llama.cpp offers (GGML_CPU_ALL_VARIANTS, built by scripts/build_cpu_variants.sh from the
installed llama-cpp-python's sources), and ggml picks the best one for the player's CPU at start.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .. import __version__
from ..errors import AssetError, InputError
from ..roles.base_model import base_info, resolve_base_model
from ..roles.folder import load_role_assets, resolve_fusion
from . import LEFT_OUT, MANIFEST, MODEL_DIR, ROLES_DIR, RUNTIME_DIR, SERVER_NAME, SERVING_MODULES, TRAINING, WARM_DIR

ENTRY = "from neeko_npc.bundle.server_main import main\nmain()\n"


@dataclass
class BundleReport:
    out: Path
    runtime_bytes: int  # the executable and _internal/
    model_bytes: int
    roles_bytes: int
    warm_bytes: int  # the roles' prefilled prompt prefixes
    roles: list[str]
    cpu_variants: list[str]
    cpu_features: list[str]  # what the loaded CPU backend was compiled for (the best variant here, if several)
    seconds: float
    platform: str = field(default_factory=lambda: f"{sys.platform}-{platform.machine().lower()}")

    @property
    def total_bytes(self) -> int:
        return self.runtime_bytes + self.model_bytes + self.roles_bytes + self.warm_bytes

    def summary(self) -> str:
        mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
        variants = (f"llama.cpp: {len(self.cpu_variants)} CPU variants ({', '.join(self.cpu_variants)}), the best picked at "
                    f"start (here: the one for {' '.join(self.cpu_features)})"
                    if self.cpu_variants else
                    f"llama.cpp: one CPU backend, for {' '.join(self.cpu_features) or 'an unknown instruction set'}: it runs on "
                    "CPUs that have these")
        return (f"bundle {self.out} ({self.platform}): {mb(self.total_bytes)} = runtime {mb(self.runtime_bytes)} + "
                f"model {mb(self.model_bytes)} + roles {mb(self.roles_bytes)} ({len(self.roles)} role(s)) + warm/ "
                f"{mb(self.warm_bytes)}; built in "
                f"{self.seconds:.0f} s\n{variants}\nstart it: {self.out / executable_name()} --port 0")


def executable_name() -> str:
    return SERVER_NAME + (".exe" if sys.platform == "win32" else "")


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def llama_lib_dir() -> Path:
    try:
        import llama_cpp
    except ImportError as exc:
        raise InputError(f"llama-cpp-python is not installed ({exc}); run scripts/setup.sh") from None
    return Path(llama_cpp.__file__).resolve().parent / "lib"


def variant_pattern() -> str:
    """How ggml names a CPU variant's library (ggml-backend-reg.cpp: ``[lib]ggml-cpu-<variant>.so|dll``)."""
    return "ggml-cpu-*.dll" if sys.platform == "win32" else "libggml-cpu-*.so"


def cpu_variants(lib_dir: Path | None = None) -> list[str]:
    """The CPU variants of ggml in ``lib_dir`` (haswell, skylakex, zen4, ...), the best picked at run time; [] where
    there is one CPU backend (libggml-cpu: one instruction set, fixed when it was compiled)."""
    lib_dir = lib_dir or llama_lib_dir()
    prefix, suffix = variant_pattern().split("*")
    return sorted(p.name[len(prefix):-len(suffix)] for p in lib_dir.glob(variant_pattern()) if p.is_file())


def variant_libraries(src: Path) -> list[Path]:
    """The CPU variants' libraries in ``src`` (scripts/build_cpu_variants.sh builds them); an error if none."""
    libs = sorted(p for p in Path(src).glob(variant_pattern()) if p.is_file()) if Path(src).is_dir() else []
    if not libs:
        raise InputError(f"--cpu-variants {src}: no {variant_pattern()} there; build them with "
                         "bash scripts/build_cpu_variants.sh DIR")
    return libs


PROBE_CPU = """
import json, sys
from pathlib import Path
from neeko_npc.engine import llamacpp
llamacpp.load_cpu_backend(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
print(json.dumps(llamacpp.cpu_features()))
"""


def cpu_features(lib_dir: Path | None = None) -> list[str]:
    """The instruction sets of the CPU backend llama.cpp loads on this machine from ``lib_dir`` (default: the installed
    one): where there are several variants, those of the one this CPU gets. Asked in a fresh interpreter, since
    a process loads its CPU backend once."""
    proc = subprocess.run([sys.executable, "-c", PROBE_CPU, *([str(lib_dir)] if lib_dir else [])], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise InputError(f"llama.cpp could not load a CPU backend from {lib_dir or llama_lib_dir()}:\n"
                         f"{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_roles(roles_dir: Path, base) -> list[str]:
    """The ids of every role in the folder; any file the server would skip is an error here, not in a shipped game."""
    assets, errors = load_role_assets(roles_dir, base)
    if errors:
        raise InputError(f"{len(errors)} role file(s) in {roles_dir} cannot ship:\n" + "\n".join(f"  {e}" for e in errors))
    if not assets:
        raise InputError(f"{roles_dir}: no .nrole files to ship")
    known = {a.id: a for a in assets}
    for a in assets:
        if a.block is None:
            try:
                resolve_fusion(a, known)
            except AssetError as exc:
                raise InputError(str(exc)) from None
    return [a.id for a in assets]


def warm_up(roles_dir: Path, model: Path, warm_dir: Path) -> None:
    """Prepare in ``warm_dir`` what a server would otherwise make at its first start: each block role as a llama.cpp
    adapter (GGUF LoRA), and each role's prefilled prompt prefix (engine/snapshots.py, WarmFiles)."""
    from ..engine.facade import EngineConfig
    from ..engine.llama_engine import LlamaEngine

    engine = LlamaEngine(roles_dir, str(model), EngineConfig(pool_size=1, warm_save_dir=warm_dir))
    try:
        engine.warmed.wait()
        snap = engine.roles()
        for rid in snap.adapters:
            adapter = engine.adapters.path(snap.roles[rid].asset)
            shutil.copy2(adapter, warm_dir / adapter.name)
    finally:
        engine.close()
    if not warm_dir.is_dir():
        raise InputError(f"the roles' warm prefixes could not be saved in {warm_dir}")


def prepare_out(out: Path) -> None:
    """An empty or missing folder, or an earlier bundle (replaced); anything else is refused, never deleted."""
    if out.exists():
        if not out.is_dir():
            raise InputError(f"--out {out} is a file; give a folder")
        if any(out.iterdir()):
            if not (out / MANIFEST).is_file():
                raise InputError(f"--out {out} is not empty and holds no earlier bundle ({MANIFEST}); give an empty or "
                                 "new folder")
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


PROBE = """
import importlib, importlib.metadata as md, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
loaded = {m.split(".")[0] for m in sys.modules}
installed = set(md.packages_distributions())
print(json.dumps({"loaded": sorted(loaded), "unused": sorted(installed - loaded - set(sys.stdlib_module_names) - {"neeko_npc"})}))
"""


def unused_packages() -> list[str]:
    """Installed top-level packages that serving never imports (SERVING_MODULES, in a fresh interpreter): a
    package reached only through an optional import (botocore, pydantic, psutil, ...) would otherwise ship."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *SERVING_MODULES], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InputError(f"cannot import the serving side to see what it needs:\n{proc.stderr[-2000:]}")
    probe = json.loads(proc.stdout)
    training = sorted(set(probe["loaded"]) & set(TRAINING))
    if training:
        raise InputError(f"the serving side imports {', '.join(training)}: it must not reach the training side")
    return sorted(set(probe["unused"]) | set(LEFT_OUT) | set(TRAINING))


def pyinstaller_command(entry: Path, work: Path, exclude: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--onedir", "--name", SERVER_NAME,
           "--distpath", str(work / "dist"), "--workpath", str(work / "build"), "--specpath", str(work),
           "--log-level", "WARN", "--collect-binaries", "llama_cpp"]
    for name in exclude:
        cmd += ["--exclude-module", name]
    return cmd + [str(entry)]


def build_bundle(out: Path, roles_dir: Path, base_model: str | None = None, log: Callable[[str], None] = print,
                 variants_dir: Path | None = None) -> BundleReport:
    """Build the bundle folder ``out``, with the CPU variants in ``variants_dir`` if given; returns what went in and
    how large each part is."""
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        raise InputError("neeko-npc bundle needs PyInstaller: pip install 'neeko-npc[bundle]'") from None
    t0 = time.monotonic()
    ref = resolve_base_model(base_model)
    if ref.kind != "gguf":
        raise InputError(f"{ref.path}: a bundle serves a GGUF base model on llama.cpp; convert the folder to .gguf first")
    roles = check_roles(Path(roles_dir), base_info(ref))
    variant_libs = variant_libraries(variants_dir) if variants_dir else []
    out = Path(out).resolve()
    prepare_out(out)
    try:
        return _build_into(out, ref, Path(roles_dir), roles, log, t0, variant_libs)
    except BaseException:  # a half-built folder would be refused next time (no manifest): nothing is left
        shutil.rmtree(out, ignore_errors=True)
        raise


def _build_into(out: Path, ref, roles_dir: Path, roles: list[str], log, t0: float, variant_libs: list[Path]) -> BundleReport:
    with tempfile.TemporaryDirectory(prefix="neeko-bundle-") as tmp:
        work = Path(tmp)
        entry = work / "neeko_npc_server.py"
        entry.write_text(ENTRY)
        log("freezing the server with PyInstaller (one folder, serving side only; about a minute)...")
        proc = subprocess.run(pyinstaller_command(entry, work, unused_packages()), capture_output=True, text=True,
                              env={**os.environ, "PYTHONNOUSERSITE": "1"})
        if proc.returncode != 0:
            raise InputError(f"PyInstaller failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        built = work / "dist" / SERVER_NAME
        for item in built.iterdir():
            shutil.move(str(item), out / item.name)
    lib_dir = out / RUNTIME_DIR / "llama_cpp" / "lib"
    for lib in variant_libs:  # beside libggml-cpu, which ggml loads only where no variant scores
        shutil.copy2(lib, lib_dir / lib.name)
    variants, features = cpu_variants(lib_dir), cpu_features(lib_dir)
    if variants:
        log(f"{len(variants)} CPU variants of llama.cpp; on this CPU ggml picks the one for {' '.join(features)}")
    log(f"copying the base model ({ref.path.name}) and {len(roles)} role(s)...")
    (out / MODEL_DIR).mkdir()
    shutil.copy2(ref.path, out / MODEL_DIR / ref.path.name)
    shutil.copytree(roles_dir, out / ROLES_DIR, ignore=lambda d, names: [n for n in names if not n.endswith(".nrole")])
    log("preparing each role's adapter and prompt prefix in warm/, so the server's first start is as quick as its next...")
    warm_up(out / ROLES_DIR, out / MODEL_DIR / ref.path.name, out / WARM_DIR)
    report = BundleReport(out=out, runtime_bytes=folder_bytes(out / executable_name()) + folder_bytes(out / RUNTIME_DIR),
                          model_bytes=folder_bytes(out / MODEL_DIR), roles_bytes=folder_bytes(out / ROLES_DIR),
                          warm_bytes=folder_bytes(out / WARM_DIR), roles=roles, cpu_variants=variants,
                          cpu_features=features,
                          seconds=time.monotonic() - t0)
    manifest = {"version": __version__, "server": executable_name(), "model": f"{MODEL_DIR}/{ref.path.name}",
                "roles_dir": ROLES_DIR, "role_ids": roles, "platform": report.platform, "cpu_variants": variants,
                "cpu_features": report.cpu_features,
                "runtime_bytes": report.runtime_bytes, "model_bytes": report.model_bytes, "roles_bytes": report.roles_bytes,
                "warm_bytes": report.warm_bytes,
                "base": {"size": ref.path.stat().st_size, **asdict(base_info(ref))}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return report
