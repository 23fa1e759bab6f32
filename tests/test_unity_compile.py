"""Every C# file of the Unity package compiles: the gRPC transport, the Unity components, the Editor assembly and
the samples, each built with mcs the way its asmdef tells Unity to build it.

There is no Unity editor and no NuGet here. The assemblies these files call (UnityEngine, UnityEditor,
Google.Protobuf, Grpc.Core.Api, Grpc.Net.Client, YetAnotherHttpHandler) are stood in for by reference
declarations under tests/csharp/reference: exactly the members the package calls, with the real names and
signatures, bodies that throw, each compiled to the real assembly name. So a typo, a wrong signature or an
asmdef that names an assembly no install provides fails here. **This is not Unity**: serialization, the
Inspector, Play Mode, the UnityNuGet install and an IL2CPP build still need an editor.
"""

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.test_unity_client import tool

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "unity_client"
REFERENCE = ROOT / "tests" / "csharp" / "reference"
MONO_LIB = Path("/usr/lib/mono/4.5")

# The reference declarations, each as the assembly the real package ships, and what it needs.
DECLARED = {
    "Google.Protobuf": ("Google.Protobuf.cs", []),
    "Grpc.Core.Api": ("Grpc.Core.Api.cs", []),
    "Grpc.Net.Client": ("Grpc.Net.Client.cs", ["Grpc.Core.Api", "System.Net.Http"]),
    "Cysharp.Net.Http.YetAnotherHttpHandler": ("YetAnotherHttpHandler.cs", ["System.Net.Http"]),
    "UnityEngine": ("UnityEngine.cs", []),
    "UnityEditor": ("UnityEditor.cs", ["UnityEngine"]),
}
# grpc-dotnet ships Grpc.Net.Common too; nothing in the package calls it directly, so an empty stand-in will do.
EMPTY = ["Grpc.Net.Common"]


def mcs(out: Path, sources, refs, defines=(), strict: bool = True) -> subprocess.CompletedProcess:
    """strict: warnings are errors (the package's own code); a doc's snippet may leave a variable unused."""
    return subprocess.run([tool("mcs"), "-langversion:7", *(["-warnaserror"] if strict else []), "-nowarn:1591", "-target:library",
                           f"-out:{out}", *(f"-r:{r}" for r in refs), *(f"-define:{d}" for d in defines),
                           *map(str, sources)], capture_output=True, text=True)


def built(res: subprocess.CompletedProcess, what: str):
    assert res.returncode == 0, f"{what} does not compile:\n{res.stdout}{res.stderr}"


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> dict:
    """assembly name -> DLL: the reference declarations and mono's own System.Net.Http."""
    out = tmp_path_factory.mktemp("reference")
    dlls = {"System.Net.Http": MONO_LIB / "System.Net.Http.dll"}
    assert dlls["System.Net.Http"].is_file(), "install libmono-system-net-http4.0-cil (scripts/setup.sh does)"
    for name, (source, needs) in DECLARED.items():
        dlls[name] = out / f"{name}.dll"
        built(mcs(dlls[name], [REFERENCE / source], [dlls[n] for n in needs]), f"reference {source}")
    for name in EMPTY:
        (out / f"{name}.cs").write_text("// stands in for an assembly the package references but never calls\n")
        dlls[name] = out / f"{name}.dll"
        built(mcs(dlls[name], [out / f"{name}.cs"], []), name)
    return dlls


def asmdef(folder: str) -> dict:
    (found,) = (PKG / folder).glob("*.asmdef")
    return json.loads(found.read_text())


def sources(folder: str) -> list:
    return sorted((PKG / folder).rglob("*.cs"))


def version_symbols(a: dict) -> list:
    return [v["define"] for v in a["versionDefines"]]


def build_package(refs: dict, out: Path, grpc: bool) -> dict:
    """Build the package's assemblies in order, each with the references its asmdef names, as Unity would with
    the gRPC packages installed (their versionDefines symbols defined) or without them (the Grpc assembly left
    out by its defineConstraints)."""
    dlls = dict(refs)
    order = [("Runtime/Core", []), ("Runtime/Grpc", []), ("Runtime/Unity", ["UnityEngine"]),
             ("Editor", ["UnityEngine", "UnityEditor"])]
    for folder, engine in order:
        a = asmdef(folder)
        defines = version_symbols(a) if grpc else []
        if not set(a["defineConstraints"]) <= set(defines):
            continue  # Unity does not compile it; assemblies referring to it are built without it
        names = list(a["references"]) + [p[: -len(".dll")] for p in a["precompiledReferences"]]
        missing = [n for n in names if n not in dlls and (grpc or not n.startswith("Neeko.Npc.Grpc"))]
        assert not missing, f"{folder}'s asmdef names assemblies that no install provides: {missing}"
        use = [dlls[n] for n in names if n in dlls] + [dlls[n] for n in engine] + (
            [refs["System.Net.Http"]] if folder == "Runtime/Grpc" else [])
        dlls[a["name"]] = out / f"{a['name']}.dll"
        built(mcs(dlls[a["name"]], sources(folder), use, defines), f"{a['name']} ({'with' if grpc else 'without'} gRPC)")
    return dlls


def test_with_grpc_installed_every_assembly_and_sample_compiles(refs, tmp_path):
    dlls = build_package(refs, tmp_path, grpc=True)
    assert {"Neeko.Npc.Core", "Neeko.Npc.Grpc", "Neeko.Npc.Unity", "Neeko.Npc.Editor"} <= set(dlls)
    samples = sorted((PKG / "Samples~").rglob("*.cs"))
    assert len(samples) >= 2
    built(mcs(tmp_path / "Samples.dll", samples, [dlls[n] for n in ("UnityEngine", "Neeko.Npc.Core", "Neeko.Npc.Unity")]),
          "the samples")


def test_without_grpc_the_grpc_assembly_is_left_out_and_the_rest_compiles(refs, tmp_path):
    dlls = build_package(refs, tmp_path, grpc=False)
    assert "Neeko.Npc.Grpc" not in dlls and {"Neeko.Npc.Unity", "Neeko.Npc.Editor"} <= set(dlls)


def test_without_grpc_the_game_is_told_which_packages_to_add(refs, tmp_path):
    """The Unity assembly built without gRPC runs (mono) and names both missing packages instead of failing to
    compile."""
    dlls = build_package(refs, tmp_path, grpc=False)  # the package's DLLs land in tmp_path, beside the probe
    program = tmp_path / "Probe.cs"
    program.write_text(
        "public static class Probe { public static int Main() {\n"
        "  try { Neeko.Npc.Unity.NeekoTransports.Create(\"127.0.0.1:1\", \"\"); return 1; }\n"
        "  catch (System.InvalidOperationException e) { System.Console.WriteLine(e.Message); return 0; } } }\n")
    exe = tmp_path / "Probe.exe"
    res = subprocess.run([tool("mcs"), "-langversion:7", f"-out:{exe}", f"-r:{dlls['Neeko.Npc.Unity']}",
                          f"-r:{dlls['Neeko.Npc.Core']}", str(program)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    shutil.copy(dlls["UnityEngine"], tmp_path)
    run = subprocess.run([tool("mono"), str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "com.cysharp.yetanotherhttphandler" in run.stdout and "org.nuget.grpc.net.client" in run.stdout


def test_the_asmdefs_tie_the_grpc_assembly_to_its_packages():
    grpc, unity = asmdef("Runtime/Grpc"), asmdef("Runtime/Unity")
    # YetAnotherHttpHandler comes as source with its own asmdef: a reference by assembly name, not a DLL
    assert "Cysharp.Net.Http.YetAnotherHttpHandler" in grpc["references"]
    assert not any("YetAnother" in p for p in grpc["precompiledReferences"])
    assert "Grpc.Core.dll" not in grpc["precompiledReferences"]  # the deprecated C-core gRPC is not used
    packages = {v["name"]: v["define"] for v in grpc["versionDefines"]}
    assert packages == {"com.cysharp.yetanotherhttphandler": "NEEKO_NPC_HAS_YAHH",
                        "org.nuget.grpc.net.client": "NEEKO_NPC_HAS_GRPC_NET"}
    assert sorted(grpc["defineConstraints"]) == sorted(packages.values())
    assert unity["versionDefines"] == grpc["versionDefines"]  # the factory sees what the constraint saw
    factory = (PKG / "Runtime/Unity/NeekoTransports.cs").read_text()
    assert "#if NEEKO_NPC_HAS_YAHH && NEEKO_NPC_HAS_GRPC_NET" in factory
    # and only the factory names the gRPC transport: every other Unity file compiles without it
    for cs in sources("Runtime/Unity") + sources("Editor"):
        if cs.name != "NeekoTransports.cs":
            assert "GrpcDialogueTransport" not in cs.read_text() and "Neeko.Npc.Grpc" not in cs.read_text(), cs.name


def test_a_wrong_call_fails_the_compile(refs, tmp_path):
    """The check can fire: a sample that calls a member Unity does not have, or passes the wrong type, does not
    compile against the declarations."""
    dlls = build_package(refs, tmp_path, grpc=True)
    sample = (PKG / "Samples~/TalkingNpc/TalkingNpc.cs").read_text()
    use = [dlls[n] for n in ("UnityEngine", "Neeko.Npc.Core", "Neeko.Npc.Unity")]
    for wrong in (sample.replace("GUILayout.Button(", "GUILayout.Buton("),
                  sample.replace("GUILayout.TextField(_input)", "GUILayout.TextField(42)"),
                  re.sub(r"_voice\.Say\(_input\)", "_voice.Say(_input, 7)", sample)):
        assert wrong != sample
        (tmp_path / "Wrong.cs").write_text(wrong)
        res = mcs(tmp_path / "Wrong.dll", [tmp_path / "Wrong.cs"], use)
        assert res.returncode != 0 and "error CS" in res.stdout + res.stderr


GUIDES = [PKG / "Documentation~" / "index.md", ROOT / "docs" / "unity.md", ROOT / "README.md"]
# What a game's own script has around a snippet: its usings, and the objects the snippets talk to (a subtitle
# box, an Animator, a shop, speech bubbles, an NpcVoice, the scene). The snippets themselves are pasted as written.
SNIPPET_CLASS = """using System; using System.Collections; using System.Collections.Generic; using System.IO;
using System.Threading.Tasks; using UnityEngine; using Neeko.Npc; using Neeko.Npc.Unity;
{usings}
public class Caption {{ public string text; public void Show() {{ }} }}
public class Shop {{ public void Open() {{ }} }}
public class Snippet{n} : MonoBehaviour
{{
    Caption subtitle = new Caption(); Animator animator; Shop shop = new Shop(); NpcVoice voice;
    Dictionary<string, Caption> bubbleOf = new Dictionary<string, Caption>();
    SceneData scene = new SceneData();
{members}
    async Task Run()
    {{
{body}
    }}
}}
"""


def csharp_snippets(doc: str) -> list[str]:
    return [textwrap.dedent(b) for b in re.findall(r"```csharp\n(.*?)```", doc, re.S)]


def snippet_source(code: str, n: int) -> str:
    """A snippet as a game script holds it: its usings on top, a method it declares as a member, anything else
    as the body of an async method."""
    usings = [ln for ln in code.splitlines() if ln.startswith("using ")]
    rest = "\n".join(ln for ln in code.splitlines() if not ln.startswith("using "))
    member = re.match(r"(\s*//[^\n]*\n)*\s*(void|IEnumerator)\b", rest)
    return SNIPPET_CLASS.format(usings="\n".join(usings), n=n, members=rest if member else "",
                                body="" if member else rest)


def test_the_guides_csharp_compiles_as_written(refs, tmp_path):
    """Every C# snippet of the Unity guide, docs/unity.md and the README, pasted into a game's MonoBehaviour,
    compiles against the package and the reference declarations (not Unity: see the module's docstring)."""
    dlls = build_package(refs, tmp_path, grpc=True)
    use = [dlls[n] for n in ("UnityEngine", "Neeko.Npc.Core", "Neeko.Npc.Unity")]
    snippets = [(g.relative_to(ROOT), c) for g in GUIDES for c in csharp_snippets(g.read_text())]
    assert len(snippets) >= 9
    failed = []
    for n, (where, code) in enumerate(snippets):
        src = tmp_path / f"Snippet{n}.cs"
        src.write_text(snippet_source(code, n))
        res = mcs(tmp_path / f"Snippet{n}.dll", [src], use, strict=False)
        if res.returncode != 0:
            failed.append(f"{where}, snippet {n}:\n{code}\n{res.stdout}{res.stderr}")
    assert not failed, "\n\n".join(failed)
    # the check can fire: a misspelt member in a snippet does not compile
    wrong = snippets[0][1].replace("WaitUntilReadyAsync", "WaitUntilReady")
    (tmp_path / "Wrong.cs").write_text(snippet_source(wrong, 99))
    assert mcs(tmp_path / "Wrong.dll", [tmp_path / "Wrong.cs"], use, strict=False).returncode != 0
