// Reference declarations, for tests/test_unity_compile.py only (never shipped, never run): the part of Unity's
// editor API (2021.3 and later) that the package's Editor assembly calls, with Unity's namespaces, names and
// signatures. Bodies throw. This is not Unity.
using System;
using System.Collections.Generic;
using UnityEngine;

namespace UnityEditor
{
    public enum SettingsScope { User = 0, Project = 1 }

    public class SettingsProvider
    {
        public SettingsProvider(string path, SettingsScope scopes, IEnumerable<string> keywords = null) { }
        public string label { get { throw null; } set { } }
        public Action<string> guiHandler { get { throw null; } set { } }
        public IEnumerable<string> keywords { get { throw null; } set { } }
    }

    [AttributeUsage(AttributeTargets.Method)]
    public sealed class SettingsProviderAttribute : Attribute { }

    public sealed class SettingsService
    {
        public static void RepaintAllSettingsWindow() { throw null; }
    }

    public sealed class AssetDatabase
    {
        public static T LoadAssetAtPath<T>(string assetPath) where T : UnityEngine.Object { throw null; }
        public static void CreateAsset(UnityEngine.Object asset, string path) { throw null; }
        public static bool IsValidFolder(string path) { throw null; }
        public static string CreateFolder(string parentFolder, string newFolderName) { throw null; }
        public static void SaveAssets() { throw null; }
    }

    public sealed class EditorApplication
    {
        public static bool isPlaying { get { throw null; } set { } }
    }

    public enum MessageType { None = 0, Info = 1, Warning = 2, Error = 3 }

    public class SerializedProperty
    {
        public bool NextVisible(bool enterChildren) { throw null; }
    }

    public class SerializedObject : IDisposable
    {
        public SerializedObject(UnityEngine.Object obj) { }
        public SerializedProperty GetIterator() { throw null; }
        public bool ApplyModifiedProperties() { throw null; }
        public void Dispose() { }
    }

    public class EditorGUI
    {
        public struct DisabledScope : IDisposable
        {
            public DisabledScope(bool disabled) { throw null; }
            public void Dispose() { }
        }
    }

    public class EditorGUILayout
    {
        public static void HelpBox(string message, MessageType type) { throw null; }
        public static void LabelField(string label, params GUILayoutOption[] options) { throw null; }
        public static void LabelField(string label, string label2, params GUILayoutOption[] options) { throw null; }
        public static bool PropertyField(SerializedProperty property, bool includeChildren, params GUILayoutOption[] options) { throw null; }
        public static void Space() { throw null; }
    }
}

namespace UnityEditor.Build
{
    public interface IOrderedCallback
    {
        int callbackOrder { get; }
    }

    // As in Unity 2021.3, where OnBeforeRun and OnAfterRun are still members (the package implements all three).
    public interface IUnityLinkerProcessor : IOrderedCallback
    {
        string GenerateAdditionalLinkXmlFile(Reporting.BuildReport report, UnityLinker.UnityLinkerBuildPipelineData data);
        void OnBeforeRun(Reporting.BuildReport report, UnityLinker.UnityLinkerBuildPipelineData data);
        void OnAfterRun(Reporting.BuildReport report, UnityLinker.UnityLinkerBuildPipelineData data);
    }
}

namespace UnityEditor.Build.Reporting
{
    public sealed class BuildReport : UnityEngine.Object { }
}

namespace UnityEditor.UnityLinker
{
    public sealed class UnityLinkerBuildPipelineData
    {
        public string inputDirectory { get { throw null; } }
    }
}
