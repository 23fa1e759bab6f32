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
TESTS = PKG / "Tests" / "Editor"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run scripts/setup.sh (Debian packages mono-mcs, nunit-console, "
                    "libnunit-cil-dev, libmono-system-runtime-serialization4.0-cil, libmono-system-net-http4.0-cil, protobuf-compiler)")
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
    subprocess.run([mcs, "-langversion:7", "-warnaserror", "-target:library", f"-out:{tests}", f"-r:{core}", f"-r:{nunit}",
                    "-r:System.Core.dll", "-r:System.Runtime.Serialization.dll", *map(str, sorted(TESTS.glob("*.cs")))],
                   check=True, capture_output=True, text=True)
    shutil.copy(nunit, tmp_path)
    result_xml = tmp_path / "results.xml"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NEEKO_RECORDED_DIR": str(TESTS / "Recorded")}
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


def asmdef(folder: str) -> dict:
    found = list((PKG / folder).glob("*.asmdef"))
    assert len(found) == 1, folder
    return json.loads(found[0].read_text())


def test_assemblies_hold_the_layering():
    core, grpc, unity, tests = (asmdef(f) for f in ("Runtime/Core", "Runtime/Grpc", "Runtime/Unity", "Tests/Editor"))
    assert core["name"] == "Neeko.Npc.Core" and core["noEngineReferences"] is True
    assert core["references"] == [] and core["precompiledReferences"] == [] and core["overrideReferences"] is True
    assert grpc["name"] == "Neeko.Npc.Grpc" and grpc["noEngineReferences"] is True
    assert grpc["references"] == ["Neeko.Npc.Core", "Cysharp.Net.Http.YetAnotherHttpHandler"]  # test_unity_compile builds it
    assert unity["name"] == "Neeko.Npc.Unity" and unity["references"] == ["Neeko.Npc.Core", "Neeko.Npc.Grpc"]
    assert tests["name"] == "Neeko.Npc.Tests" and tests["defineConstraints"] == ["UNITY_INCLUDE_TESTS"]
    assert tests["precompiledReferences"] == ["nunit.framework.dll"] and tests["includePlatforms"] == ["Editor"]
    assert "Neeko.Npc.Core" in tests["references"] and tests["autoReferenced"] is False
    editor = asmdef("Editor")
    assert editor["includePlatforms"] == ["Editor"] and editor["references"] == ["Neeko.Npc.Core", "Neeko.Npc.Unity"]
    # every script belongs to one of them, and none but Unity's (and the Editor's) touches UnityEngine
    engine = re.compile(r"^\s*using\s+UnityEngine\b|\bUnityEngine\.\w", re.M)
    for cs in PKG.rglob("*.cs"):
        rel = cs.relative_to(PKG)
        if rel.parts[0].endswith("~"):
            continue
        owner = next(p for p in cs.parents if list(p.glob("*.asmdef")) or p == PKG)
        assert owner != PKG, f"{rel} is in no assembly"
        if engine.search(cs.read_text()):
            assert owner in (PKG / "Runtime" / "Unity", PKG / "Editor"), f"{rel} uses UnityEngine outside Neeko.Npc.Unity"


def test_every_imported_asset_has_a_well_formed_unique_meta():
    from scripts.unity_meta import problems

    assert problems() == []
    assert len(list(PKG.rglob("*.cs.meta"))) >= 10


def test_the_meta_check_catches_each_kind_of_mistake(tmp_path):
    from scripts.unity_meta import problems, write_missing

    pkg = tmp_path / "pkg"
    shutil.copytree(PKG, pkg)
    assert problems(pkg) == []
    (pkg / "Runtime" / "Core" / "NewThing.cs").write_text("namespace Neeko.Npc { class NewThing {} }")
    (pkg / "Runtime" / "Gone.cs.meta").write_text((PKG / "Runtime" / "Core" / "DialogueClient.cs.meta").read_text())
    (pkg / "README.md.meta").write_text("fileFormatVersion: 2\nguid: xyz\n")
    dup = (pkg / "Runtime" / "Core" / "RetryPolicy.cs.meta").read_text()
    (pkg / "Runtime" / "Core" / "MainThreadQueue.cs.meta").write_text(dup)
    found = "\n".join(problems(pkg))
    assert "Runtime/Core/NewThing.cs.meta: missing" in found
    assert "Runtime/Gone.cs.meta: orphaned" in found
    assert "README.md.meta: malformed" in found
    assert "is also used by Runtime/Core/RetryPolicy.cs.meta" in found or "is also used by Runtime/Core/MainThreadQueue.cs.meta" in found
    assert [m.name for m in write_missing(pkg)] == ["NewThing.cs.meta"]  # the helper fills only what is missing
    assert "MonoImporter:" in (pkg / "Runtime" / "Core" / "NewThing.cs.meta").read_text()


def test_package_manifest_and_hygiene():
    pkg = json.loads((PKG / "package.json").read_text())
    assert pkg["name"] == "com.neeko.npc" and pkg["unity"] == "2021.3"
    assert pkg.get("documentationUrl", "https://").startswith("https://")  # none, or absolute
    for sample in pkg["samples"]:
        assert (PKG / sample["path"]).is_dir() and list((PKG / sample["path"]).glob("*.cs"))
    assert f"## [{pkg['version']}]" in (PKG / "CHANGELOG.md").read_text()
    assert "Apache License" in (PKG / "LICENSE.md").read_text() and pkg["license"] == "Apache-2.0"
    assert (PKG / "Documentation~" / "index.md").is_file()


def test_every_type_and_member_the_docs_name_exists():
    sources = "\n".join(p.read_text() for p in (PKG / "Runtime").rglob("*.cs"))
    sources += "\n".join(p.read_text() for p in (PKG / "Samples~").rglob("*.cs"))
    sources += "\n".join(p.read_text() for p in (PKG / "Editor").rglob("*.cs"))
    declared = set(re.findall(r"\b(?:class|struct|enum|interface)\s+(\w+)", sources))
    doc = (PKG / "Documentation~" / "index.md").read_text()
    named = {(a, b) for a, b in re.findall(r"`([A-Z]\w+)(?:\.(\w+))?(?:\([^`]*\))?`", doc) if not re.fullmatch(r"[A-Z_]+", a)}
    assert len(named) > 20
    external = {("GrpcWebHandler", ""), ("Google", "Protobuf"),  # types of other libraries the docs point to
                ("StartCoroutine", "")}  # Unity's own MonoBehaviour method (tests/csharp/reference/UnityEngine.cs)
    missing = []
    for first, member in named - external:
        if member == "dll":  # a precompiled assembly of another library
            continue
        if member:  # Type.Member
            if first not in declared or not re.search(rf"\b{member}\b", sources):
                missing.append(f"{first}.{member}")
        elif first not in declared and not re.search(rf"\b{first}\b", sources):  # a type, or a member named alone
            missing.append(first)
    assert not missing, missing
    assemblies = {json.loads(p.read_text())["name"] for p in PKG.rglob("*.asmdef")}
    named_asm = set(re.findall(r"`(Neeko\.Npc\.\w+)`", doc))
    assert named_asm and named_asm <= assemblies, named_asm - assemblies
    for menu in re.findall(r"Assets > Create > ([^,`]+?) > (\w+)", doc):
        assert f'menuName = "{menu[0]}/{menu[1]}"' in sources, menu
    # the fields the guide's steps tell a designer to set exist on the components
    steps = doc[doc.index("## From an empty project"):doc.index("## API")]
    unity = "\n".join(p.read_text() for p in (PKG / "Runtime" / "Unity").glob("*.cs"))
    role_ids = {p.stem for p in (ROOT / "assets" / "roles").glob("*.nrole")}
    fields = set(re.findall(r"(?<!to )`([a-z]\w*)`", steps)) - role_ids  # "set `x` to `value`": x is a field
    assert {"npcId", "editorCommand", "editorArguments", "prepareOnApproach"} <= fields
    for f in fields:
        assert re.search(rf"public [\w<>\[\]]+ {f}\b", unity), f
