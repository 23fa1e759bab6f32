using System;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;

namespace Neeko.Npc
{
    /// <summary>
    /// One NPC line in flight. Three ways to use it, all safe on Unity's main thread:
    /// events (OnText, OnSentence, OnDone, OnError, raised only from MainThreadQueue.Pump), an awaitable Task,
    /// and polling (IsDone, Text) from a coroutine. Cancel() stops it; a cancelled line completes its
    /// Task with FinishReason.Cancelled and the text so far, and raises no further events.
    /// </summary>
    public sealed class DialogueHandle
    {
        readonly MainThreadQueue _main;
        readonly object _lock = new object();
        readonly CancellationTokenSource _cts = new CancellationTokenSource();
        readonly TaskCompletionSource<DialogueResult> _tcs =
            new TaskCompletionSource<DialogueResult>(TaskCreationOptions.RunContinuationsAsynchronously);
        readonly System.Text.StringBuilder _received = new System.Text.StringBuilder();  // worker side
        DialogueState _state = DialogueState.Pending;
        string _text = "";  // main-thread view
        readonly SentenceSplitter _sentences = new SentenceSplitter();  // main thread only

        public readonly string NpcId;
        public readonly SayRequestData Request;

        /// <summary>New text, in order, on the main thread.</summary>
        public event Action<string> OnText;
        /// <summary>Each sentence once it is complete (see SentenceSplitter), on the main thread; the last one just
        /// before OnDone. For text-to-speech and subtitle boxes. A cancelled or failed line raises no partial sentence.</summary>
        public event Action<string> OnSentence;
        /// <summary>The line's emotion, when the request asked for beats: on the main thread, just before OnDone.</summary>
        public event Action<BeatChoice> OnEmotion;
        /// <summary>The action the NPC chose among those the request offered: on the main thread, just before OnDone
        /// (after OnEmotion). Always one of the ids offered.</summary>
        public event Action<BeatChoice> OnAction;
        /// <summary>The line finished (stop or length), on the main thread.</summary>
        public event Action<DialogueResult> OnDone;
        /// <summary>The request failed (daemon down, unknown NPC, ...), on the main thread. Never thrown.</summary>
        public event Action<DialogueException> OnError;

        readonly Action<DialogueHandle, DialogueException> _unhandled;

        internal DialogueHandle(SayRequestData request, MainThreadQueue main, Action<DialogueHandle, DialogueException> unhandled = null)
        {
            Request = request;
            NpcId = request.NpcId;
            _main = main;
            _unhandled = unhandled;
        }

        public DialogueState State { get { lock (_lock) return _state; } }

        /// <summary>True once the line is done, failed or cancelled (as seen by the main thread).</summary>
        public bool IsDone { get; private set; }

        /// <summary>The text received so far, updated on the main thread as OnText fires.</summary>
        public string Text { get { return _text; } }

        public DialogueResult Result { get; private set; }
        public DialogueException Error { get; private set; }

        /// <summary>Completes with the result; faults with DialogueException; a cancelled line completes normally.</summary>
        public Task<DialogueResult> Task { get { return _tcs.Task; } }

        internal CancellationToken Cancellation { get { return _cts.Token; } }

        public void Cancel()
        {
            string text;
            lock (_lock)
            {
                if (IsTerminal(_state)) return;
                _state = DialogueState.Cancelled;
                text = _received.ToString();
            }
            _cts.Cancel();
            var result = new DialogueResult { NpcId = NpcId, Text = text, FinishReason = FinishReason.Cancelled };
            _main.Post(() => { Result = result; _text = text; IsDone = true; });
            _tcs.TrySetResult(result);
        }

        static bool IsTerminal(DialogueState s)
        {
            return s == DialogueState.Done || s == DialogueState.Failed || s == DialogueState.Cancelled;
        }

        // -- called by DialogueClient's worker ------------------------------------------------------------

        /// <summary>Returns false when the handle is already finished (the chunk is dropped).</summary>
        internal bool Receive(DialogueChunk chunk)
        {
            string delta = chunk.Text ?? "";
            DialogueResult result = null;
            string all;
            lock (_lock)
            {
                if (IsTerminal(_state)) return false;
                _state = chunk.Done ? DialogueState.Done : DialogueState.Streaming;
                _received.Append(delta);
                all = _received.ToString();
                if (chunk.Done)
                {
                    result = new DialogueResult
                    {
                        NpcId = NpcId, Text = all, FinishReason = chunk.FinishReason, PromptTokens = chunk.PromptTokens,
                        CompletionTokens = chunk.CompletionTokens, TimeToFirstTokenMs = chunk.TimeToFirstTokenMs,
                        RoleWeights = new Dictionary<string, float>(chunk.RoleWeights),
                        Emotion = chunk.Emotion, Action = chunk.Action,
                    };
                }
            }
            _main.Post(() =>
            {
                if (State == DialogueState.Cancelled) return;
                if (delta.Length > 0)
                {
                    _text = _text + delta;
                    var t = OnText;
                    if (t != null) t(delta);
                    foreach (var sentence in _sentences.Push(delta)) RaiseSentence(sentence);
                }
                if (result != null)
                {
                    var last = _sentences.Flush();
                    if (last != null) RaiseSentence(last);
                    Result = result;
                    IsDone = true;
                    if (result.Emotion != null && State != DialogueState.Cancelled)
                    {
                        var em = OnEmotion;
                        if (em != null) em(result.Emotion);
                    }
                    if (result.Action != null && State != DialogueState.Cancelled)
                    {
                        var ac = OnAction;
                        if (ac != null) ac(result.Action);
                    }
                    var d = OnDone;
                    if (d != null) d(result);
                }
            });
            if (result != null) _tcs.TrySetResult(result);
            return true;
        }

        void RaiseSentence(string sentence)
        {
            if (State == DialogueState.Cancelled) return;  // a handler above may have cancelled the line
            var s = OnSentence;
            if (s != null) s(sentence);
        }

        internal void Fail(DialogueException error)
        {
            lock (_lock)
            {
                if (IsTerminal(_state)) return;
                _state = DialogueState.Failed;
            }
            _main.Post(() =>
            {
                Error = error;
                IsDone = true;
                var e = OnError;
                if (e != null) e(error);
                else if (_unhandled != null) _unhandled(this, error);  // nobody listens: said once, not lost
            });
            _tcs.TrySetException(error);
            // An unobserved faulted Task must not surface later as an UnobservedTaskException.
            _tcs.Task.ContinueWith(t => { var ignored = t.Exception; }, TaskContinuationOptions.OnlyOnFaulted);
        }

        internal void Finished()
        {
            // The stream ended without a final chunk: treat it as a dropped connection.
            lock (_lock)
            {
                if (IsTerminal(_state)) return;
            }
            Fail(new DialogueException("UNAVAILABLE", "the daemon closed the stream before the line was finished", true));
        }
    }
}
