// NUnit tests of the transport-free core: run by Unity's Test Runner (add "testables": ["com.neeko.npc"] to the
// project's Packages/manifest.json), and outside Unity with mono + nunit-console (tests/test_unity_client.py).
using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Runtime.Serialization;
using System.Runtime.Serialization.Json;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using NUnit.Framework;

namespace Neeko.Npc.Tests
{
    class Step
    {
        public DialogueChunk Chunk;
        public DialogueException Error;
        public int DelayMs;
        public bool Hang;
        public static Step Text(string t, int delay = 0) { return new Step { Chunk = new DialogueChunk { Text = t }, DelayMs = delay }; }
        public static Step Done(FinishReason r = FinishReason.Stop, int tokens = 3)
        {
            return new Step { Chunk = new DialogueChunk { Done = true, FinishReason = r, CompletionTokens = tokens } };
        }
        public static Step Fail(string status, bool transient) { return new Step { Error = new DialogueException(status, "scripted", transient) }; }
    }

    class FakeStream : IChunkStream
    {
        readonly Queue<Step> _steps;
        public FakeStream(IEnumerable<Step> steps) { _steps = new Queue<Step>(steps); }

        public async Task<DialogueChunk> NextAsync(CancellationToken ct)
        {
            if (_steps.Count == 0) return null;
            var s = _steps.Dequeue();
            if (s.DelayMs > 0) await Task.Delay(s.DelayMs, ct);
            if (s.Hang) await Task.Delay(Timeout.Infinite, ct);
            if (s.Error != null) throw s.Error;
            return s.Chunk;
        }

        public void Dispose() { }
    }

    /// <summary>Scripted daemon: Script(attempt, request) gives the steps; a null script entry means "connection refused".</summary>
    class FakeTransport : IDialogueTransport
    {
        public Func<int, SayRequestData, List<Step>> Script;
        public int Opens;
        public readonly List<string> OpenLog = new List<string>();

        public IChunkStream Open(SayRequestData request, CancellationToken ct)
        {
            int n = Interlocked.Increment(ref Opens);
            lock (OpenLog) OpenLog.Add(request.NpcId + ":" + request.PlayerLine);
            var steps = Script(n, request);
            if (steps == null) throw new DialogueException("UNAVAILABLE", "failed to connect to 127.0.0.1:50051", true);
            return new FakeStream(steps);
        }
    }

    /// <summary>A daemon's session memory, kept in a dictionary: what GetSession/RestoreSession do, minus gRPC.</summary>
    /// <summary>A daemon that serves from its ReadyAfter-th health probe on (0: never).</summary>
    class FakeStartingDaemon : FakeTransport, IReadinessProbe
    {
        public int ReadyAfter;
        public int Probes;

        public Task<bool> IsServingAsync(CancellationToken ct)
        {
            var n = Interlocked.Increment(ref Probes);
            return Task.FromResult(ReadyAfter > 0 && n >= ReadyAfter);
        }
    }

    class FakeSessionTransport : FakeTransport, ISessionStore
    {
        public readonly Dictionary<string, SavedSession> Sessions = new Dictionary<string, SavedSession>();

        public Task<SavedSession> GetSessionAsync(string sessionId, CancellationToken ct)
        {
            SavedSession s;
            return Task.FromResult(Sessions.TryGetValue(sessionId, out s) ? s : new SavedSession { SessionId = sessionId });
        }

        public Task<int> RestoreSessionAsync(SavedSession session, CancellationToken ct)
        {
            Sessions[session.SessionId] = session;
            return Task.FromResult(session.Npcs.Sum(n => n.Exchanges.Count));
        }
    }

    /// <summary>A daemon that prepares prompts: records what it was asked, answers from Answer (or throws it).</summary>
    class FakePreparer : FakeTransport, IPromptPreparer
    {
        public readonly List<SayRequestData> Asked = new List<SayRequestData>();
        public Func<SayRequestData, Task<PrepareResult>> Answer;

        public Task<PrepareResult> PrepareAsync(SayRequestData request, CancellationToken ct)
        {
            lock (Asked) Asked.Add(request);
            return Answer(request);
        }
    }

    [DataContract] class RoleWeightJson { [DataMember(Name = "role_id")] public string RoleId = ""; [DataMember(Name = "weight")] public float Weight; }

    [DataContract]
    class ChunkJson
    {
        [DataMember(Name = "text")] public string Text = "";
        [DataMember(Name = "done")] public bool Done;
        [DataMember(Name = "finish_reason")] public string FinishReason = "";
        [DataMember(Name = "prompt_tokens")] public int PromptTokens;
        [DataMember(Name = "completion_tokens")] public int CompletionTokens;
        [DataMember(Name = "cached_prompt_tokens")] public int CachedPromptTokens;
        [DataMember(Name = "time_to_first_token_ms")] public float TimeToFirstTokenMs;
        [DataMember(Name = "role_weights")] public List<RoleWeightJson> RoleWeights;
    }

    [DataContract] class SentenceCase
    {
        [DataMember(Name = "chunks")] public List<string> Chunks = new List<string>();
        [DataMember(Name = "sentences")] public List<string> Sentences = new List<string>();
    }

    [DataContract] class SentenceCases { [DataMember(Name = "cases")] public List<SentenceCase> Cases = new List<SentenceCase>(); }

    /// <summary>Replays a chunk stream recorded from the real daemon (protobuf JSON, one chunk a line).</summary>
    class RecordedTransport : IDialogueTransport
    {
        readonly string _file;
        public RecordedTransport(string name)
        {
            // mono + NUnit in the repository's suite set NEEKO_RECORDED_DIR; in Unity's Test Runner the package path resolves
            var dir = Environment.GetEnvironmentVariable("NEEKO_RECORDED_DIR")
                      ?? Path.GetFullPath("Packages/com.neeko.npc/Tests/Editor/Recorded");
            _file = Path.Combine(dir, name + ".jsonl");
        }

        public static List<DialogueChunk> Load(string file)
        {
            var ser = new DataContractJsonSerializer(typeof(ChunkJson));
            var chunks = new List<DialogueChunk>();
            foreach (var line in File.ReadAllLines(file, Encoding.UTF8))
            {
                if (line.Trim().Length == 0) continue;
                var j = (ChunkJson)ser.ReadObject(new MemoryStream(Encoding.UTF8.GetBytes(line)));
                var c = new DialogueChunk
                {
                    Text = j.Text ?? "", Done = j.Done, PromptTokens = j.PromptTokens, CompletionTokens = j.CompletionTokens,
                    CachedPromptTokens = j.CachedPromptTokens, TimeToFirstTokenMs = j.TimeToFirstTokenMs,
                    FinishReason = j.FinishReason == "FINISH_REASON_STOP" ? FinishReason.Stop
                        : j.FinishReason == "FINISH_REASON_LENGTH" ? FinishReason.Length
                        : j.FinishReason == "FINISH_REASON_CANCELLED" ? FinishReason.Cancelled : FinishReason.Unspecified,
                };
                if (j.RoleWeights != null) foreach (var w in j.RoleWeights) c.RoleWeights[w.RoleId] = w.Weight;
                chunks.Add(c);
            }
            return chunks;
        }

        public string File_ { get { return _file; } }

        public static string Dir { get { return Path.GetDirectoryName(new RecordedTransport("x")._file); } }

        public IChunkStream Open(SayRequestData request, CancellationToken ct)
        {
            return new FakeStream(Load(_file).Select(c => new Step { Chunk = c, DelayMs = 1 }));
        }
    }

    /// <summary>A scripted Converse: the chunks it streams, and the player lines it received.</summary>
    class FakeConversation : IConversationTransport, IDialogueTransport
    {
        public List<ConverseChunk> Chunks = new List<ConverseChunk>();
        public int DelayMs;
        public bool EndEarly;
        public readonly List<string> Heard = new List<string>();
        public ConverseRequestData Opened;

        public IChunkStream Open(SayRequestData request, CancellationToken ct) { throw new NotSupportedException(); }

        public IConverseStream OpenConversation(ConverseRequestData request, CancellationToken ct)
        {
            Opened = request;
            return new Stream(this);
        }

        class Stream : IConverseStream
        {
            readonly FakeConversation _f;
            int _next;
            public Stream(FakeConversation f) { _f = f; }

            public async Task<ConverseChunk> NextAsync(CancellationToken ct)
            {
                if (_f.DelayMs > 0) await Task.Delay(_f.DelayMs, ct);
                ct.ThrowIfCancellationRequested();
                if (_next >= _f.Chunks.Count) return null;
                var c = _f.Chunks[_next++];
                return _f.EndEarly && c.Done ? null : c;
            }

            public Task SendPlayerLineAsync(string line, CancellationToken ct)
            {
                lock (_f.Heard) _f.Heard.Add(line);
                return Task.FromResult(0);
            }

            public void Dispose() { }
        }

        /// <summary>turns turns, alternating a and b, each "x y" in two chunks; then the end.</summary>
        public static FakeConversation Alternating(string a, string b, int turns)
        {
            var f = new FakeConversation();
            for (int t = 0; t < turns; t++)
            {
                var npc = t % 2 == 0 ? a : b;
                f.Chunks.Add(new ConverseChunk { NpcId = npc, Turn = t, Text = npc + t, PlayerLine = t == 1 ? "Hey!" : "" });
                var end = new ConverseChunk { NpcId = npc, Turn = t, Text = " ends.", TurnDone = true, FinishReason = FinishReason.Stop };
                end.RoleWeights[npc] = 1f;
                f.Chunks.Add(end);
            }
            f.Chunks.Add(new ConverseChunk { Done = true, Turn = turns });
            return f;
        }
    }

    [TestFixture]
    public class DialogueTests
    {
        MainThreadQueue _main;
        int _mainThread;

        [SetUp]
        public void SetUp()
        {
            _main = new MainThreadQueue();
            _mainThread = Thread.CurrentThread.ManagedThreadId;
        }

        DialogueClient Client(IDialogueTransport t, RetryPolicy retry = null)
        {
            return new DialogueClient(t, _main, retry ?? new RetryPolicy { MaxAttempts = 3, InitialDelay = TimeSpan.FromMilliseconds(5), Jitter = 0 });
        }

        /// <summary>Pump the main-thread queue, as Unity's Update would, until cond holds.</summary>
        void PumpUntil(Func<bool> cond, int timeoutMs = 5000)
        {
            var end = DateTime.UtcNow.AddMilliseconds(timeoutMs);
            while (!cond())
            {
                if (DateTime.UtcNow > end) Assert.Fail("timed out waiting on the main thread");
                _main.Pump();
                Thread.Sleep(1);
            }
            _main.Pump();
        }

        static FakeTransport Slow(int chunks, int delayMs)
        {
            return new FakeTransport
            {
                Script = (n, r) => Enumerable.Range(0, chunks).Select(i => Step.Text(r.PlayerLine + i + " ", delayMs))
                    .Concat(new[] { Step.Done() }).ToList(),
            };
        }

        [Test]
        public void RecordedStreamIsDeliveredInOrderOnTheMainThread()
        {
            var t = new RecordedTransport("innkeeper_greeting");
            var recorded = RecordedTransport.Load(t.File_);
            string expected = string.Concat(recorded.Select(c => c.Text));
            var texts = new List<string>();
            DialogueResult done = null;
            var h = Client(t).Say("innkeeper", "Good evening!");
            h.OnText += s => { Assert.AreEqual(_mainThread, Thread.CurrentThread.ManagedThreadId); texts.Add(s); };
            h.OnDone += r => { Assert.AreEqual(_mainThread, Thread.CurrentThread.ManagedThreadId); done = r; };
            Assert.IsTrue(h.Task.Wait(5000));
            Assert.AreEqual(0, texts.Count, "events fire only when the main thread pumps");
            PumpUntil(() => done != null);
            Assert.AreEqual(expected, string.Concat(texts));
            Assert.AreEqual(expected, h.Text);
            Assert.IsTrue(h.IsDone);
            Assert.AreEqual(FinishReason.Stop, done.FinishReason);
            Assert.AreEqual(recorded.Last().CompletionTokens, done.CompletionTokens);
            Assert.AreEqual(1.0f, done.RoleWeights["innkeeper"]);
            Assert.AreEqual(expected, h.Task.Result.Text);
        }

        [Test]
        public void RecordedLengthFinish()
        {
            var h = Client(new RecordedTransport("blacksmith_length")).Say("blacksmith", "Tell me about your forge.");
            Assert.IsTrue(h.Task.Wait(5000));
            Assert.AreEqual(FinishReason.Length, h.Task.Result.FinishReason);
            Assert.AreEqual(8, h.Task.Result.CompletionTokens);
        }

        [Test]
        public void SecondSayInterruptsByDefault()
        {
            var client = Client(Slow(1000, 5));
            var first = client.Say("smith", "a");
            var firstTexts = 0;
            first.OnText += s => firstTexts++;
            PumpUntil(() => first.Text.Length > 0);
            var second = client.Say("smith", "b");
            Assert.AreEqual(DialogueState.Cancelled, first.State);
            Assert.IsTrue(first.Task.Wait(1000));
            Assert.AreEqual(FinishReason.Cancelled, first.Task.Result.FinishReason);
            int seen = firstTexts;
            second.Cancel();
            PumpUntil(() => second.IsDone);
            Thread.Sleep(30);
            _main.Pump();
            Assert.AreEqual(seen, firstTexts, "no text after cancellation");
        }

        [Test]
        public void QueuePolicyWaitsForTheCurrentLine()
        {
            var t = Slow(3, 10);
            var client = Client(t);
            var first = client.Say("smith", "a");
            var second = client.Say("smith", "b", policy: SayPolicy.Queue);
            var other = client.Say("bard", "c", policy: SayPolicy.Queue);  // another NPC is not held up
            Assert.IsTrue(second.Task.Wait(5000));
            Assert.AreEqual(DialogueState.Done, first.State);
            Assert.AreEqual(DialogueState.Done, second.State);
            Assert.IsTrue(other.Task.Wait(5000));
            lock (t.OpenLog)
                Assert.Less(t.OpenLog.IndexOf("smith:a"), t.OpenLog.IndexOf("smith:b"));
            Assert.AreEqual("a0 a1 a2 ", first.Task.Result.Text);
            Assert.AreEqual("b0 b1 b2 ", second.Task.Result.Text);
        }

        [Test]
        public void DaemonDownEndsInOnErrorAfterRetries()
        {
            var t = new FakeTransport { Script = (n, r) => null };
            DialogueException error = null;
            var h = Client(t).Say("smith", "hello");
            h.OnError += e => error = e;
            PumpUntil(() => error != null);
            Assert.AreEqual(3, t.Opens);
            Assert.AreEqual("UNAVAILABLE", error.Status);
            StringAssert.Contains("failed to connect", error.Message);
            StringAssert.Contains("after 3 attempts", error.Message);
            Assert.IsTrue(h.IsDone);
            Assert.AreEqual(DialogueState.Failed, h.State);
            Assert.IsTrue(h.Task.IsFaulted);
        }

        [Test]
        public void TransientFailuresThenSuccess()
        {
            var t = new FakeTransport { Script = (n, r) => n < 3 ? null : new List<Step> { Step.Text("Aye."), Step.Done() } };
            var h = Client(t).Say("smith", "hello");
            Assert.IsTrue(h.Task.Wait(5000));
            Assert.AreEqual("Aye.", h.Task.Result.Text);
            Assert.AreEqual(3, t.Opens);
        }

        [Test]
        public void BadRequestsAreNotRetried()
        {
            var t = new FakeTransport { Script = (n, r) => new List<Step> { Step.Fail("NOT_FOUND", false) } };
            var h = Client(t).Say("nobody", "hello");
            DialogueException error = null;
            h.OnError += e => error = e;
            PumpUntil(() => error != null);
            Assert.AreEqual(1, t.Opens);
            Assert.AreEqual("NOT_FOUND", error.Status);
        }

        [Test]
        public void AHalfSpokenLineIsNeverRestarted()
        {
            var t = new FakeTransport { Script = (n, r) => new List<Step> { Step.Text("Aye, "), Step.Fail("UNAVAILABLE", true) } };
            var h = Client(t).Say("smith", "hello");
            DialogueException error = null;
            h.OnError += e => error = e;
            PumpUntil(() => error != null);
            Assert.AreEqual(1, t.Opens);
            Assert.AreEqual("Aye, ", h.Text);
        }

        [Test]
        public void AStreamThatEndsWithoutItsLastChunkIsAnError()
        {
            var t = new FakeTransport { Script = (n, r) => new List<Step> { Step.Text("Aye") } };
            DialogueException error = null;
            var h = Client(t, RetryPolicy.None).Say("smith", "hello");
            h.OnError += e => error = e;
            PumpUntil(() => error != null);
            StringAssert.Contains("closed the stream", error.Message);
        }

        [Test]
        public void NoFirstChunkInTimeEndsInOnError()
        {
            var t = new FakeTransport { Script = (n, r) => new List<Step> { new Step { Hang = true } } };
            var client = Client(t);
            client.FirstChunkTimeout = TimeSpan.FromMilliseconds(100);
            DialogueException error = null;
            var h = client.Say("smith", "hello");
            h.OnError += e => error = e;
            PumpUntil(() => error != null);
            Assert.AreEqual("DEADLINE_EXCEEDED", error.Status);
            StringAssert.Contains("FirstChunkTimeout", error.Message);
            Assert.AreEqual(1, t.Opens);
        }

        [Test]
        public void ALineThatKeepsStreamingIsNeverCut()
        {
            // a chunk every 50 ms for 500 ms: longer than both timeouts, never silent for as long as either
            var steps = Enumerable.Range(0, 10).Select(i => Step.Text("w" + i + " ", 50)).Concat(new[] { Step.Done() }).ToList();
            var client = Client(new FakeTransport { Script = (n, r) => steps });
            client.FirstChunkTimeout = TimeSpan.FromMilliseconds(200);
            client.IdleTimeout = TimeSpan.FromMilliseconds(200);
            var h = client.Say("smith", "hello");
            PumpUntil(() => h.IsDone);
            Assert.AreEqual(DialogueState.Done, h.State, h.Error != null ? h.Error.Message : "");
            Assert.AreEqual("w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 ", h.Text);
        }

        [Test]
        public void ALineThatStopsStreamingFailsAfterTheIdleTimeout()
        {
            var t = new FakeTransport { Script = (n, r) => new List<Step> { Step.Text("Hello "), Step.Text("there"), new Step { Hang = true } } };
            var client = Client(t);
            client.IdleTimeout = TimeSpan.FromMilliseconds(150);
            DialogueException error = null;
            var h = client.Say("smith", "hello");
            h.OnError += e => error = e;
            PumpUntil(() => error != null);
            Assert.AreEqual("DEADLINE_EXCEEDED", error.Status);
            StringAssert.Contains("IdleTimeout", error.Message);
            Assert.AreEqual("Hello there", h.Text);
            Assert.AreEqual(1, t.Opens);  // text had arrived: not retried
        }

        [Test]
        public void ALineAskedForBeforeTheDaemonIsReadyWaitsForIt()
        {
            var daemon = new FakeStartingDaemon { ReadyAfter = 3, Script = (n, r) => new List<Step> { Step.Text("Hello."), Step.Done() } };
            var client = Client(daemon);
            client.ReadyPollInterval = TimeSpan.FromMilliseconds(20);
            var changes = new List<bool>();
            client.OnConnectionChanged += ready => changes.Add(ready);
            Assert.IsFalse(client.IsReady);
            var h = client.Bark("smith");  // at start-up, before the model has loaded
            PumpUntil(() => h.IsDone);
            Assert.AreEqual(DialogueState.Done, h.State, h.Error != null ? h.Error.Message : "");
            Assert.AreEqual(3, daemon.Probes);
            Assert.AreEqual(1, daemon.Opens);  // opened once the daemon served, never before
            Assert.IsTrue(client.IsReady);
            CollectionAssert.AreEqual(new[] { true }, changes);
        }

        [Test]
        public void ADaemonThatNeverComesUpFailsTheLineOnceItsWaitIsOver()
        {
            var daemon = new FakeStartingDaemon { ReadyAfter = 0, Script = (n, r) => new List<Step> { Step.Done() } };
            var client = Client(daemon);
            client.ReadyPollInterval = TimeSpan.FromMilliseconds(20);
            client.FirstChunkTimeout = TimeSpan.FromMilliseconds(200);
            DialogueException error = null;
            var h = client.Say("smith", "hello");
            h.OnError += e => error = e;
            PumpUntil(() => error != null);
            Assert.AreEqual("UNAVAILABLE", error.Status);
            StringAssert.Contains("not ready", error.Message);
            Assert.AreEqual(0, daemon.Opens);
            Assert.IsFalse(client.WaitUntilReady(TimeSpan.FromMilliseconds(50)).Result);
            daemon.ReadyAfter = 1;
            Assert.IsTrue(client.WaitUntilReady(TimeSpan.FromSeconds(2)).Result);
            Assert.IsTrue(Client(new FakeTransport()).WaitUntilReady(TimeSpan.Zero).Result);  // no probe: taken at its word
        }

        class WrongTokenDaemon : FakeTransport, IReadinessProbe
        {
            public Task<bool> IsServingAsync(CancellationToken ct)
            {
                throw new DialogueException("UNAUTHENTICATED", "missing or wrong token", false);
            }
        }

        [Test]
        public void AWrongTokenFailsTheLineAtOnceInsteadOfWaiting()
        {
            var client = Client(new WrongTokenDaemon { Script = (n, r) => new List<Step> { Step.Done() } });
            client.FirstChunkTimeout = TimeSpan.FromSeconds(30);
            DialogueException error = null;
            var h = client.Say("smith", "hello");
            h.OnError += e => error = e;
            PumpUntil(() => error != null, 3000);
            Assert.AreEqual("UNAUTHENTICATED", error.Status);
        }

        [Test]
        public void AFailureNobodyHandlesIsReportedOnceOnTheMainThread()
        {
            var client = Client(new FakeTransport { Script = (n, r) => new List<Step> { Step.Fail("NOT_FOUND", false) } });
            var reported = new List<string>();
            int thread = -1;
            client.UnhandledLineError += (line, e) => { reported.Add(line.NpcId + " " + e.Status); thread = Thread.CurrentThread.ManagedThreadId; };
            var unheard = client.Say("nobody", "hello");
            PumpUntil(() => unheard.IsDone);
            var heard = client.Say("smith", "hello");
            DialogueException seen = null;
            heard.OnError += e => seen = e;
            PumpUntil(() => heard.IsDone);
            Thread.Sleep(20);
            _main.Pump();
            CollectionAssert.AreEqual(new[] { "nobody NOT_FOUND" }, reported);  // the handled one is not reported
            Assert.AreEqual(_mainThread, thread);
            Assert.AreEqual("NOT_FOUND", seen.Status);
        }

        [Test]
        public void ATokenCancelsTheLineItWasGivenWith()
        {
            var client = Client(Slow(1000, 5));
            using (var leaving = new CancellationTokenSource())
            {
                var h = client.Say("smith", "a", leaving.Token);
                PumpUntil(() => h.Text.Length > 0);
                leaving.Cancel();
                Assert.IsTrue(h.Task.Wait(1000));
                Assert.AreEqual(DialogueState.Cancelled, h.State);
                Assert.AreEqual(FinishReason.Cancelled, h.Task.Result.FinishReason);
                StringAssert.StartsWith("a0 ", h.Task.Result.Text);
            }
            var already = new CancellationTokenSource();
            already.Cancel();
            var late = client.Say("bard", "b", already.Token);
            Assert.IsTrue(late.Task.Wait(1000));
            Assert.AreEqual(DialogueState.Cancelled, late.State);
            var other = Client(Slow(3, 1)).Say("smith", "c", CancellationToken.None);  // a token that never cancels changes nothing
            PumpUntil(() => other.IsDone);
            Assert.AreEqual(DialogueState.Done, other.State);
        }

        [Test]
        public void CancelNpcStopsEverythingForThatNpc()
        {
            var client = Client(Slow(1000, 5));
            var a = client.Say("smith", "a");
            var b = client.Say("smith", "b", policy: SayPolicy.Queue);
            var other = client.Say("bard", "c");
            PumpUntil(() => a.Text.Length > 0);
            client.CancelNpc("smith");  // what NpcVoice does in OnDestroy
            Assert.AreEqual(DialogueState.Cancelled, a.State);
            Assert.AreEqual(DialogueState.Cancelled, b.State);
            Assert.AreNotEqual(DialogueState.Cancelled, other.State);
            other.Cancel();
        }

        [Test]
        public void AThrowingHandlerDoesNotBreakThePump()
        {
            var t = new FakeTransport { Script = (n, r) => new List<Step> { Step.Text("one "), Step.Text("two"), Step.Done() } };
            var failures = new List<Exception>();
            _main.CallbackFailed += failures.Add;
            var h = Client(t).Say("smith", "hi");
            DialogueResult done = null;
            h.OnText += s => { throw new InvalidOperationException("game bug"); };
            h.OnDone += r => done = r;
            PumpUntil(() => done != null);
            Assert.AreEqual(2, failures.Count);
            Assert.AreEqual("one two", done.Text);
        }

        [Test]
        public void SceneBuilderObservesThenAppliesOverrides()
        {
            Assert.AreEqual("night", SceneContextBuilder.TimeOfDayFromHour(2));
            Assert.AreEqual("dawn", SceneContextBuilder.TimeOfDayFromHour(6));
            Assert.AreEqual("noon", SceneContextBuilder.TimeOfDayFromHour(12));
            Assert.AreEqual("evening", SceneContextBuilder.TimeOfDayFromHour(19.5f));
            Assert.AreEqual("night", SceneContextBuilder.TimeOfDayFromHour(23));
            var b = new SceneContextBuilder { NearbyRadius = 10, MaxNearby = 2 };
            var overrides = new SceneData { NpcMood = "grumpy", Location = "the old forge" };
            overrides.Facts["festival"] = "tomorrow";
            var s = b.Build("Forge", 8f,
                new[] { new NearbyCharacter("Pip", 4), new NearbyCharacter("Wenna", 2), new NearbyCharacter("Far", 50), new NearbyCharacter("Rook", 9) },
                new[] { "a", "b" }, overrides);
            Assert.AreEqual("the old forge", s.Location);
            Assert.AreEqual("morning", s.TimeOfDay);
            Assert.AreEqual("grumpy", s.NpcMood);
            CollectionAssert.AreEqual(new[] { "Wenna", "Pip" }, s.NearbyCharacters);
            CollectionAssert.AreEqual(new[] { "a", "b" }, s.RecentEvents);
            Assert.AreEqual("tomorrow", s.Facts["festival"]);
        }

        [Test]
        public void RetryDelaysGrowAndAreCapped()
        {
            var p = new RetryPolicy { MaxAttempts = 10, InitialDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromMilliseconds(500), Jitter = 0 };
            var down = new DialogueException("UNAVAILABLE", "x", true);
            Assert.AreEqual(100, p.NextDelay(1, down).Value.TotalMilliseconds, 1e-6);
            Assert.AreEqual(200, p.NextDelay(2, down).Value.TotalMilliseconds, 1e-6);
            Assert.AreEqual(500, p.NextDelay(5, down).Value.TotalMilliseconds, 1e-6);
            Assert.IsNull(p.NextDelay(10, down));
            Assert.IsNull(p.NextDelay(1, new DialogueException("INVALID_ARGUMENT", "x", false)));
            var j = new RetryPolicy(seed: 7) { Jitter = 0.5 };
            var d = j.NextDelay(1, down).Value.TotalMilliseconds;
            Assert.That(d, Is.InRange(125.0, 375.0));
        }

        [Test]
        public void AProceduralNpcTravelsWithItsRequest()
        {
            SayRequestData seen = null;
            var t = new FakeTransport { Script = (n, r) => { seen = r; return new List<Step> { Step.Text("Welcome, love."), Step.Done() }; } };
            var villager = new ProceduralNpc { Name = "Ada Thorne", Persona = "A widowed baker who trades gossip for flour." };
            villager.Blend["innkeeper"] = 0.7f;
            villager.Blend["merchant"] = 0.3f;
            var h = Client(t).Say("villager_0042", "Morning!", procedural: villager);
            Assert.IsTrue(h.Task.Wait(5000));
            Assert.AreEqual("villager_0042", seen.NpcId);
            Assert.AreSame(villager, seen.Procedural);
            Assert.AreEqual(0.7f, seen.Procedural.Blend["innkeeper"]);
            var hosted = Client(t).Say("smith", "hi");
            Assert.IsTrue(hosted.Task.Wait(5000));
            Assert.IsNull(seen.Procedural, "a hosted role's request carries no blend");
        }

        [Test]
        public void ABadProceduralNpcIsRefusedBeforeAnyRequest()
        {
            var t = new FakeTransport { Script = (n, r) => new List<Step> { Step.Done() } };
            var client = Client(t);
            var noBlend = new ProceduralNpc { Name = "Ada", Persona = "A baker." };
            StringAssert.Contains("Blend", Assert.Throws<ArgumentException>(() => client.Say("v1", "hi", procedural: noBlend)).Message);
            var negative = new ProceduralNpc { Name = "Ada", Persona = "A baker." };
            negative.Blend["innkeeper"] = -0.5f;
            StringAssert.Contains("not negative", Assert.Throws<ArgumentException>(() => client.Say("v1", "hi", procedural: negative)).Message);
            var nan = new ProceduralNpc { Name = "Ada", Persona = "A baker." };
            nan.Blend["innkeeper"] = float.NaN;
            Assert.Throws<ArgumentException>(() => client.Say("v1", "hi", procedural: nan));
            var zero = new ProceduralNpc { Name = "Ada", Persona = "A baker." };
            zero.Blend["innkeeper"] = 0f;
            StringAssert.Contains("sum to 0", Assert.Throws<ArgumentException>(() => client.Say("v1", "hi", procedural: zero)).Message);
            var nameless = new ProceduralNpc { Persona = "A baker." };
            nameless.Blend["innkeeper"] = 1f;
            StringAssert.Contains("Name", Assert.Throws<ArgumentException>(() => client.Say("v1", "hi", procedural: nameless)).Message);
            Assert.AreEqual(0, t.Opens);
        }

        [Test]
        public void RecordedProceduralLineReportsTheBlendThatSpoke()
        {
            var villager = new ProceduralNpc { Name = "Ada Thorne", Persona = "A widowed baker." };
            villager.Blend["innkeeper"] = 0.7f;
            villager.Blend["merchant"] = 0.3f;
            var h = Client(new RecordedTransport("procedural_blend")).Say("villager_0042", "Morning!", procedural: villager);
            Assert.IsTrue(h.Task.Wait(5000));
            var w = h.Task.Result.RoleWeights;
            CollectionAssert.AreEquivalent(new[] { "innkeeper", "merchant" }, w.Keys);
            Assert.AreEqual(0.7f, w["innkeeper"], 1e-6);
            Assert.AreEqual(0.3f, w["merchant"], 1e-6);
            Assert.IsNotEmpty(h.Task.Result.Text);
        }

        [Test]
        public void SentenceSplitterPassesTheSharedCases()
        {
            var file = Path.Combine(RecordedTransport.Dir, "..", "sentence_cases.json");
            var ser = new DataContractJsonSerializer(typeof(SentenceCases));
            var cases = (SentenceCases)ser.ReadObject(new MemoryStream(File.ReadAllBytes(file)));
            Assert.GreaterOrEqual(cases.Cases.Count, 15);
            foreach (var c in cases.Cases)
            {
                var splitter = new SentenceSplitter();
                var got = new List<string>();
                foreach (var chunk in c.Chunks) got.AddRange(splitter.Push(chunk));
                var last = splitter.Flush();
                if (last != null) got.Add(last);
                CollectionAssert.AreEqual(c.Sentences, got, string.Join("|", c.Chunks));
            }
        }

        [Test]
        public void SentencesArriveOnTheMainThreadBeforeOnDone()
        {
            var t = new RecordedTransport("innkeeper_greeting");
            var expected = string.Concat(RecordedTransport.Load(t.File_).Select(c => c.Text));
            var events = new List<string>();
            var h = Client(t).Say("innkeeper", "Good evening!");
            h.OnSentence += s => { Assert.AreEqual(_mainThread, Thread.CurrentThread.ManagedThreadId); events.Add("S:" + s); };
            h.OnDone += r => events.Add("DONE");
            PumpUntil(() => events.Contains("DONE"));
            Assert.AreEqual("DONE", events.Last());
            var sentences = events.Where(e => e.StartsWith("S:")).Select(e => e.Substring(2)).ToList();
            Assert.GreaterOrEqual(sentences.Count, 2, expected);
            Assert.AreEqual(string.Join(" ", expected.Split((char[])null, StringSplitOptions.RemoveEmptyEntries)),
                            string.Join(" ", sentences), "the sentences are the whole line, in order");
        }

        [Test]
        public void ACancelledLineSpeaksNoHalfSentence()
        {
            var t = new FakeTransport { Script = (n, r) => new List<Step> { Step.Text("Aye. Leave it "), Step.Text("by the", 5), new Step { Hang = true } } };
            var sentences = new List<string>();
            var h = Client(t).Say("smith", "hi");
            h.OnSentence += sentences.Add;
            PumpUntil(() => h.Text.Contains("by the"));
            h.Cancel();
            PumpUntil(() => h.IsDone);
            CollectionAssert.AreEqual(new[] { "Aye." }, sentences);
        }

        [Test]
        public void BarkIsALineWithNoPlayerLine()
        {
            SayRequestData seen = null;
            var t = new FakeTransport { Script = (n, r) => { seen = r; return new List<Step> { Step.Text("Fresh bread!"), Step.Done() }; } };
            var h = Client(t).Bark("innkeeper", new SceneData { Location = "the square" });
            Assert.IsTrue(h.Task.Wait(5000));
            Assert.AreEqual("", seen.PlayerLine);
            Assert.AreEqual("the square", seen.Scene.Location);
            Assert.AreEqual("Fresh bread!", h.Task.Result.Text);
        }

        [Test]
        public void ASavedSessionGoesBackAndSurvivesSerialisation()
        {
            var daemon = new FakeSessionTransport();
            var saved = new SavedSession { SessionId = "save-1" };
            var smith = new SavedNpcMemory { NpcId = "smith" };
            smith.Exchanges.Add(new SavedExchange { PlayerLine = "Can you mend my sword?", NpcLine = "Aye. Leave it by the anvil." });
            saved.Npcs.Add(smith);
            var client = Client(daemon);
            client.SessionId = "save-1";
            // what a game does: write it into its save file, read it back later, hand it to the (restarted) daemon
            var ser = new DataContractJsonSerializer(typeof(SavedSession));
            var file = new MemoryStream();
            ser.WriteObject(file, saved);
            var loaded = (SavedSession)ser.ReadObject(new MemoryStream(file.ToArray()));
            Assert.AreEqual(1, client.LoadSession(loaded).Result);
            var back = client.SaveSession().Result;
            Assert.AreEqual("save-1", back.SessionId);
            Assert.AreEqual("Aye. Leave it by the anvil.", back.Npcs.Single().Exchanges.Single().NpcLine);
            Assert.Throws<ArgumentException>(() => client.LoadSession(new SavedSession()));
        }

        [Test]
        public void ATransportWithoutSessionsSaysSo()
        {
            var client = Client(new FakeTransport { Script = (n, r) => null });
            var e = Assert.Throws<NotSupportedException>(() => client.SaveSession("s1"));
            StringAssert.Contains("ISessionStore", e.Message);
        }

        [Test]
        public void PrepareSendsTheSceneAndSessionTheLineWillUse()
        {
            var daemon = new FakePreparer
            {
                Script = (n, r) => null,
                Answer = r => Task.FromResult(new PrepareResult { NpcId = r.NpcId, PromptTokens = 120, ReadTokens = 40, PromptCache = PromptCache.Snapshot }),
            };
            var client = Client(daemon);
            client.SessionId = "run-7";
            var r1 = client.Prepare("smith", new SceneData { Location = "the forge" }).Result;
            Assert.IsTrue(r1.Prepared);
            Assert.AreEqual(40, r1.ReadTokens);
            Assert.AreEqual(PromptCache.Snapshot, r1.PromptCache);
            var asked = daemon.Asked.Single();
            Assert.AreEqual("smith", asked.NpcId);
            Assert.AreEqual("run-7", asked.SessionId);
            Assert.AreEqual("the forge", asked.Scene.Location);
            Assert.AreEqual("", asked.PlayerLine);
            Assert.AreEqual(0, daemon.Opens);  // no line was started
            Assert.Throws<ArgumentException>(() => client.Prepare(""));
        }

        [Test]
        public void PrepareIsAHintThatNeverFaults()
        {
            // a transport that cannot prepare, a daemon that is down, one that never answers: a result that says why
            var plain = Client(new FakeTransport { Script = (n, r) => null }).Prepare("smith").Result;
            Assert.IsFalse(plain.Prepared);
            StringAssert.Contains("IPromptPreparer", plain.Skipped);

            var down = new FakePreparer { Script = (n, r) => null,
                Answer = r => { throw new DialogueException("UNAVAILABLE", "failed to connect to 127.0.0.1:50051", true); } };
            var r1 = Client(down).Prepare("smith").Result;
            Assert.IsFalse(r1.Prepared);
            StringAssert.Contains("UNAVAILABLE", r1.Skipped);

            var silent = new FakePreparer { Script = (n, r) => null, Answer = r => Task.Delay(Timeout.Infinite).ContinueWith(_ => new PrepareResult()) };
            var c = Client(silent);
            c.FirstChunkTimeout = TimeSpan.FromMilliseconds(100);
            var task = c.Prepare("smith");
            Assert.IsTrue(task.Wait(5000), "a daemon that never answers must not hang Prepare past the client's FirstChunkTimeout");
            StringAssert.Contains("FirstChunkTimeout", task.Result.Skipped);
        }

        [Test]
        public void StaticFacadeNeedsAClient()
        {
            Dialogue.Client = null;
            var e = Assert.Throws<InvalidOperationException>(() => Dialogue.Say("smith", "hi"));
            StringAssert.Contains("NeekoSettings", e.Message);
            var t = new FakeTransport { Script = (n, r) => new List<Step> { Step.Text("Aye."), Step.Done() } };
            Dialogue.Client = Client(t);
            try
            {
                var h = Dialogue.Say("smith", "hi");
                Assert.IsTrue(h.Task.Wait(5000));
                Assert.AreEqual("Aye.", h.Task.Result.Text);
            }
            finally { Dialogue.Client = null; }
        }
            [Test]
        public void BeatsArriveOnTheMainThreadBeforeOnDone()
        {
            SayRequestData seen = null;
            var emotion = new BeatChoice { Id = "angry", Probability = 0.6f };
            emotion.Probabilities["angry"] = 0.6f;
            emotion.Probabilities["neutral"] = 0.4f;
            var action = new BeatChoice { Id = "call_guards", Probability = 0.9f };
            var t = new FakeTransport
            {
                Script = (n, r) =>
                {
                    seen = r;
                    var last = Step.Done();
                    last.Chunk.Emotion = emotion;
                    last.Chunk.Action = action;
                    return new List<Step> { Step.Text("Guards!"), last };
                },
            };
            var beats = new BeatRequestData { Emotion = true };
            beats.Actions.Add(new ActionOption("call_guards", "shout for the watch"));
            beats.Actions.Add(new ActionOption("none"));
            var order = new List<string>();
            var h = Client(t).Say("guard_captain", "I saw a thief!", beats: beats);
            h.OnEmotion += e => { Assert.AreEqual(_mainThread, Thread.CurrentThread.ManagedThreadId); order.Add("emotion " + e.Id); };
            h.OnAction += a => { Assert.AreEqual(_mainThread, Thread.CurrentThread.ManagedThreadId); order.Add("action " + a.Id); };
            h.OnDone += r => order.Add("done");
            PumpUntil(() => h.IsDone);
            CollectionAssert.AreEqual(new[] { "emotion angry", "action call_guards", "done" }, order);
            Assert.AreSame(beats, seen.Beats);
            Assert.AreEqual(0.4f, h.Result.Emotion.Probabilities["neutral"]);
            Assert.AreEqual("call_guards", h.Task.Result.Action.Id);
        }

        [Test]
        public void ALineWithoutBeatsAsksNoneAndRaisesNone()
        {
            SayRequestData seen = null;
            var t = new FakeTransport { Script = (n, r) => { seen = r; return new List<Step> { Step.Text("Hi."), Step.Done() }; } };
            int beats = 0;
            var h = Client(t).Say("smith", "Hello", beats: new BeatRequestData());  // asks nothing: sent as no beats
            h.OnEmotion += e => beats++;
            h.OnAction += a => beats++;
            PumpUntil(() => h.IsDone);
            Assert.IsNull(seen.Beats);
            Assert.AreEqual(0, beats);
            Assert.IsNull(h.Result.Emotion);
        }

        [Test]
        public void AConversationRaisesPerTurnEventsInOrder()
        {
            var f = FakeConversation.Alternating("smith", "bard", 3);
            var events = new List<string>();
            var h = Client(f).Converse(new[] { "smith", "bard" }, topic: "the weather", turns: 3, order: TurnOrder.NamedLast);
            h.OnTurnStarted += t => { Assert.AreEqual(_mainThread, Thread.CurrentThread.ManagedThreadId); events.Add("start " + t.NpcId + " " + t.Turn + (t.PlayerLine != "" ? " after " + t.PlayerLine : "")); };
            h.OnText += (npc, text) => events.Add(npc + ": " + text);
            h.OnTurnDone += t => events.Add("done " + t.NpcId + " '" + t.Text + "' " + t.RoleWeights[t.NpcId]);
            IList<ConversationTurn> all = null;
            h.OnDone += turns => all = turns;
            PumpUntil(() => all != null);
            CollectionAssert.AreEqual(new[]
            {
                "start smith 0", "smith: smith0", "smith:  ends.", "done smith 'smith0 ends.' 1",
                "start bard 1 after Hey!", "bard: bard1", "bard:  ends.", "done bard 'bard1 ends.' 1",
                "start smith 2", "smith: smith2", "smith:  ends.", "done smith 'smith2 ends.' 1",
            }, events);
            Assert.AreEqual(3, all.Count);
            Assert.AreEqual(3, h.Task.Result.Count);
            Assert.AreEqual(TurnOrder.NamedLast, f.Opened.Order);
            Assert.AreEqual("the weather", f.Opened.Topic);
            CollectionAssert.AreEqual(new[] { "smith", "bard" }, f.Opened.NpcIds);
        }

        [Test]
        public void ThePlayerInterjectsBeforeAndDuringAConversation()
        {
            var f = FakeConversation.Alternating("smith", "bard", 4);
            f.DelayMs = 20;
            var h = Client(f).Converse(new[] { "smith", "bard" });
            h.Interject("Wait!");  // before the stream opened: sent once it is
            PumpUntil(() => h.Turns.Count >= 1);
            h.Interject("And then?");
            Assert.IsTrue(h.Task.Wait(5000));
            lock (f.Heard) CollectionAssert.AreEqual(new[] { "Wait!", "And then?" }, f.Heard);
        }

        [Test]
        public void ATokenCancelsTheConversationItWasGivenWith()
        {
            var f = FakeConversation.Alternating("smith", "bard", 50);
            f.DelayMs = 10;
            using (var sceneUnloads = new CancellationTokenSource())
            {
                var h = Client(f).Converse(new[] { "smith", "bard" }, sceneUnloads.Token);
                PumpUntil(() => h.Turns.Count >= 1);
                sceneUnloads.Cancel();
                Assert.IsTrue(h.Task.Wait(1000));
                Assert.AreEqual(DialogueState.Cancelled, h.State);
                Assert.Less(h.Task.Result.Count, 50);
            }
        }

        [Test]
        public void CancellingAConversationKeepsItsFinishedTurnsAndStopsEvents()
        {
            var f = FakeConversation.Alternating("smith", "bard", 50);
            f.DelayMs = 10;
            var h = Client(f).Converse(new[] { "smith", "bard" });
            int texts = 0;
            h.OnText += (npc, t) => texts++;
            PumpUntil(() => h.Turns.Count >= 2);
            h.Cancel();
            Assert.IsTrue(h.Task.Wait(1000));
            Assert.GreaterOrEqual(h.Task.Result.Count, 2);
            Assert.Less(h.Task.Result.Count, 50);
            Assert.AreEqual(DialogueState.Cancelled, h.State);
            _main.Pump();
            int seen = texts;
            Thread.Sleep(60);
            _main.Pump();
            Assert.AreEqual(seen, texts, "no text after cancellation");
        }

        [Test]
        public void AConversationThatCannotBeCarriedOrEndsEarlyFailsOnce()
        {
            var plain = new FakeTransport { Script = (n, r) => new List<Step> { Step.Done() } };
            var h = Client(plain).Converse(new[] { "smith", "bard" });
            DialogueException error = null;
            h.OnError += e => error = e;
            PumpUntil(() => error != null);
            Assert.AreEqual("UNIMPLEMENTED", error.Status);
            Assert.IsTrue(h.Task.IsFaulted);

            var f = FakeConversation.Alternating("smith", "bard", 2);
            f.EndEarly = true;
            var g = Client(f).Converse(new[] { "smith", "bard" });
            error = null;
            g.OnError += e => error = e;
            PumpUntil(() => error != null);
            Assert.AreEqual("UNAVAILABLE", error.Status);
            Assert.IsTrue(error.Transient);
            Assert.Throws<ArgumentException>(() => Client(f).Converse(new[] { "smith" }));
        }
    }
    [TestFixture]
    public class ServerLaunchTests
    {
        [Test]
        public void EditorArgumentsSplitAsAShellWould()
        {
            CollectionAssert.AreEqual(new[] { "serve", "--roles", "/my game/roles", "" },
                                      ServerLaunch.SplitArguments("  serve --roles \"/my game/roles\"  \"\" "));
            CollectionAssert.IsEmpty(ServerLaunch.SplitArguments("   "));
            CollectionAssert.IsEmpty(ServerLaunch.SplitArguments(null));
        }

        [Test]
        public void AFreeLoopbackPortCanBeBound()
        {
            int port = NeekoServer.FreeLoopbackPort();
            Assert.That(port, Is.InRange(1, 65535));
            var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, port);
            listener.Start();  // free when asked: a server started on it can bind it
            listener.Stop();
        }
    }
}
