using System.IO;
using UnityEditor.Build;
using UnityEditor.Build.Reporting;
using UnityEditor.UnityLinker;

namespace Neeko.Npc.Editor
{
    /// <summary>Hands the package's Runtime/link.xml to IL2CPP's linker: Unity reads no link.xml inside a package
    /// by itself.</summary>
    sealed class NeekoLinker : IUnityLinkerProcessor
    {
        public int callbackOrder { get { return 0; } }

        public string GenerateAdditionalLinkXmlFile(BuildReport report, UnityLinkerBuildPipelineData data)
        {
            return Path.GetFullPath("Packages/com.neeko.npc/Runtime/link.xml");
        }

        // Part of the interface up to Unity 2021; plain methods (nothing to do) from 2022 on.
        public void OnBeforeRun(BuildReport report, UnityLinkerBuildPipelineData data) { }

        public void OnAfterRun(BuildReport report, UnityLinkerBuildPipelineData data) { }
    }
}
