using UnityEngine;
using UnityEngine.Serialization;

namespace Neeko.Npc.Unity
{
    /// <summary>
    /// Connection settings. Create one with Assets > Create > Neeko NPC > Settings and save it as
    /// Assets/Resources/NeekoSettings.asset: the package then connects at start-up.
    /// </summary>
    [CreateAssetMenu(menuName = "Neeko NPC/Settings", fileName = "NeekoSettings")]
    public sealed class NeekoSettings : ScriptableObject
    {
        [Header("Server")]
        [Tooltip("Start the server with the game and stop it on quit: the bundle in StreamingAssets/<serverFolder> in a build, editorCommand in the Editor. Off: connect to address")]
        public bool startServer = true;
        [Tooltip("The folder `neeko-npc bundle --out` made, copied under Assets/StreamingAssets")]
        public string serverFolder = "neeko-npc-server";
        [Tooltip("Editor only: the program that starts a server (e.g. neeko-npc); empty: the bundle in StreamingAssets")]
        public string editorCommand = "";
        [Tooltip("Editor only: its arguments, e.g. serve --roles /path/to/roles")]
        public string editorArguments = "serve";
        [Tooltip("Extra flags for the server, e.g. --threads 2 --pool-size 2 (the server's default threads: half the cores, leaving the rest to the game)")]
        public string serverArguments = "";
        [Tooltip("Seconds the server may take to load before it counts as failed")]
        public float readyTimeoutSeconds = 120f;
        [Header("Connection")]
        [Tooltip("host:port of a server you start yourself (startServer off)")] public string address = "127.0.0.1:50051";
        [Tooltip("Bearer token of a server you start yourself; a started server gets a new one each time")] public string token = "";
        [Tooltip("Seconds a line may wait for its first words before it fails with DEADLINE_EXCEEDED")]
        [FormerlySerializedAs("timeoutSeconds")] public float firstChunkTimeoutSeconds = 30f;
        [Tooltip("Seconds a streaming line may go silent before it fails with DEADLINE_EXCEEDED; a line that keeps streaming is never cut")]
        public float idleTimeoutSeconds = 10f;
        [Tooltip("Connect with TLS (the daemon runs with --tls-cert/--tls-key)")] public bool useTls;
        [Tooltip("PEM root certificate for a self-signed daemon (TLS only)")] public TextAsset rootCertificate;
        [Tooltip("What a second Say to a speaking NPC does")] public SayPolicy sayPolicy = SayPolicy.Interrupt;
        [Tooltip("Tries when the daemon is down or busy")] public int maxAttempts = 4;
        [Tooltip("Conversation id for the daemon's memory; empty: a new id per play session")] public string sessionId = "";
    }
}
