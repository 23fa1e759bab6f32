// Plain data types of the dialogue API. No UnityEngine and no protobuf here: the core compiles and is
// tested with mono outside Unity; the gRPC transport maps these to the generated messages.
using System;
using System.Collections.Generic;

namespace Neeko.Npc
{
    public enum FinishReason { Unspecified = 0, Stop = 1, Length = 2, Cancelled = 3 }

    /// <summary>How a line's prompt was served: on a context that held it (Hot), from a kept state (Snapshot), or read whole (Cold).</summary>
    public enum PromptCache { Unspecified = 0, Hot = 1, Snapshot = 2, Cold = 3 }

    public enum DialogueState { Pending, Streaming, Done, Failed, Cancelled }

    /// <summary>What a second Say to an NPC that is still speaking does.</summary>
    public enum SayPolicy
    {
        /// <summary>Cancel the line in progress and start the new one at once (the default).</summary>
        Interrupt,
        /// <summary>Start the new line when the current one has finished.</summary>
        Queue,
    }

    /// <summary>Where and when the NPC speaks. Mirrors neeko_npc.v1.SceneContext.</summary>
    public sealed class SceneData
    {
        public string Location = "";
        public string TimeOfDay = "";
        public string Weather = "";
        public string NpcMood = "";
        public string NpcActivity = "";
        public string PlayerName = "";
        public string PlayerStanding = "";
        public List<string> RecentEvents = new List<string>();
        public List<string> NearbyCharacters = new List<string>();
        public Dictionary<string, string> Facts = new Dictionary<string, string>();
    }

    /// <summary>Generation options; null or 0 means the daemon's default.</summary>
    public sealed class GenerationSettings
    {
        public int MaxTokens;
        public float? Temperature;
        public float? TopP;
        public uint? Seed;
        public List<string> Stop = new List<string>();
        /// <summary>Contrastive decoding, 0 to 4: how far the NPC's own voice is pushed from the base model's
        /// (0 is off; each token then costs two decodes). Null: the server's <c>--contrast</c>, else the NPC's own
        /// (chosen by its bake's voice check, where it had one), else 0.</summary>
        public float? Contrast;
    }

    /// <summary>
    /// An NPC with no role file, e.g. a generated villager: who it is, and its voice as a mix of roles the
    /// daemon hosts (<c>Blend["innkeeper"] = 0.7f; Blend["merchant"] = 0.3f;</c>). Mirrors SayRequest.profile
    /// and SayRequest.blend. The daemon normalises the weights and answers INVALID_ARGUMENT for unknown roles
    /// or more roles than its --max-blend.
    /// </summary>
    public sealed class ProceduralNpc
    {
        public string Name = "";
        public string Persona = "";
        public string Style = "";
        public string Knowledge = "";
        public List<string> ExampleLines = new List<string>();
        /// <summary>Hosted role id -> weight (finite, not negative, at least one positive).</summary>
        public Dictionary<string, float> Blend = new Dictionary<string, float>();

        /// <summary>Throws ArgumentException for what the daemon would refuse anyway, before any request is sent.</summary>
        public void Validate()
        {
            if (string.IsNullOrEmpty(Name) || string.IsNullOrEmpty(Persona))
                throw new ArgumentException("a procedural NPC needs a Name and a Persona");
            if (Blend == null || Blend.Count == 0)
                throw new ArgumentException("a procedural NPC needs a Blend: at least one hosted role id and its weight");
            float sum = 0;
            foreach (var kv in Blend)
            {
                if (string.IsNullOrEmpty(kv.Key)) throw new ArgumentException("a Blend entry has an empty role id");
                if (float.IsNaN(kv.Value) || float.IsInfinity(kv.Value) || kv.Value < 0)
                    throw new ArgumentException("the Blend weight of '" + kv.Key + "' must be finite and not negative");
                sum += kv.Value;
            }
            if (!(sum > 0)) throw new ArgumentException("the Blend weights sum to 0; give a role a positive weight");
        }
    }

    /// <summary>The emotions a line's beat may be (DialogueClient.Say's beats): the daemon's fixed set, in order.</summary>
    public static class Emotions
    {
        public static readonly string[] All = { "neutral", "happy", "sad", "angry", "afraid", "surprised", "disgusted" };
    }

    /// <summary>An action the game offers in a scene: an id the game acts on, and what it means for the NPC.</summary>
    public sealed class ActionOption
    {
        public string Id = "";
        public string Description = "";
        public ActionOption() { }
        public ActionOption(string id, string description = "") { Id = id; Description = description; }
    }

    /// <summary>
    /// Ask for a line's beat: an emotion (Emotion, or a narrower Emotions list) and one of the Actions on offer.
    /// The daemon picks exactly one of them under the NPC's own block; the line itself is unchanged.
    /// </summary>
    public sealed class BeatRequestData
    {
        public bool Emotion;
        /// <summary>Narrow the emotions (implies Emotion); empty: all of Emotions.All.</summary>
        public List<string> Emotions = new List<string>();
        /// <summary>The actions on offer; declare "none" when doing nothing is a choice. Empty: no action.</summary>
        public List<ActionOption> Actions = new List<ActionOption>();
        public bool Asks { get { return Emotion || Emotions.Count > 0 || Actions.Count > 0; } }
    }

    /// <summary>A beat the daemon chose: always one of the candidates asked, with its probability and every candidate's.</summary>
    public sealed class BeatChoice
    {
        public string Id = "";
        public float Probability;
        public Dictionary<string, float> Probabilities = new Dictionary<string, float>();
    }

    public sealed class SayRequestData
    {
        public string NpcId = "";
        public string SessionId = "";
        public string PlayerLine = "";
        public SceneData Scene = new SceneData();
        public GenerationSettings Options = new GenerationSettings();
        /// <summary>Null for a hosted role; set for an NPC with no role file (NpcId then only keys its memory).</summary>
        public ProceduralNpc Procedural;
        /// <summary>Null: no beat. Set: the last chunk carries the line's emotion and action.</summary>
        public BeatRequestData Beats;
    }

    /// <summary>One streamed piece of a reply. Only the last chunk has Done set and carries the stats.</summary>
    public sealed class DialogueChunk
    {
        public string Text = "";
        public bool Done;
        public FinishReason FinishReason;
        public int PromptTokens;
        public int CompletionTokens;
        public int CachedPromptTokens;
        public PromptCache PromptCache;
        public float TimeToFirstTokenMs;
        /// <summary>The blocks that spoke and their weights (a procedural NPC's blend as the daemon resolved it).</summary>
        public Dictionary<string, float> RoleWeights = new Dictionary<string, float>();
        /// <summary>On the last chunk, when the request asked for beats; else null.</summary>
        public BeatChoice Emotion;
        public BeatChoice Action;
    }

    /// <summary>A finished line.</summary>
    public sealed class DialogueResult
    {
        public string NpcId = "";
        public string Text = "";
        public FinishReason FinishReason;
        public int PromptTokens;
        public int CompletionTokens;
        public float TimeToFirstTokenMs;
        public Dictionary<string, float> RoleWeights = new Dictionary<string, float>();
        /// <summary>The line's beat when it was asked for; else null.</summary>
        public BeatChoice Emotion;
        public BeatChoice Action;
    }

    /// <summary>A failed request. Status is the gRPC status name (NOT_FOUND, UNAVAILABLE, ...).</summary>
    public sealed class DialogueException : Exception
    {
        public readonly string Status;
        /// <summary>True when retrying may help (the daemon is down or busy), false for bad requests.</summary>
        public readonly bool Transient;

        public DialogueException(string status, string message, bool transient, Exception inner = null)
            : base(status + ": " + message, inner)
        {
            Status = status;
            Transient = transient;
        }
    }

    /// <summary>A reply being received. NextAsync returns null after the last chunk.</summary>
    public interface IChunkStream : IDisposable
    {
        System.Threading.Tasks.Task<DialogueChunk> NextAsync(System.Threading.CancellationToken cancellation);
    }

    /// <summary>One exchange the daemon remembers: what the player said and what the NPC answered.</summary>
    [Serializable]
    public sealed class SavedExchange
    {
        public string PlayerLine = "";
        public string NpcLine = "";
    }

    /// <summary>One NPC's remembered exchanges in a session, oldest first.</summary>
    [Serializable]
    public sealed class SavedNpcMemory
    {
        public string NpcId = "";
        public List<SavedExchange> Exchanges = new List<SavedExchange>();
    }

    /// <summary>
    /// A session's conversation memory, every NPC's, as plain serialisable data (public fields and lists only,
    /// so Unity's JsonUtility writes it into a save file). Mirrors neeko_npc.v1.SessionMemory.
    /// </summary>
    [Serializable]
    public sealed class SavedSession
    {
        public string SessionId = "";
        public List<SavedNpcMemory> Npcs = new List<SavedNpcMemory>();
    }

    /// <summary>A transport that can read and restore a session's memory (GrpcDialogueTransport can).</summary>
    public interface ISessionStore
    {
        System.Threading.Tasks.Task<SavedSession> GetSessionAsync(string sessionId, System.Threading.CancellationToken cancellation);
        /// <summary>Replaces what the daemon holds for the session; returns the exchanges restored.</summary>
        System.Threading.Tasks.Task<int> RestoreSessionAsync(SavedSession session, System.Threading.CancellationToken cancellation);
    }

    /// <summary>
    /// What Prepare did: the daemon read the NPC's prompt up to the player's line (profile, scene, this session's
    /// memory), so the line that follows starts like a follow-up. Prepare is a hint: when it could not be done,
    /// Skipped says why and nothing else happens.
    /// </summary>
    public sealed class PrepareResult
    {
        public string NpcId = "";
        /// <summary>The prompt's tokens before the player's line, and how many were read now (the rest were cached).</summary>
        public int PromptTokens;
        public int ReadTokens;
        public PromptCache PromptCache;
        public float ElapsedMs;
        /// <summary>Empty when the prompt was read; else why not (every context busy, the daemon down, a bad request).</summary>
        public string Skipped = "";
        public bool Prepared { get { return string.IsNullOrEmpty(Skipped); } }
    }

    /// <summary>A transport that can ask the daemon to read an NPC's prompt ahead of a line (GrpcDialogueTransport can).</summary>
    public interface IPromptPreparer
    {
        /// <summary>The request the game is about to send (its PlayerLine and Options are ignored).</summary>
        System.Threading.Tasks.Task<PrepareResult> PrepareAsync(SayRequestData request, System.Threading.CancellationToken cancellation);
    }

    /// <summary>A transport that can tell whether the daemon serves lines yet (GrpcDialogueTransport asks ListRoles,
    /// which answers UNAVAILABLE while the model loads).</summary>
    public interface IReadinessProbe
    {
        /// <summary>True once the daemon serves; false while it loads or cannot be reached (never thrown for those).</summary>
        System.Threading.Tasks.Task<bool> IsServingAsync(System.Threading.CancellationToken cancellation);
    }

    /// <summary>One role the daemon hosts, as ListRoles names it.</summary>
    public sealed class RoleSummary
    {
        public string Id;
        public string Name;
        /// <summary>"block" (a trained NPC, its own block) or "fusion" (a mix of others).</summary>
        public string Kind;
    }

    /// <summary>A transport that can list the roles the daemon hosts (GrpcDialogueTransport asks ListRoles; the
    /// Project Settings page shows them).</summary>
    public interface IRoleCatalog
    {
        System.Threading.Tasks.Task<System.Collections.Generic.IList<RoleSummary>> ListRolesAsync(System.Threading.CancellationToken cancellation);
    }

    /// <summary>How requests reach the daemon: gRPC in a game, a fake or a recording in tests.</summary>
    public interface IDialogueTransport
    {
        /// <summary>Start a Say call. Failures surface as DialogueException from Open or NextAsync.</summary>
        IChunkStream Open(SayRequestData request, System.Threading.CancellationToken cancellation);
    }

    /// <summary>Who speaks next in a conversation among NPCs.</summary>
    public enum TurnOrder
    {
        /// <summary>Each NPC in the order named.</summary>
        RoundRobin = 0,
        /// <summary>The NPC the last line named (by name or id); round robin when it named none.</summary>
        NamedLast = 1,
    }

    /// <summary>A conversation among 2 to 4 hosted NPCs (DialogueClient.Converse). Mirrors neeko_npc.v1.ConverseStart.</summary>
    public sealed class ConverseRequestData
    {
        public List<string> NpcIds = new List<string>();
        public SceneData Scene = new SceneData();
        public string Topic = "";
        /// <summary>The player's opening line; empty: the first NPC opens.</summary>
        public string OpeningLine = "";
        /// <summary>0: the daemon's default (6).</summary>
        public int Turns;
        public TurnOrder Order = TurnOrder.RoundRobin;
        /// <summary>For every turn; MaxTokens is per turn.</summary>
        public GenerationSettings Options = new GenerationSettings();
    }

    /// <summary>One streamed piece of a conversation: text of one NPC's turn, a turn's end, or the conversation's end.</summary>
    public sealed class ConverseChunk
    {
        public string NpcId = "";
        public int Turn;
        public string Text = "";
        public bool TurnDone;
        public FinishReason FinishReason;
        public int PromptTokens;
        public int CompletionTokens;
        public Dictionary<string, float> RoleWeights = new Dictionary<string, float>();
        /// <summary>On a turn's first chunk: what the player interjected before it.</summary>
        public string PlayerLine = "";
        public bool Done;
    }

    /// <summary>A finished turn: who spoke, what, and with which blocks.</summary>
    public sealed class ConversationTurn
    {
        public string NpcId = "";
        public int Turn;
        public string Text = "";
        public FinishReason FinishReason;
        public Dictionary<string, float> RoleWeights = new Dictionary<string, float>();
        /// <summary>What the player interjected just before this turn, if anything.</summary>
        public string PlayerLine = "";
    }

    /// <summary>A conversation being received; the player's interjections go the other way.</summary>
    public interface IConverseStream : IDisposable
    {
        /// <summary>The next chunk; null after the last.</summary>
        System.Threading.Tasks.Task<ConverseChunk> NextAsync(System.Threading.CancellationToken cancellation);
        /// <summary>Send a player line; the daemon takes it in before the next turn that starts after it arrives.</summary>
        System.Threading.Tasks.Task SendPlayerLineAsync(string line, System.Threading.CancellationToken cancellation);
    }

    /// <summary>A transport that can carry a Converse (GrpcDialogueTransport can).</summary>
    public interface IConversationTransport
    {
        IConverseStream OpenConversation(ConverseRequestData request, System.Threading.CancellationToken cancellation);
    }
}
