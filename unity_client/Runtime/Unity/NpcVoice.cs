using System;
using System.Collections.Generic;
using System.Linq;
using UnityEngine;
using UnityEngine.Events;

namespace Neeko.Npc.Unity
{
    /// <summary>
    /// Put this on an NPC. It holds the NPC id, fills the scene context from the scene (location, time of
    /// day, the other NpcVoices nearby), applies the designer's overrides, and cancels its lines when the
    /// GameObject is destroyed. When the player enters its trigger collider it has the server read its prompt
    /// (Prepare), so the first line starts like a follow-up. Its UnityEvents are the hook for subtitles, speech
    /// and lip-sync.
    /// </summary>
    public sealed class NpcVoice : MonoBehaviour
    {
        /// <summary>A UnityEvent with one string (serializable in Unity 2021.3).</summary>
        [Serializable] public sealed class TextEvent : UnityEvent<string> { }

        static readonly List<NpcVoice> Active = new List<NpcVoice>();
        [Serializable]
        public struct Fact { public string key; public string value; }

        [Serializable]
        public struct BlendEntry { public string roleId; [Min(0)] public float weight; }

        /// <summary>The game's clock in hours [0, 24); set it from your day/night system. Null: the computer's clock.</summary>
        public static float? WorldHour;

        [Tooltip("The role id served by the daemon, e.g. blacksmith")] public string npcId = "";
        [Tooltip("Shown to other NPCs as a nearby character; empty: the GameObject's name")] public string displayName = "";
        [Header("Scene overrides (empty: observed from the scene)")]
        public string location = "";
        public string weather = "";
        public string mood = "";
        public string activity = "";
        public string playerName = "";
        public string playerStanding = "";
        public List<Fact> facts = new List<Fact>();
        [Tooltip("Other NpcVoices within this distance are listed as nearby characters")] public float nearbyRadius = 12f;

        [Header("Procedural NPC (no role file): fill a blend to use it")]
        [Tooltip("Hosted roles this NPC's voice mixes, e.g. innkeeper 0.7 and merchant 0.3; empty: npcId is a hosted role")]
        public List<BlendEntry> blend = new List<BlendEntry>();
        [Tooltip("The procedural NPC's name, as in a role profile")] public string characterName = "";
        [TextArea] public string persona = "";
        [TextArea] public string style = "";
        [TextArea] public string knowledge = "";

        [Header("Talking range")]
        [Tooltip("Prepare this NPC's prompt when a collider with playerTag enters this GameObject's trigger collider")]
        public bool prepareOnApproach = true;
        [Tooltip("The tag of the player's collider")] public string playerTag = "Player";

        [Header("Events (main thread), for subtitles, speech and lip-sync")]
        [Tooltip("The line so far, each time it grows")] public TextEvent onLine = new TextEvent();
        [Tooltip("Each finished sentence, once")] public TextEvent onSentence = new TextEvent();
        [Tooltip("The emotion's id, when the line asked for beats")] public TextEvent onEmotion = new TextEvent();
        [Tooltip("The chosen action's id, when the line offered actions")] public TextEvent onAction = new TextEvent();
        [Tooltip("The whole line, when it is done")] public TextEvent onLineDone = new TextEvent();

        readonly List<DialogueHandle> _lines = new List<DialogueHandle>();
        readonly List<string> _recentEvents = new List<string>();
        readonly SceneContextBuilder _builder = new SceneContextBuilder();

        /// <summary>Something the NPC should know happened (kept to the last few).</summary>
        public void Remember(string gameEvent) { _recentEvents.Add(gameEvent); }

        public SceneData BuildScene()
        {
            _builder.NearbyRadius = nearbyRadius;
            var here = transform.position;
            var nearby = Active.Where(v => v != this)
                .Select(v => new NearbyCharacter(string.IsNullOrEmpty(v.displayName) ? v.name : v.displayName,
                                                 Vector3.Distance(here, v.transform.position)));
            var overrides = new SceneData
            {
                Location = location, Weather = weather, NpcMood = mood, NpcActivity = activity,
                PlayerName = playerName, PlayerStanding = playerStanding,
            };
            foreach (var f in facts) if (!string.IsNullOrEmpty(f.key)) overrides.Facts[f.key] = f.value ?? "";
            var hour = WorldHour ?? (float)DateTime.Now.TimeOfDay.TotalHours;
            return _builder.Build(gameObject.scene.name, hour, nearby, _recentEvents, overrides);
        }

        /// <summary>Ask this NPC for a line. Events on the handle run on the main thread. With <paramref name="beats"/>,
        /// the handle's OnEmotion and OnAction say what the NPC feels and which offered action it takes.</summary>
        public DialogueHandle Say(string playerLine, GenerationSettings options = null, SayPolicy? policy = null,
                                  BeatRequestData beats = null)
        {
            if (string.IsNullOrEmpty(npcId)) throw new InvalidOperationException(name + ": NpcVoice.npcId is empty");
            _lines.RemoveAll(h => h.IsDone);
            var handle = Dialogue.Say(npcId, playerLine, BuildScene(), options, policy, Procedural(), beats);
            _lines.Add(handle);
            Raise(handle);
            return handle;
        }

        /// <summary>This NPC speaks first (no player line), e.g. when the player comes near.</summary>
        public DialogueHandle Bark(GenerationSettings options = null, SayPolicy? policy = null)
        {
            return Say("", options, policy);
        }

        /// <summary>
        /// The player is walking up: have the daemon read this NPC's prompt now, so the next Say or Bark starts
        /// like a follow-up. Call it when the player enters talking range (e.g. from OnTriggerEnter); the scene
        /// is built now, so call it again if the scene changes before the player speaks. Never faults.
        /// </summary>
        public System.Threading.Tasks.Task<PrepareResult> Prepare()
        {
            if (string.IsNullOrEmpty(npcId)) throw new InvalidOperationException(name + ": NpcVoice.npcId is empty");
            return Dialogue.Prepare(npcId, BuildScene(), Procedural());
        }

        void Raise(DialogueHandle handle)
        {
            handle.OnText += delta => onLine.Invoke(handle.Text);
            handle.OnSentence += sentence => onSentence.Invoke(sentence);
            handle.OnEmotion += beat => { if (beat != null) onEmotion.Invoke(beat.Id); };
            handle.OnAction += beat => { if (beat != null) onAction.Invoke(beat.Id); };
            handle.OnDone += result => onLineDone.Invoke(handle.Text);
        }

        void OnEnable() { Active.Add(this); }

        void OnDisable() { Active.Remove(this); }

        void OnTriggerEnter(Collider other) { Approached(other.gameObject); }

        void OnTriggerEnter2D(Collider2D other) { Approached(other.gameObject); }

        void Approached(GameObject other)
        {
            if (!prepareOnApproach || string.IsNullOrEmpty(npcId) || Dialogue.Client == null) return;
            if (!string.IsNullOrEmpty(playerTag) && !other.CompareTag(playerTag)) return;
            Prepare();  // never faults; a line asked for meanwhile is not held up by it
        }

        /// <summary>The procedural NPC this component describes, or null when it has no blend (a hosted role).</summary>
        public ProceduralNpc Procedural()
        {
            if (blend.Count == 0) return null;
            var npc = new ProceduralNpc { Name = characterName, Persona = persona, Style = style, Knowledge = knowledge };
            foreach (var b in blend) npc.Blend[b.roleId] = b.weight;
            return npc;
        }

        void OnDestroy()
        {
            foreach (var h in _lines) h.Cancel();
            _lines.Clear();
        }
    }
}
