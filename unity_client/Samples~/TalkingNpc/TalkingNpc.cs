using Neeko.Npc;
using Neeko.Npc.Unity;
using UnityEngine;

/// <summary>
/// Sample: put on a GameObject with an NpcVoice (npcId "blacksmith"), press Play, type a line and press
/// Enter. The reply streams into the label; a second line interrupts the first. On Start the server is asked to
/// prepare the NPC's prompt, so the first line starts like a follow-up (the NpcVoice does the same by itself
/// when a collider tagged Player enters its trigger).
/// </summary>
[RequireComponent(typeof(NpcVoice))]
public class TalkingNpc : MonoBehaviour
{
    NpcVoice _voice;
    DialogueHandle _line;
    string _input = "Good morning! Can you mend my sword?";
    string _status = "";

    void Awake() { _voice = GetComponent<NpcVoice>(); }

    void Start() { Prepare(); }

    async void Prepare()
    {
        if (!await Dialogue.WaitUntilReady(System.TimeSpan.FromSeconds(60)))
        {
            _status = "the server is not ready (see the Console)";
            return;
        }
        var r = await _voice.Prepare();  // never faults; Skipped says why nothing was read
        _status = r.Prepared ? "prepared " + r.PromptTokens + " prompt tokens in " + r.ElapsedMs.ToString("0") + " ms"
                             : "not prepared: " + r.Skipped;
    }

    void Ask()
    {
        _status = "";
        _line = _voice.Say(_input);
        _line.OnDone += r => _status = r.CompletionTokens + " tokens, first token after " + r.TimeToFirstTokenMs.ToString("0") + " ms";
        _line.OnError += e => _status = "error: " + e.Message;
    }

    void OnGUI()
    {
        GUILayout.BeginArea(new Rect(20, 20, 560, 300), GUI.skin.box);
        GUILayout.Label(_voice.npcId + " says:");
        GUILayout.Label(_line != null ? _line.Text : "...");
        GUILayout.Label(_status);
        GUI.SetNextControlName("line");
        _input = GUILayout.TextField(_input);
        // Enter sends once: OnGUI sees the key as KeyDown (and again as other events), so only KeyDown counts, and
        // it is used up so the text field does not see it too.
        var e = Event.current;
        bool enter = e.type == EventType.KeyDown && (e.keyCode == KeyCode.Return || e.keyCode == KeyCode.KeypadEnter);
        if (enter) e.Use();
        if (GUILayout.Button("Say") || enter) Ask();
        GUILayout.EndArea();
    }
}
