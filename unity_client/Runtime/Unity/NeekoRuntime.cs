using System;
using System.Collections.Generic;
using System.IO;
using UnityEngine;

namespace Neeko.Npc.Unity
{
    /// <summary>
    /// The package's runtime object, made at start-up from Resources/NeekoSettings. With startServer on, it starts
    /// the server (the bundle in StreamingAssets, or a command in the Editor) with this game's process id and a new
    /// token, and stops it when the game quits. It connects Dialogue.Client and pumps its main-thread queue every
    /// frame, so OnText/OnDone/OnError run on Unity's main thread. Lines asked for before the server is ready wait
    /// for it (DialogueClient.FirstChunkTimeout).
    /// </summary>
    [DefaultExecutionOrder(-1000)]
    public sealed class NeekoRuntime : MonoBehaviour
    {
        static NeekoRuntime _current;

        IDialogueTransport _transport;
        DialogueClient _client;
        NeekoServer _server;
        readonly Queue<string> _serverLog = new Queue<string>();

        /// <summary>The running instance, or null before start-up (or without a settings asset).</summary>
        public static NeekoRuntime Current { get { return _current; } }

        /// <summary>The server this runtime started, or null (startServer off).</summary>
        public NeekoServer Server { get { return _server; } }

        /// <summary>The server's last log lines (stderr), newest last; for the Project Settings page.</summary>
        public string[] ServerLog { get { lock (_serverLog) return _serverLog.ToArray(); } }

        [RuntimeInitializeOnLoadMethod(RuntimeInitializeLoadType.BeforeSceneLoad)]
        static void Bootstrap()
        {
            var settings = Resources.Load<NeekoSettings>("NeekoSettings");
            if (settings == null)
            {
                Debug.LogWarning("[neeko-npc] no Resources/NeekoSettings asset; create one (Assets > Create > Neeko NPC > Settings, " +
                                 "saved in Assets/Resources) or assign Dialogue.Client yourself");
                return;
            }
            Connect(settings);
        }

        /// <summary>(Re)connect with the given settings; safe to call again after changing them. Returns null, after
        /// one logged error, when the gRPC packages are missing or the server cannot be found.</summary>
        public static NeekoRuntime Connect(NeekoSettings settings)
        {
            if (settings == null) throw new ArgumentNullException("settings");
            if (_current != null) Destroy(_current.gameObject);
            _current = null;
            if (NeekoTransports.Missing != null)
            {
                Debug.LogError("[neeko-npc] " + NeekoTransports.Missing);
                return null;
            }
            NeekoServer server = null;
            string address = settings.address, token = settings.token;
            if (settings.startServer)
            {
                string problem;
                var launch = LaunchFor(settings, out problem);
                if (launch == null)
                {
                    Debug.LogError("[neeko-npc] cannot start the server: " + problem);
                    return null;
                }
                server = new NeekoServer(launch);
                address = "127.0.0.1:" + launch.Port;
                token = server.Token;
            }
            var go = new GameObject("Neeko NPC Runtime");
            DontDestroyOnLoad(go);
            go.hideFlags = HideFlags.HideInHierarchy;
            var runtime = go.AddComponent<NeekoRuntime>();
            _current = runtime;
            if (server != null)
            {
                runtime._server = server;
                server.Log += runtime.KeepLog;
                server.StateChanged += state => runtime.OnServerState(state);
                server.Start();
            }
            var pem = settings.rootCertificate != null ? settings.rootCertificate.text : null;
            runtime._transport = NeekoTransports.Create(address, token, settings.useTls && server == null, pem);
            var client = new DialogueClient(runtime._transport, new MainThreadQueue(), new RetryPolicy { MaxAttempts = Math.Max(1, settings.maxAttempts) })
            {
                DefaultPolicy = settings.sayPolicy,
                FirstChunkTimeout = TimeSpan.FromSeconds(Math.Max(1f, settings.firstChunkTimeoutSeconds)),
                IdleTimeout = TimeSpan.FromSeconds(Math.Max(1f, settings.idleTimeoutSeconds)),
                SessionId = string.IsNullOrEmpty(settings.sessionId) ? Guid.NewGuid().ToString("N") : settings.sessionId,
            };
            client.MainThread.CallbackFailed += e => Debug.LogException(e);
            client.UnhandledLineError += (line, e) =>
                Debug.LogWarning("[neeko-npc] " + line.NpcId + ": " + e.Status + ": " + e.Message + " (subscribe to OnError to handle it)");
            runtime._client = client;
            Dialogue.Client = client;
            return runtime;
        }

        /// <summary>How to start the server with these settings, on a port chosen now; null with the reason when
        /// there is nothing to start.</summary>
        public static ServerLaunch LaunchFor(NeekoSettings settings, out string problem)
        {
            problem = null;
            var launch = new ServerLaunch
            {
                Port = NeekoServer.FreeLoopbackPort(),
                ReadyTimeout = TimeSpan.FromSeconds(Math.Max(1f, settings.readyTimeoutSeconds)),
            };
            if (Application.isEditor && !string.IsNullOrEmpty(settings.editorCommand))
            {
                launch.FileName = settings.editorCommand;
                launch.Arguments.AddRange(ServerLaunch.SplitArguments(settings.editorArguments));
                launch.Arguments.AddRange(ServerLaunch.SplitArguments(settings.serverArguments));
                return launch;
            }
            var folder = Path.Combine(Application.streamingAssetsPath, settings.serverFolder);
            var exe = Path.Combine(folder, ServerExecutable);
            if (!File.Exists(exe))
            {
                problem = exe + " does not exist. Build the server folder with `neeko-npc bundle --out " +
                          "Assets/StreamingAssets/" + settings.serverFolder + "`, or set NeekoSettings.editorCommand (Editor), " +
                          "or turn startServer off and run a server yourself";
                return null;
            }
            launch.FileName = exe;
            launch.WorkingDirectory = folder;
            launch.Arguments.AddRange(ServerLaunch.SplitArguments(settings.serverArguments));
            return launch;
        }

        /// <summary>The bundle's executable name on this platform.</summary>
        public static string ServerExecutable
        {
            get
            {
                var p = Application.platform;
                return p == RuntimePlatform.WindowsPlayer || p == RuntimePlatform.WindowsEditor ? "neeko-npc-server.exe" : "neeko-npc-server";
            }
        }

        void KeepLog(string line)
        {
            lock (_serverLog)
            {
                _serverLog.Enqueue(line);
                while (_serverLog.Count > 200) _serverLog.Dequeue();
            }
        }

        void OnServerState(ServerState state)
        {
            // a background thread: only thread-safe calls here (Debug.Log is)
            var server = _server;
            if (server == null) return;
            if (state == ServerState.Ready)
                Debug.Log("[neeko-npc] server ready on " + server.Address + " (pid " + server.ProcessId + ")");
            else if (state == ServerState.Restarting)
                Debug.LogWarning("[neeko-npc] the server stopped (" + server.LastError + "); starting it again");
            else if (state == ServerState.Failed)
                Debug.LogError("[neeko-npc] the server failed: " + server.LastError);
        }

        void Update()
        {
            if (_client != null) _client.MainThread.Pump();
        }

        void OnApplicationQuit() { Shutdown(); }

        void OnDestroy() { Shutdown(); }

        void Shutdown()
        {
            if (_current == this) _current = null;
            // Destroy is deferred: by now Connect may have installed a newer client, which must survive.
            if (_client != null)
            {
                _client.Dispose();
                if (Dialogue.Client == _client) Dialogue.Client = null;
                _client = null;
            }
            var disposable = _transport as IDisposable;
            if (disposable != null) disposable.Dispose();
            _transport = null;
            if (_server != null) _server.Dispose();  // the server is killed and waited for; none is left running
            _server = null;
        }
    }
}
