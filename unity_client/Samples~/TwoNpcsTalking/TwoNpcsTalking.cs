using System.Collections.Generic;
using System.Text;
using Neeko.Npc;
using Neeko.Npc.Unity;
using UnityEngine;

/// <summary>
/// Sample: two NPCs talk to each other while the player watches. Put it on any GameObject, set the two
/// NpcVoices (npcIds of roles the daemon hosts, e.g. "blacksmith" and "innkeeper") and press Play. Each turn
/// streams into the transcript as it is generated, under its speaker's own voice; type a line and press
/// Interject to be heard before the next turn. Stop cancels the scene.
/// </summary>
public class TwoNpcsTalking : MonoBehaviour
{
    public NpcVoice first;
    public NpcVoice second;
    public string topic = "the bandits on the north road";
    [Range(2, 32)] public int turns = 6;

    ConversationHandle _talk;
    readonly StringBuilder _transcript = new StringBuilder();
    string _input = "Enough! Who stole my horse?";
    string _status = "";

    void Start() { Begin(); }

    void Begin()
    {
        if (_talk != null) _talk.Cancel();
        _talk = null;
        _transcript.Length = 0;
        if (first == null || second == null || string.IsNullOrEmpty(first.npcId) || string.IsNullOrEmpty(second.npcId))
        {
            _status = "assign two NpcVoices with npcIds (fields First and Second) in the Inspector";
            return;
        }
        var npcs = new List<string> { first.npcId, second.npcId };
        _talk = Dialogue.Converse(npcs, first.BuildScene(), topic, turns: turns);
        _talk.OnTurnStarted += t =>
        {
            if (!string.IsNullOrEmpty(t.PlayerLine)) _transcript.Append("\nYou: ").Append(t.PlayerLine);
            _transcript.Append("\n").Append(t.NpcId).Append(": ");
        };
        _talk.OnText += (npcId, delta) => _transcript.Append(delta);
        _talk.OnDone += all => _status = all.Count + " turns";
        _talk.OnError += e => _status = "error: " + e.Message;
        _status = "talking...";
    }

    void OnDestroy() { if (_talk != null) _talk.Cancel(); }

    void OnGUI()
    {
        GUILayout.BeginArea(new Rect(20, 20, 640, 420), GUI.skin.box);
        GUILayout.Label(_transcript.ToString());
        GUILayout.Label(_status);
        _input = GUILayout.TextField(_input);
        GUILayout.BeginHorizontal();
        if (GUILayout.Button("Interject") && _talk != null) _talk.Interject(_input);
        if (GUILayout.Button("Stop") && _talk != null) _talk.Cancel();
        if (GUILayout.Button("Again")) Begin();
        GUILayout.EndHorizontal();
        GUILayout.EndArea();
    }
}
