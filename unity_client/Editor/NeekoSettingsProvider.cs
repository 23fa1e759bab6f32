using System;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;
using Neeko.Npc.Unity;
using UnityEditor;
using UnityEngine;

namespace Neeko.Npc.Editor
{
    /// <summary>Project Settings > Neeko NPC: the settings asset, the server's state in Play Mode, "Test connection"
    /// and the roles the server hosts (ListRoles).</summary>
    static class NeekoSettingsProvider
    {
        const string AssetPath = "Assets/Resources/NeekoSettings.asset";
        static string _result = "";
        static IList<RoleSummary> _roles = new List<RoleSummary>();
        static bool _testing;

        [SettingsProvider]
        static SettingsProvider Create()
        {
            return new SettingsProvider("Project/Neeko NPC", SettingsScope.Project)
            {
                label = "Neeko NPC",
                guiHandler = search => Draw(),
                keywords = new HashSet<string>(new[] { "neeko", "npc", "dialogue", "server", "grpc" }),
            };
        }

        static void Draw()
        {
            if (NeekoTransports.Missing != null) EditorGUILayout.HelpBox(NeekoTransports.Missing, MessageType.Error);
            var settings = AssetDatabase.LoadAssetAtPath<NeekoSettings>(AssetPath);
            if (settings == null)
            {
                EditorGUILayout.HelpBox("No settings asset: the package connects at start-up from " + AssetPath + ".", MessageType.Info);
                if (GUILayout.Button("Create " + AssetPath))
                {
                    if (!AssetDatabase.IsValidFolder("Assets/Resources")) AssetDatabase.CreateFolder("Assets", "Resources");
                    AssetDatabase.CreateAsset(ScriptableObject.CreateInstance<NeekoSettings>(), AssetPath);
                    AssetDatabase.SaveAssets();
                }
                return;
            }
            var so = new SerializedObject(settings);
            var it = so.GetIterator();
            it.NextVisible(true);  // m_Script
            while (it.NextVisible(false)) EditorGUILayout.PropertyField(it, true);
            so.ApplyModifiedProperties();

            EditorGUILayout.Space();
            var runtime = NeekoRuntime.Current;
            if (!EditorApplication.isPlaying) EditorGUILayout.LabelField("Server", "starts in Play Mode" + (settings.startServer ? "" : " (startServer is off)"));
            else if (runtime == null) EditorGUILayout.LabelField("Server", "not running (see the Console)");
            else if (runtime.Server == null) EditorGUILayout.LabelField("Server", "not started by the game; connecting to " + settings.address);
            else
            {
                var s = runtime.Server;
                EditorGUILayout.LabelField("Server", s.State + " on " + s.Address + (s.ProcessId != 0 ? " (pid " + s.ProcessId + ")" : "")
                                                      + (s.Restarts > 0 ? ", " + s.Restarts + " restart(s)" : ""));
                if (!string.IsNullOrEmpty(s.LastError)) EditorGUILayout.HelpBox(s.LastError, MessageType.Warning);
            }
            EditorGUILayout.LabelField("Dialogue", Dialogue.IsReady ? "ready" : "not ready");

            using (new EditorGUI.DisabledScope(_testing || NeekoTransports.Missing != null))
            {
                if (GUILayout.Button("Test connection")) TestConnection(settings);
            }
            if (!string.IsNullOrEmpty(_result)) EditorGUILayout.HelpBox(_result, MessageType.None);
            foreach (var role in _roles) EditorGUILayout.LabelField(role.Id, role.Name + " (" + role.Kind + ")");
        }

        /// <summary>ListRoles against the running server (Play Mode) or settings.address, off the main thread.</summary>
        static async void TestConnection(NeekoSettings settings)
        {
            _testing = true;
            _result = "asking...";
            _roles = new List<RoleSummary>();
            var runtime = NeekoRuntime.Current;
            var server = runtime != null ? runtime.Server : null;
            var address = server != null ? server.Address : settings.address;
            var token = server != null ? server.Token : settings.token;
            try
            {
                var transport = NeekoTransports.Create(address, token);
                try
                {
                    var catalog = transport as IRoleCatalog;
                    using (var cancel = new CancellationTokenSource(TimeSpan.FromSeconds(5)))
                    {
                        var roles = await Task.Run(() => catalog.ListRolesAsync(cancel.Token));
                        _roles = roles;
                        _result = address + ": " + roles.Count + " role(s)";
                    }
                }
                finally
                {
                    var disposable = transport as IDisposable;
                    if (disposable != null) disposable.Dispose();
                }
            }
            catch (Exception e)
            {
                _result = address + ": " + e.Message;
            }
            finally
            {
                _testing = false;
                SettingsService.RepaintAllSettingsWindow();
            }
        }
    }
}
