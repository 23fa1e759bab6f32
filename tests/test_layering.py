"""The layers depend one way (roles <- neeko <- engine <- server <- cli) and serving never imports torch."""

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "neeko_npc"
# export sits beside neeko: it reads role files, never the torch side. defaults.py, errors.py and protocol.py are
# standard library only, below every layer.
SHARED = {"defaults", "errors", "protocol"}
MAY_IMPORT = {
    "roles": {"roles"},
    "neeko": {"roles", "neeko"},
    "export": {"roles", "export"},
    "engine": {"roles", "export", "engine"},
    "server": {"roles", "engine", "server", "v1"},
    # the benchmark drives the engine in-process or a daemon over gRPC
    "bench": {"roles", "export", "engine", "server", "v1", "bench", "bundle"},
    # the shipped server: the CLI's serve command, frozen; its builder reads role files and the base model
    "bundle": {"roles", "engine", "bundle", "cli"},
}
# The one engine module allowed on the torch side; the daemon imports it only for --engine torch.
EXCEPTIONS = {"engine/torch_engine.py": {"neeko"}}
TORCH_FREE = ["neeko_npc.defaults", "neeko_npc.errors", "neeko_npc.engine", "neeko_npc.export", "neeko_npc.roles.prompt", "neeko_npc.roles.llama", "neeko_npc.roles.asset", "neeko_npc.roles.base_model", "neeko_npc.roles.folder", "neeko_npc.roles.dialogue", "neeko_npc.roles.gate", "neeko_npc.roles.sampling", "neeko_npc.roles.beats",
              "neeko_npc.export.fold", "neeko_npc.export.gguf_lora", "neeko_npc.export.peft", "neeko_npc.export.merge",
              "neeko_npc.engine.llamacpp", "neeko_npc.bench.run", "neeko_npc.bench.speed", "neeko_npc.bench.baselines",
              "neeko_npc.bench.memory", "neeko_npc.bench.report", "neeko_npc.bench.targets",
              "neeko_npc.engine.facade", "neeko_npc.engine.stream", "neeko_npc.engine.llama_engine", "neeko_npc.engine.openai_engine", "neeko_npc.engine.roleset", "neeko_npc.server.app", "neeko_npc.server.client",
              "neeko_npc.cli", "neeko_npc.server.launch", "neeko_npc.bundle.server_main", "neeko_npc.bundle.build",
              "neeko_npc.bench.startup"]


def internal_imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            here = path.relative_to(PKG).parts[:-1]
            base = list(here[: len(here) - (node.level - 1)])
            target = ".".join(base + ([node.module] if node.module else []))
            yield target
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("neeko_npc."):
            yield node.module[len("neeko_npc."):]


def test_dependencies_point_one_way():
    bad = []
    for layer, allowed in MAY_IMPORT.items():
        for path in (PKG / layer).glob("*.py"):
            ok_here = allowed | SHARED | EXCEPTIONS.get(str(path.relative_to(PKG)), set())
            for target in internal_imports(path):
                ok = target == "" or any(target == a or target.startswith(a + ".") for a in ok_here)  # "" is __version__
                if not ok:
                    bad.append(f"{path.relative_to(PKG)} imports {target}")
    assert not bad, bad
    # and the check has teeth: the torch side is seen importing the roles layer
    assert "roles.asset" in set(internal_imports(PKG / "neeko" / "bake.py"))


def test_serving_side_never_imports_torch():
    code = "import sys\n" + "".join(f"import {m}\n" for m in TORCH_FREE) + "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


# What only an engine's backend may touch; everyone above the engine goes through the facade (engine/facade.py).
ENGINE_INSIDES = {"pool", "batcher", "roleset", "memory", "_stream", "model", "adapters"}
FACADE_USERS = [*(PKG / "cli").glob("*.py"), *(PKG / "server").glob("*.py"), PKG / "bench" / "targets.py"]


def engine_insides_used(path: Path) -> list[str]:
    """`engine.pool`, `self.engine.memory`, `daemon.service.engine.roleset` ...: an attribute of an engine inside."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in ENGINE_INSIDES:
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name in ("engine", "served", "e"):
                found.append(f"{path.relative_to(PKG)}:{node.lineno} .{node.attr}")
    return found


def test_callers_use_the_engine_facade_only():
    bad = [x for p in FACADE_USERS for x in engine_insides_used(p)]
    assert not bad, bad
    # and the check has teeth: the llama.cpp-only decode section of the bench does reach inside
    assert any(".model" in x for x in engine_insides_used(PKG / "bench" / "run.py"))
