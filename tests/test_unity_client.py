"""The Unity package: its transport-free C# core built with mono and tested with NUnit, plus package checks.

mono-mcs, nunit-console and protobuf-compiler come from Debian (scripts/setup.sh installs them); a missing
tool fails these tests instead of skipping them.
"""

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "unity_client"
CORE = sorted((PKG / "Runtime" / "Core").glob("*.cs"))


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run scripts/setup.sh (Debian packages mono-mcs, nunit-console, "
                    "libnunit-cil-dev, libmono-system-runtime-serialization4.0-cil, protobuf-compiler)")
    return path


def nunit_framework() -> Path:
    found = sorted(Path("/usr/lib/cli").glob("nunit.framework-2.6*/nunit.framework.dll"))
    if not found:
        pytest.fail("nunit.framework.dll not found; install the Debian package libnunit-cil-dev (scripts/setup.sh does)")
    return found[-1]


def test_csharp_core_passes_its_nunit_tests(tmp_path):
    mcs, console = tool("mcs"), tool("nunit-console")
    nunit = nunit_framework()
    core = tmp_path / "Neeko.Npc.Core.dll"
    tests = tmp_path / "Neeko.Npc.Tests.dll"
    subprocess.run([mcs, "-langversion:7", "-warnaserror", "-target:library", f"-out:{core}", "-r:System.Core.dll",
                    *map(str, CORE)], check=True, capture_output=True, text=True)
    subprocess.run([mcs, "-langversion:7", "-target:library", f"-out:{tests}", f"-r:{core}", f"-r:{nunit}",
                    "-r:System.Core.dll", "-r:System.Runtime.Serialization.dll", *map(str, sorted((PKG / "Tests~").glob("*.cs")))],
                   check=True, capture_output=True, text=True)
    shutil.copy(nunit, tmp_path)
    result_xml = tmp_path / "results.xml"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NEEKO_RECORDED_DIR": str(PKG / "Tests~" / "Recorded")}
    run = subprocess.run([console, str(tests), "-nologo", f"-xml={result_xml}"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    summary = ET.parse(result_xml).getroot().attrib
    assert int(summary["total"]) >= 15 and summary["failures"] == "0" and summary["errors"] == "0", summary
    assert summary["not-run"] == "0" and summary.get("skipped", "0") == "0", summary


def test_core_is_free_of_unity_and_grpc():
    """The core must build without Unity or gRPC assemblies (the mcs build above proves it; this names the rule)."""
    use = re.compile(r"^\s*using\s+(UnityEngine|Grpc|Google\.Protobuf)\b|\b(UnityEngine|Grpc\.Core|Google\.Protobuf)\.\w", re.M)
    for f in CORE:
        assert not use.search(f.read_text()), f.name
    assert use.search((PKG / "Runtime" / "Unity" / "NpcVoice.cs").read_text())  # and the pattern does catch it


def test_generated_csharp_messages_are_fresh(tmp_path):
    protoc = tool("protoc")
    subprocess.run([protoc, f"-I{ROOT / 'proto'}", f"--csharp_out={tmp_path}", str(ROOT / "proto/neeko_npc/v1/dialogue.proto")],
                   check=True)
    committed = PKG / "Runtime" / "Grpc" / "Generated" / "Dialogue.cs"
    assert (tmp_path / "Dialogue.cs").read_text() == committed.read_text(), (
        "stale: run protoc -I proto --csharp_out=unity_client/Runtime/Grpc/Generated proto/neeko_npc/v1/dialogue.proto")


def test_package_manifest_and_layout():
    pkg = json.loads((PKG / "package.json").read_text())
    assert pkg["name"] == "com.neeko.npc" and pkg["unity"] == "2021.3"
    for sample in pkg["samples"]:
        assert (PKG / sample["path"]).is_dir() and list((PKG / sample["path"]).glob("*.cs"))
    asmdef = json.loads((PKG / "Runtime" / "Neeko.Npc.asmdef").read_text())
    assert asmdef["name"] == "Neeko.Npc" and "Grpc.Net.Client.dll" in asmdef["precompiledReferences"]
    assert "Grpc.Core.dll" not in asmdef["precompiledReferences"]  # the deprecated Grpc.Core is not used
    assert (PKG / "Documentation~" / "index.md").is_file()


def test_every_type_and_member_the_docs_name_exists():
    sources = "\n".join(p.read_text() for p in (PKG / "Runtime").rglob("*.cs"))
    sources += "\n".join(p.read_text() for p in (PKG / "Samples~").rglob("*.cs"))
    declared = set(re.findall(r"\b(?:class|struct|enum|interface)\s+(\w+)", sources))
    doc = (PKG / "Documentation~" / "index.md").read_text()
    named = {(a, b) for a, b in re.findall(r"`([A-Z]\w+)(?:\.(\w+))?(?:\([^`]*\))?`", doc) if not re.fullmatch(r"[A-Z_]+", a)}
    assert len(named) > 20
    external = {("GrpcWebHandler", ""), ("Google", "Protobuf")}  # types of other libraries the docs point to
    missing = []
    for first, member in named - external:
        if member:  # Type.Member
            if first not in declared or not re.search(rf"\b{member}\b", sources):
                missing.append(f"{first}.{member}")
        elif first not in declared and not re.search(rf"\b{first}\b", sources):  # a type, or a member named alone
            missing.append(first)
    assert not missing, missing
