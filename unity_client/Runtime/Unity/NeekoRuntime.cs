using System;
using Neeko.Npc.Grpc;
using UnityEngine;

namespace Neeko.Npc.Unity
{
    /// <summary>
    /// Connects Dialogue.Client at start-up from Resources/NeekoSettings and pumps its main-thread queue
    /// every frame, so OnText/OnDone/OnError run on Unity's main thread.
    /// </summary>
    [DefaultExecutionOrder(-1000)]
    public sealed class NeekoRuntime : MonoBehaviour
    {
        GrpcDialogueTransport _transport;
        DialogueClient _client;

        [RuntimeInitializeOnLoadMethod(RuntimeInitializeLoadType.BeforeSceneLoad)]
        static void Bootstrap()
        {
            var settings = Resources.Load<NeekoSettings>("NeekoSettings");
            if (settings == null)
            {
                Debug.LogWarning("[neeko-npc] no Resources/NeekoSettings asset; assign Dialogue.Client yourself or create one (Assets > Create > Neeko NPC > Settings)");
                return;
            }
            Connect(settings);
        }

        /// <summary>(Re)connect with the given settings; safe to call again after changing them.</summary>
        public static NeekoRuntime Connect(NeekoSettings settings)
        {
            var existing = FindObjectOfType<NeekoRuntime>();
            if (existing != null) Destroy(existing.gameObject);
            var go = new GameObject("Neeko NPC Runtime");
            DontDestroyOnLoad(go);
            go.hideFlags = HideFlags.HideInHierarchy;
            var runtime = go.AddComponent<NeekoRuntime>();
            var pem = settings.rootCertificate != null ? settings.rootCertificate.text : null;
            runtime._transport = new GrpcDialogueTransport(settings.address, settings.token, settings.useTls, pem);
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

        void Update()
        {
            if (_client != null) _client.MainThread.Pump();
        }

        void OnDestroy()
        {
            // Destroy is deferred: by now Connect may have installed a newer client, which must survive.
            if (_client != null)
            {
                _client.Dispose();
                if (Dialogue.Client == _client) Dialogue.Client = null;
            }
            if (_transport != null) _transport.Dispose();
        }
    }
}
