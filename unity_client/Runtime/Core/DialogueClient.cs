using System;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;

namespace Neeko.Npc
{
    /// <summary>
    /// Runs Say requests on worker threads over an IDialogueTransport and reports on the main thread
    /// through each DialogueHandle. Per NPC, a second Say interrupts or queues behind the line in
    /// progress (SayPolicy). Transient failures before the first text are retried with backoff; a daemon
    /// that stays down ends in OnError with a clear message, never a hang or an exception on the main thread.
    /// </summary>
    public sealed class DialogueClient : IDisposable
    {
        readonly IDialogueTransport _transport;
        readonly MainThreadQueue _main;
        readonly RetryPolicy _retry;
        readonly object _lock = new object();
        readonly Dictionary<string, NpcLine> _lines = new Dictionary<string, NpcLine>();
        bool _disposed;

        public SayPolicy DefaultPolicy = SayPolicy.Interrupt;
        /// <summary>Session id sent with every request unless the call gives one: the daemon's memory key.</summary>
        public string SessionId = "";
        /// <summary>Longest wait for a line's first chunk (the daemon may queue the request, then reads its prompt);
        /// past it the line fails with DEADLINE_EXCEEDED. Also bounds Prepare and each turn of a Converse.</summary>
        public TimeSpan FirstChunkTimeout = TimeSpan.FromSeconds(30);
        /// <summary>Longest silence between two chunks of a line that has started: a line that stops streaming for
        /// this long fails with DEADLINE_EXCEEDED. A line that keeps streaming is never cut, however long it takes.</summary>
        public TimeSpan IdleTimeout = TimeSpan.FromSeconds(10);

        class NpcLine
        {
            public DialogueHandle Current;
            public readonly Queue<DialogueHandle> Waiting = new Queue<DialogueHandle>();
        }

        public DialogueClient(IDialogueTransport transport, MainThreadQueue main, RetryPolicy retry = null)
        {
            if (transport == null) throw new ArgumentNullException("transport");
            if (main == null) throw new ArgumentNullException("main");
            _transport = transport;
            _main = main;
            _retry = retry ?? new RetryPolicy();
            _ready = !(transport is IReadinessProbe);  // a transport that cannot tell is taken at its word
        }

        volatile bool _ready;

        /// <summary>Whether the daemon served at the last look: WaitUntilReady, or the last line (a chunk arrived, or
        /// it failed UNAVAILABLE). A transport without IReadinessProbe counts as ready.</summary>
        public bool IsReady { get { return _ready; } }

        /// <summary>Raised on the main thread when IsReady changes (the daemon came up, or went away).</summary>
        public event Action<bool> OnConnectionChanged;

        /// <summary>How often WaitUntilReady asks the daemon.</summary>
        public TimeSpan ReadyPollInterval = TimeSpan.FromMilliseconds(250);

        /// <summary>Ask the daemon until it serves (true) or <paramref name="timeout"/> passes (false). A line asked
        /// for before the daemon is ready waits like this, up to FirstChunkTimeout, instead of failing. An answer
        /// that waiting cannot change (a wrong token) is thrown as DialogueException.</summary>
        public async Task<bool> WaitUntilReady(TimeSpan timeout, CancellationToken cancellation = default(CancellationToken))
        {
            var probe = _transport as IReadinessProbe;
            if (probe == null) return true;
            var deadline = DateTime.UtcNow + timeout;
            while (true)
            {
                bool serving;
                try { serving = await probe.IsServingAsync(cancellation).ConfigureAwait(false); }
                catch (OperationCanceledException) { return false; }
                catch (DialogueException e) when (!e.Transient) { throw; }  // a wrong token is no reason to wait
                catch (Exception) { serving = false; }
                SetReady(serving);
                if (serving) return true;
                var left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero || cancellation.IsCancellationRequested) return false;
                try { await Task.Delay(left < ReadyPollInterval ? left : ReadyPollInterval, cancellation).ConfigureAwait(false); }
                catch (OperationCanceledException) { return false; }
            }
        }

        void SetReady(bool ready)
        {
            if (_ready == ready) return;
            _ready = ready;
            _main.Post(() =>
            {
                var e = OnConnectionChanged;
                if (e != null) e(ready);
            });
        }

        public MainThreadQueue MainThread { get { return _main; } }

        /// <summary>A line failed and its handle has no OnError subscriber: raised once for that line, on the main
        /// thread, so a failure the game does not handle is still seen (NeekoRuntime logs it as a warning).</summary>
        public event Action<DialogueHandle, DialogueException> UnhandledLineError;

        void RaiseUnhandled(DialogueHandle handle, DialogueException error)
        {
            var e = UnhandledLineError;
            if (e != null) e(handle, error);
        }

        /// <param name="procedural">Null for a role the daemon hosts; set for an NPC with no role file.</param>
        public DialogueHandle Say(string npcId, string playerLine, SceneData scene = null, GenerationSettings options = null,
                                  string sessionId = null, SayPolicy? policy = null, ProceduralNpc procedural = null,
                                  BeatRequestData beats = null)
        {
            if (string.IsNullOrEmpty(npcId)) throw new ArgumentException("npcId is required", "npcId");
            if (procedural != null) procedural.Validate();
            var request = new SayRequestData
            {
                NpcId = npcId, PlayerLine = playerLine ?? "", Scene = scene ?? new SceneData(),
                Options = options ?? new GenerationSettings(), SessionId = sessionId ?? SessionId ?? "",
                Procedural = procedural, Beats = beats != null && beats.Asks ? beats : null,
            };
            var handle = new DialogueHandle(request, _main, RaiseUnhandled);
            bool start;
            DialogueHandle interrupted = null;
            lock (_lock)
            {
                if (_disposed) throw new ObjectDisposedException("DialogueClient");
                NpcLine line;
                if (!_lines.TryGetValue(npcId, out line)) _lines[npcId] = line = new NpcLine();
                var busy = line.Current != null && !line.Current.Task.IsCompleted;
                if (busy && (policy ?? DefaultPolicy) == SayPolicy.Queue)
                {
                    line.Waiting.Enqueue(handle);
                    start = false;
                }
                else
                {
                    if (busy) interrupted = line.Current;
                    line.Current = handle;
                    start = true;
                }
            }
            if (interrupted != null) interrupted.Cancel();
            if (start) Start(handle);
            return handle;
        }

        /// <summary>Say, cancelled when <paramref name="cancellation"/> is (a scene unloading, the player walking
        /// away): the line ends as Cancel() ends it, with the text so far.</summary>
        public DialogueHandle Say(string npcId, string playerLine, CancellationToken cancellation, SceneData scene = null,
                                  GenerationSettings options = null, string sessionId = null, SayPolicy? policy = null,
                                  ProceduralNpc procedural = null, BeatRequestData beats = null)
        {
            return CancelWith(Say(npcId, playerLine, scene, options, sessionId, policy, procedural, beats), cancellation, h => h.Cancel());
        }

        /// <summary>Converse, cancelled when <paramref name="cancellation"/> is.</summary>
        public ConversationHandle Converse(IList<string> npcIds, CancellationToken cancellation, SceneData scene = null,
                                           string topic = "", string openingLine = "", int turns = 0,
                                           TurnOrder order = TurnOrder.RoundRobin, GenerationSettings options = null)
        {
            return CancelWith(Converse(npcIds, scene, topic, openingLine, turns, order, options), cancellation, h => h.Cancel());
        }

        static T CancelWith<T>(T handle, CancellationToken cancellation, Action<T> cancel)
        {
            if (cancellation.CanBeCanceled) cancellation.Register(() => cancel(handle));  // at once if already cancelled
            return handle;
        }

        /// <summary>An NPC speaks first: a line with no player line (a greeting, a shout across the square).</summary>
        public DialogueHandle Bark(string npcId, SceneData scene = null, GenerationSettings options = null, SayPolicy? policy = null,
                                   ProceduralNpc procedural = null)
        {
            return Say(npcId, "", scene, options, null, policy, procedural);
        }

        /// <summary>
        /// The player is walking up to this NPC (call it as they enter its talking range): the daemon reads the
        /// NPC's prompt up to the player's line now, so the Say or Bark that follows starts like a follow-up. Send
        /// the scene and session the line will use. A hint: the task never faults; a transport that cannot
        /// prepare, a busy daemon or any error gives a result with Skipped set.
        /// </summary>
        public Task<PrepareResult> Prepare(string npcId, SceneData scene = null, string sessionId = null,
                                           ProceduralNpc procedural = null)
        {
            // a missing id or a malformed blend is the caller's bug: thrown here, not folded into the result
            if (string.IsNullOrEmpty(npcId)) throw new ArgumentException("npcId is required", "npcId");
            if (procedural != null) procedural.Validate();
            var preparer = _transport as IPromptPreparer;
            if (preparer == null)
                return Task.FromResult(new PrepareResult { NpcId = npcId, Skipped = _transport.GetType().Name + " cannot prepare prompts (no IPromptPreparer)" });
            return PrepareOn(preparer, new SayRequestData
            {
                NpcId = npcId, Scene = scene ?? new SceneData(), SessionId = sessionId ?? SessionId ?? "", Procedural = procedural,
            });
        }

        async Task<PrepareResult> PrepareOn(IPromptPreparer preparer, SayRequestData request)
        {
            var npcId = request.NpcId;
            try
            {
                using (var timeout = new CancellationTokenSource())
                {
                    var work = preparer.PrepareAsync(request, timeout.Token);
                    // waited for here, not only through the token: a transport that ignores it must not hang the game
                    if (await Task.WhenAny(work, Task.Delay(FirstChunkTimeout)).ConfigureAwait(false) != work)
                    {
                        timeout.Cancel();
                        Observe(work);
                        return new PrepareResult { NpcId = npcId, Skipped = "no answer within " + FirstChunkTimeout.TotalSeconds + " s (DialogueClient.FirstChunkTimeout)" };
                    }
                    var r = await work.ConfigureAwait(false);
                    return r ?? new PrepareResult { NpcId = npcId, Skipped = "the transport returned nothing" };
                }
            }
            catch (Exception e)
            {
                return new PrepareResult { NpcId = npcId, Skipped = e.Message };
            }
        }

        static void Observe(Task task)
        {
            task.ContinueWith(t => { var unused = t.Exception; }, TaskContinuationOptions.OnlyOnFaulted);
        }

        /// <summary>The daemon's memory of a session (default: this client's SessionId), to keep in a save file.</summary>
        /// <summary>
        /// Start a conversation among 2 to 4 hosted NPCs: each turn streams under its speaker's own voice, with
        /// per-turn events on the main thread (ConversationHandle). The player may Interject between turns.
        /// </summary>
        public ConversationHandle Converse(IList<string> npcIds, SceneData scene = null, string topic = "", string openingLine = "",
                                           int turns = 0, TurnOrder order = TurnOrder.RoundRobin, GenerationSettings options = null)
        {
            if (npcIds == null || npcIds.Count < 2 || npcIds.Count > 4)
                throw new ArgumentException("a conversation needs 2 to 4 NPC ids", "npcIds");
            var request = new ConverseRequestData
            {
                NpcIds = new List<string>(npcIds), Scene = scene ?? new SceneData(), Topic = topic ?? "",
                OpeningLine = openingLine ?? "", Turns = Math.Max(0, turns), Order = order, Options = options ?? new GenerationSettings(),
            };
            var handle = new ConversationHandle(request, _main);
            lock (_lock)
            {
                if (_disposed) throw new ObjectDisposedException("DialogueClient");
            }
            var transport = _transport as IConversationTransport;
            if (transport == null)
                handle.Fail(new DialogueException("UNIMPLEMENTED", _transport.GetType().Name + " cannot carry conversations (no IConversationTransport)", false));
            else
                System.Threading.Tasks.Task.Run(() => handle.Run(transport, FirstChunkTimeout));
            return handle;
        }

        public System.Threading.Tasks.Task<SavedSession> SaveSession(string sessionId = null)
        {
            var id = sessionId ?? SessionId;
            if (string.IsNullOrEmpty(id)) throw new ArgumentException("a session id is required: set DialogueClient.SessionId or pass one");
            return Store().GetSessionAsync(id, CancellationToken.None);
        }

        /// <summary>Put a saved session back into the daemon (after loading a save, or after the daemon restarted).
        /// It replaces what the daemon holds for that session; faults with DialogueException on bad data.</summary>
        public System.Threading.Tasks.Task<int> LoadSession(SavedSession session)
        {
            if (session == null) throw new ArgumentNullException("session");
            if (string.IsNullOrEmpty(session.SessionId)) throw new ArgumentException("the saved session has no SessionId");
            return Store().RestoreSessionAsync(session, CancellationToken.None);
        }

        ISessionStore Store()
        {
            var store = _transport as ISessionStore;
            if (store == null)
                throw new NotSupportedException(_transport.GetType().Name + " cannot save or load sessions: implement ISessionStore");
            return store;
        }

        /// <summary>Cancel every line of one NPC (in progress and queued), e.g. when its GameObject is destroyed.</summary>
        public void CancelNpc(string npcId)
        {
            var cancel = new List<DialogueHandle>();
            lock (_lock)
            {
                NpcLine line;
                if (!_lines.TryGetValue(npcId, out line)) return;
                if (line.Current != null) cancel.Add(line.Current);
                cancel.AddRange(line.Waiting);
                line.Waiting.Clear();
            }
            foreach (var h in cancel) h.Cancel();
        }

        void Start(DialogueHandle handle)
        {
            handle.Task.ContinueWith(_ => Next(handle.NpcId, handle), TaskContinuationOptions.ExecuteSynchronously);
            System.Threading.Tasks.Task.Run(() => Run(handle));
        }

        void Next(string npcId, DialogueHandle finished)
        {
            DialogueHandle next = null;
            lock (_lock)
            {
                NpcLine line;
                if (_disposed || !_lines.TryGetValue(npcId, out line) || line.Current != finished) return;
                while (line.Waiting.Count > 0 && next == null)
                {
                    var h = line.Waiting.Dequeue();
                    if (h.State == DialogueState.Pending) next = h;
                }
                line.Current = next;
            }
            if (next != null) Start(next);
        }

        async Task Run(DialogueHandle handle)
        {
            for (int attempt = 1; ; attempt++)
            {
                bool gotText = false, gotChunk = false;
                try
                {
                    if (!_ready && !await WaitUntilReady(FirstChunkTimeout, handle.Cancellation).ConfigureAwait(false))
                    {
                        if (handle.Cancellation.IsCancellationRequested) return;
                        throw new DialogueException("UNAVAILABLE", "the daemon was not ready within " + FirstChunkTimeout.TotalSeconds +
                                                    " s (DialogueClient.FirstChunkTimeout): is it running, and has its model loaded?", false);
                    }
                    using (var stream = _transport.Open(handle.Request, handle.Cancellation))
                    {
                        while (true)
                        {
                            DialogueChunk chunk;
                            var limit = gotChunk ? IdleTimeout : FirstChunkTimeout;
                            using (var wait = CancellationTokenSource.CreateLinkedTokenSource(handle.Cancellation))
                            {
                                wait.CancelAfter(limit);
                                try { chunk = await stream.NextAsync(wait.Token).ConfigureAwait(false); }
                                catch (OperationCanceledException)
                                {
                                    if (handle.Cancellation.IsCancellationRequested) return;
                                    throw new DialogueException("DEADLINE_EXCEEDED", gotChunk
                                        ? "the line stopped streaming: nothing for " + limit.TotalSeconds + " s (DialogueClient.IdleTimeout)"
                                        : "no reply within " + limit.TotalSeconds + " s (DialogueClient.FirstChunkTimeout)", false);
                                }
                            }
                            if (chunk == null) { handle.Finished(); return; }
                            gotChunk = true;
                            SetReady(true);
                            gotText |= chunk.Text.Length > 0;
                            if (!handle.Receive(chunk) || chunk.Done) return;
                        }
                    }
                }
                catch (Exception e)
                {
                    if (handle.Cancellation.IsCancellationRequested) return;
                    var error = e as DialogueException ?? new DialogueException("UNKNOWN", e.Message, false, e);
                    if (error.Status == "UNAVAILABLE" && error.Transient && _transport is IReadinessProbe) SetReady(false);
                    var delay = gotText ? null : _retry.NextDelay(attempt, error);
                    if (delay == null)
                    {
                        handle.Fail(attempt > 1
                            ? new DialogueException(error.Status, error.Message + " (after " + attempt + " attempts)", error.Transient, error)
                            : error);
                        return;
                    }
                    try { await System.Threading.Tasks.Task.Delay(delay.Value, handle.Cancellation).ConfigureAwait(false); }
                    catch (OperationCanceledException) { return; }
                }
            }
        }

        public void Dispose()
        {
            List<string> npcs;
            lock (_lock)
            {
                if (_disposed) return;
                npcs = new List<string>(_lines.Keys);
            }
            foreach (var npc in npcs) CancelNpc(npc);
            lock (_lock) _disposed = true;
        }
    }

    /// <summary>
    /// The game-facing entry point: Dialogue.Say(npcId, playerLine, scene). In Unity the package's bootstrap
    /// sets Client from the NeekoSettings asset; tests and other hosts set it themselves.
    /// </summary>
    public static class Dialogue
    {
        public static DialogueClient Client { get; set; }

        /// <summary>A line; with <paramref name="beats"/>, also the emotion and the action the NPC chooses
        /// (DialogueHandle.OnEmotion, OnAction).</summary>
        public static DialogueHandle Say(string npcId, string playerLine = "", SceneData scene = null,
                                         GenerationSettings options = null, SayPolicy? policy = null, ProceduralNpc procedural = null,
                                         BeatRequestData beats = null)
        {
            return Need().Say(npcId, playerLine, scene, options, null, policy, procedural, beats);
        }

        /// <summary>Whether the daemon served at the last look (DialogueClient.IsReady); false without a client.</summary>
        public static bool IsReady { get { return Client != null && Client.IsReady; } }

        /// <summary>Wait until the daemon serves, or the timeout passes (DialogueClient.WaitUntilReady).</summary>
        public static Task<bool> WaitUntilReady(TimeSpan timeout) { return Need().WaitUntilReady(timeout); }

        /// <summary>A line that ends (as Cancel() ends it) when <paramref name="cancellation"/> is cancelled.</summary>
        public static DialogueHandle Say(string npcId, string playerLine, CancellationToken cancellation, SceneData scene = null,
                                         GenerationSettings options = null, SayPolicy? policy = null, ProceduralNpc procedural = null,
                                         BeatRequestData beats = null)
        {
            return Need().Say(npcId, playerLine, cancellation, scene, options, null, policy, procedural, beats);
        }

        /// <summary>A conversation that ends when <paramref name="cancellation"/> is cancelled.</summary>
        public static ConversationHandle Converse(IList<string> npcIds, CancellationToken cancellation, SceneData scene = null,
                                                  string topic = "", string openingLine = "", int turns = 0,
                                                  TurnOrder order = TurnOrder.RoundRobin, GenerationSettings options = null)
        {
            return Need().Converse(npcIds, cancellation, scene, topic, openingLine, turns, order, options);
        }

        /// <summary>NPCs talking to each other while the player watches (DialogueClient.Converse).</summary>
        public static ConversationHandle Converse(IList<string> npcIds, SceneData scene = null, string topic = "",
                                                  string openingLine = "", int turns = 0, TurnOrder order = TurnOrder.RoundRobin,
                                                  GenerationSettings options = null)
        {
            return Need().Converse(npcIds, scene, topic, openingLine, turns, order, options);
        }

        /// <summary>An NPC speaks first, with no player line.</summary>
        public static DialogueHandle Bark(string npcId, SceneData scene = null, GenerationSettings options = null,
                                          SayPolicy? policy = null, ProceduralNpc procedural = null)
        {
            return Need().Bark(npcId, scene, options, policy, procedural);
        }

        /// <summary>The player is walking up to an NPC: have the daemon read its prompt now (DialogueClient.Prepare).</summary>
        public static Task<PrepareResult> Prepare(string npcId, SceneData scene = null, ProceduralNpc procedural = null)
        {
            return Need().Prepare(npcId, scene, null, procedural);
        }

        /// <summary>The daemon's memory of a session (default: the client's SessionId), for the game's save file.</summary>
        public static System.Threading.Tasks.Task<SavedSession> SaveSession(string sessionId = null) { return Need().SaveSession(sessionId); }

        /// <summary>Put a saved session back into the daemon.</summary>
        public static System.Threading.Tasks.Task<int> LoadSession(SavedSession session) { return Need().LoadSession(session); }

        static DialogueClient Need()
        {
            if (Client == null)
                throw new InvalidOperationException("Dialogue.Client is not set: add a NeekoSettings asset (Assets/Resources/NeekoSettings) or assign Dialogue.Client");
            return Client;
        }
    }
}
