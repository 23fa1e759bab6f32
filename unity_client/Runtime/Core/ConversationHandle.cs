using System;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;

namespace Neeko.Npc
{
    /// <summary>
    /// A conversation among NPCs in flight (DialogueClient.Converse). Events run on Unity's main thread (from
    /// MainThreadQueue.Pump), in order: OnTurnStarted, OnText..., OnTurnDone for each turn, then OnDone; or
    /// OnError. Interject(line) sends a player line, taken in before the next turn. Cancel() stops it: the Task
    /// completes with the turns finished so far and no further events are raised.
    /// </summary>
    public sealed class ConversationHandle
    {
        readonly MainThreadQueue _main;
        readonly object _lock = new object();
        readonly CancellationTokenSource _cts = new CancellationTokenSource();
        readonly TaskCompletionSource<List<ConversationTurn>> _tcs =
            new TaskCompletionSource<List<ConversationTurn>>(TaskCreationOptions.RunContinuationsAsynchronously);
        readonly List<ConversationTurn> _finished = new List<ConversationTurn>();  // worker side
        readonly List<string> _pending = new List<string>();  // interjections before the stream opened
        IConverseStream _stream;
        DialogueState _state = DialogueState.Pending;
        readonly List<ConversationTurn> _turns = new List<ConversationTurn>();  // main-thread view

        public readonly ConverseRequestData Request;

        /// <summary>A turn begins: its speaker (NpcId), its index, and any player line taken in just before it.</summary>
        public event Action<ConversationTurn> OnTurnStarted;
        /// <summary>New text of the current turn: (speaker's NPC id, text).</summary>
        public event Action<string, string> OnText;
        /// <summary>A turn ended: its whole text, finish reason and the blocks that spoke.</summary>
        public event Action<ConversationTurn> OnTurnDone;
        /// <summary>The conversation ended after its last turn.</summary>
        public event Action<IList<ConversationTurn>> OnDone;
        /// <summary>It failed (unknown NPC, daemon down, ...). Never thrown.</summary>
        public event Action<DialogueException> OnError;

        internal ConversationHandle(ConverseRequestData request, MainThreadQueue main)
        {
            Request = request;
            _main = main;
        }

        public DialogueState State { get { lock (_lock) return _state; } }

        /// <summary>The finished turns, as the main thread has seen them.</summary>
        public IList<ConversationTurn> Turns { get { return _turns; } }

        public bool IsDone { get; private set; }
        public DialogueException Error { get; private set; }

        /// <summary>Completes with every finished turn; faults with DialogueException; a cancelled one completes normally.</summary>
        public Task<List<ConversationTurn>> Task { get { return _tcs.Task; } }

        /// <summary>The player says something; the NPCs hear it before the next turn that starts after it arrives.</summary>
        public void Interject(string line)
        {
            if (string.IsNullOrEmpty(line)) return;
            IConverseStream stream;
            lock (_lock)
            {
                if (IsTerminal(_state)) return;
                stream = _stream;
                if (stream == null)
                {
                    _pending.Add(line);
                    return;
                }
            }
            Send(stream, line);
        }

        void Send(IConverseStream stream, string line)
        {
            stream.SendPlayerLineAsync(line, _cts.Token).ContinueWith(t => { var ignored = t.Exception; },
                TaskContinuationOptions.OnlyOnFaulted);
        }

        public void Cancel()
        {
            List<ConversationTurn> turns;
            lock (_lock)
            {
                if (IsTerminal(_state)) return;
                _state = DialogueState.Cancelled;
                turns = new List<ConversationTurn>(_finished);
            }
            _cts.Cancel();
            _main.Post(() => { IsDone = true; });
            _tcs.TrySetResult(turns);
        }

        static bool IsTerminal(DialogueState s)
        {
            return s == DialogueState.Done || s == DialogueState.Failed || s == DialogueState.Cancelled;
        }

        bool Live { get { return State != DialogueState.Cancelled; } }

        internal async Task Run(IConversationTransport transport, TimeSpan idleTimeout)
        {
            ConversationTurn current = null;
            var text = new System.Text.StringBuilder();
            try
            {
                using (var stream = transport.OpenConversation(Request, _cts.Token))
                {
                    List<string> pending;
                    lock (_lock)
                    {
                        _stream = stream;
                        pending = new List<string>(_pending);
                        _pending.Clear();
                        if (_state == DialogueState.Pending) _state = DialogueState.Streaming;
                    }
                    foreach (var line in pending) Send(stream, line);
                    while (true)
                    {
                        ConverseChunk chunk;
                        using (var idle = new CancellationTokenSource(idleTimeout))
                        using (var linked = CancellationTokenSource.CreateLinkedTokenSource(_cts.Token, idle.Token))
                        {
                            try { chunk = await stream.NextAsync(linked.Token).ConfigureAwait(false); }
                            catch (OperationCanceledException)
                            {
                                if (_cts.IsCancellationRequested) return;
                                throw new DialogueException("DEADLINE_EXCEEDED",
                                    "no turn within " + idleTimeout.TotalSeconds + " s (DialogueClient.FirstChunkTimeout)", false);
                            }
                        }
                        if (!Live) return;
                        if (chunk == null)
                            throw new DialogueException("UNAVAILABLE", "the daemon closed the conversation before its end", true);
                        if (chunk.Done)
                        {
                            Finish();
                            return;
                        }
                        if (current == null || current.Turn != chunk.Turn)
                        {
                            current = new ConversationTurn { NpcId = chunk.NpcId, Turn = chunk.Turn, PlayerLine = chunk.PlayerLine ?? "" };
                            text.Clear();
                            var started = current;
                            _main.Post(() => { if (Live) { var h = OnTurnStarted; if (h != null) h(started); } });
                        }
                        var delta = chunk.Text ?? "";
                        text.Append(delta);
                        if (delta.Length > 0)
                        {
                            var npc = chunk.NpcId;
                            _main.Post(() => { if (Live) { var h = OnText; if (h != null) h(npc, delta); } });
                        }
                        if (chunk.TurnDone)
                        {
                            var done = new ConversationTurn
                            {
                                NpcId = current.NpcId, Turn = current.Turn, Text = text.ToString(), FinishReason = chunk.FinishReason,
                                RoleWeights = new Dictionary<string, float>(chunk.RoleWeights), PlayerLine = current.PlayerLine,
                            };
                            lock (_lock) _finished.Add(done);
                            _main.Post(() =>
                            {
                                if (!Live) return;
                                _turns.Add(done);
                                var h = OnTurnDone;
                                if (h != null) h(done);
                            });
                        }
                    }
                }
            }
            catch (Exception e)
            {
                if (_cts.IsCancellationRequested) return;
                Fail(e as DialogueException ?? new DialogueException("UNKNOWN", e.Message, false, e));
            }
        }

        void Finish()
        {
            List<ConversationTurn> turns;
            lock (_lock)
            {
                if (IsTerminal(_state)) return;
                _state = DialogueState.Done;
                turns = new List<ConversationTurn>(_finished);
            }
            _main.Post(() =>
            {
                IsDone = true;
                var h = OnDone;
                if (h != null) h(_turns);
            });
            _tcs.TrySetResult(turns);
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
                var h = OnError;
                if (h != null) h(error);
            });
            _tcs.TrySetException(error);
            _tcs.Task.ContinueWith(t => { var ignored = t.Exception; }, TaskContinuationOptions.OnlyOnFaulted);
        }
    }
}
