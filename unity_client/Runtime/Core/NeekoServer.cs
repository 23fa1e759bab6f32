using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Neeko.Npc
{
    /// <summary>Where a server process the game started stands.</summary>
    public enum ServerState { Stopped, Starting, Ready, Restarting, Failed }

    /// <summary>
    /// How to start the server: the bundle a game ships (<c>neeko-npc bundle</c>: FileName is its
    /// <c>neeko-npc-server</c>, no Arguments needed), or in the Editor a command such as
    /// <c>neeko-npc</c> with Arguments <c>serve --roles Assets/Roles</c>. NeekoServer adds the launch
    /// contract's own flags (<c>--port</c>, <c>--parent-pid</c>) and passes the token in the environment.
    /// </summary>
    public sealed class ServerLaunch
    {
        public string FileName;
        public List<string> Arguments = new List<string>();
        public string WorkingDirectory;
        /// <summary>Extra environment variables, e.g. NEEKO_NPC_CACHE to keep the server's cache in the game's data folder.</summary>
        public Dictionary<string, string> Environment = new Dictionary<string, string>();
        /// <summary>0: a free port at the first start; a restart asks for the same port again.</summary>
        public int Port;
        /// <summary>Longest wait for the ready line of one start.</summary>
        public TimeSpan ReadyTimeout = TimeSpan.FromSeconds(120);
        /// <summary>Starts in a row that may fail (exit, or no ready line) before the server is Failed.</summary>
        public int MaxRestarts = 5;
        public TimeSpan FirstBackoff = TimeSpan.FromSeconds(0.5);
        public TimeSpan MaxBackoff = TimeSpan.FromSeconds(30);

        /// <summary>Arguments typed on one line (a settings field), split as a shell would: spaces separate, double
        /// quotes group ("" is an empty argument).</summary>
        public static List<string> SplitArguments(string text)
        {
            var args = new List<string>();
            if (string.IsNullOrEmpty(text)) return args;
            var current = new StringBuilder();
            bool quoted = false, any = false;
            foreach (var c in text)
            {
                if (c == '"') { quoted = !quoted; any = true; }
                else if (char.IsWhiteSpace(c) && !quoted)
                {
                    if (any) args.Add(current.ToString());
                    current.Length = 0; any = false;
                }
                else { current.Append(c); any = true; }
            }
            if (any) args.Add(current.ToString());
            return args;
        }
    }

    /// <summary>
    /// Starts the neeko-npc server as a child process and keeps it running, by the launch contract:
    /// it reads the one JSON line the server writes on stdout (<c>{"event": "ready", "port": N, ...}</c> or
    /// <c>{"event": "failed", "error": "..."}</c>), passes this process's id (<c>--parent-pid</c>, so a crashed
    /// game leaves no server behind) and a token generated here in the environment (never on a command line),
    /// restarts the server with backoff if it dies, and stops it on Dispose. No Unity references: the
    /// NeekoRuntime component (Neeko.Npc.Unity) runs it from StreamingAssets.
    /// </summary>
    public sealed class NeekoServer : IDisposable
    {
        public const string TokenVariable = "NEEKO_NPC_TOKEN";

        readonly ServerLaunch _launch;
        readonly object _lock = new object();
        readonly ManualResetEvent _stop = new ManualResetEvent(false);
        readonly ManualResetEvent _ready = new ManualResetEvent(false);
        Thread _thread;
        Process _process;
        ServerState _state = ServerState.Stopped;
        bool _disposed;

        /// <param name="token">The bearer token clients must send; null generates a random one.</param>
        public NeekoServer(ServerLaunch launch, string token = null)
        {
            if (launch == null) throw new ArgumentNullException("launch");
            if (string.IsNullOrEmpty(launch.FileName)) throw new ArgumentException("ServerLaunch.FileName is required", "launch");
            _launch = launch;
            Token = token ?? NewToken();
            Port = launch.Port;
        }

        public ServerState State { get { lock (_lock) return _state; } }
        /// <summary>The port the server listens on (127.0.0.1), once Ready.</summary>
        public int Port { get; private set; }
        public string Address { get { return "127.0.0.1:" + Port.ToString(CultureInfo.InvariantCulture); } }
        public string Token { get; private set; }
        /// <summary>The running server's process id; 0 when none runs.</summary>
        public int ProcessId { get; private set; }
        /// <summary>Why the last start failed or the server stopped, in the server's words where it gave any.</summary>
        public string LastError { get; private set; }
        /// <summary>Starts after the first (after a crash, or a start that failed).</summary>
        public int Restarts { get; private set; }

        /// <summary>Raised on a background thread at every change of State.</summary>
        public event Action<ServerState> StateChanged;
        /// <summary>Each line the server writes to stderr (its log), on a background thread.</summary>
        public event Action<string> Log;

        /// <summary>Start the server in the background; State goes Starting, then Ready or Failed.</summary>
        public void Start()
        {
            lock (_lock)
            {
                if (_disposed) throw new ObjectDisposedException("NeekoServer");
                if (_thread != null) return;
                _thread = new Thread(Run) { IsBackground = true, Name = "neeko-server" };
            }
            _thread.Start();
        }

        /// <summary>Block until Ready (true), or until Failed, Stopped or the timeout (false).</summary>
        public bool WaitUntilReady(TimeSpan timeout)
        {
            var deadline = DateTime.UtcNow + timeout;
            while (true)
            {
                var state = State;
                if (state == ServerState.Ready) return true;
                if (state == ServerState.Failed || (state == ServerState.Stopped && _thread == null) || _disposed) return false;
                var left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero) return false;
                WaitHandle.WaitAny(new WaitHandle[] { _ready, _stop }, left < TimeSpan.FromMilliseconds(100) ? left : TimeSpan.FromMilliseconds(100));
            }
        }

        public Task<bool> WaitUntilReadyAsync(TimeSpan timeout)
        {
            return Task.Run(() => WaitUntilReady(timeout));
        }

        /// <summary>Stop the server (it is killed: it keeps nothing that needs saving) and wait for it to end.</summary>
        public void Dispose()
        {
            Thread thread;
            lock (_lock)
            {
                if (_disposed) return;
                _disposed = true;
                thread = _thread;
            }
            _stop.Set();
            KillProcess();
            if (thread != null) thread.Join(TimeSpan.FromSeconds(10));
            SetState(ServerState.Stopped);
        }

        void Run()
        {
            var failures = 0;
            var backoff = _launch.FirstBackoff;
            while (!_stop.WaitOne(0))
            {
                SetState(Restarts == 0 && failures == 0 ? ServerState.Starting : ServerState.Restarting);
                var ready = RunOnce();
                if (_stop.WaitOne(0)) break;
                if (ready)
                {
                    failures = 0;  // it had been serving: a crash starts the count again
                    backoff = _launch.FirstBackoff;
                }
                else
                {
                    Port = _launch.Port;  // the old port may be taken now: the next start picks again
                    if (++failures > _launch.MaxRestarts)
                    {
                        SetState(ServerState.Failed);
                        return;
                    }
                }
                SetState(ServerState.Restarting);
                if (_stop.WaitOne(backoff)) break;
                backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, _launch.MaxBackoff.Ticks));
                Restarts++;
            }
            SetState(ServerState.Stopped);
        }

        /// <summary>One start: returns whether it got to Ready (it has exited or been stopped since).</summary>
        bool RunOnce()
        {
            Process process;
            try
            {
                process = StartProcess();
            }
            catch (Exception e)
            {
                LastError = "cannot start " + _launch.FileName + ": " + e.Message;
                return false;
            }
            var reachedReady = false;
            try
            {
                var first = process.StandardOutput.ReadLineAsync();
                var waited = WaitHandle.WaitAny(new[] { ((IAsyncResult)first).AsyncWaitHandle, _stop }, _launch.ReadyTimeout);
                if (waited != 0)
                {
                    if (waited == WaitHandle.WaitTimeout)
                        LastError = "no ready line from the server within " + _launch.ReadyTimeout.TotalSeconds + " s";
                    return false;
                }
                var line = first.Result;
                if (line == null)
                {
                    process.WaitForExit(2000);
                    LastError = "the server exited before it was ready" + ExitCode(process);
                    return false;
                }
                var fields = LaunchLine.Parse(line);
                string ev;
                if (!fields.TryGetValue("event", out ev) || ev != "ready")
                {
                    string error;
                    LastError = fields.TryGetValue("error", out error) ? error : "unexpected line from the server: " + line;
                    return false;
                }
                Port = int.Parse(fields["port"], CultureInfo.InvariantCulture);
                reachedReady = true;
                _ready.Set();
                SetState(ServerState.Ready);
                while (!process.WaitForExit(200))
                    if (_stop.WaitOne(0)) return true;
                LastError = "the server exited" + ExitCode(process);
                return true;
            }
            finally
            {
                _ready.Reset();
                if (!process.HasExited) KillProcess();
                lock (_lock)
                {
                    if (_process == process) { _process = null; ProcessId = 0; }
                }
                process.Dispose();
                if (!reachedReady && LastError == null) LastError = "the server did not start";
            }
        }

        Process StartProcess()
        {
            var args = new List<string>(_launch.Arguments);
            args.Add("--port");
            args.Add(Port.ToString(CultureInfo.InvariantCulture));
            args.Add("--parent-pid");
            args.Add(Process.GetCurrentProcess().Id.ToString(CultureInfo.InvariantCulture));
            var info = new ProcessStartInfo(_launch.FileName, JoinArguments(args))
            {
                UseShellExecute = false, CreateNoWindow = true, RedirectStandardOutput = true, RedirectStandardError = true,
                WorkingDirectory = _launch.WorkingDirectory ?? "",
            };
            foreach (var kv in _launch.Environment) info.EnvironmentVariables[kv.Key] = kv.Value;
            info.EnvironmentVariables[TokenVariable] = Token;
            var process = new Process { StartInfo = info };
            process.ErrorDataReceived += (sender, e) =>
            {
                var log = Log;
                if (e.Data != null && log != null) log(e.Data);
            };
            lock (_lock)
            {
                if (_stop.WaitOne(0)) throw new OperationCanceledException("stopped");
                process.Start();
                _process = process;
                ProcessId = process.Id;
            }
            process.BeginErrorReadLine();
            LastError = null;
            return process;
        }

        void KillProcess()
        {
            Process process;
            lock (_lock) process = _process;
            if (process == null) return;
            try
            {
                if (!process.HasExited) process.Kill();
                process.WaitForExit(5000);
            }
            catch (InvalidOperationException) { }  // it ended meanwhile
            catch (System.ComponentModel.Win32Exception) { }
        }

        void SetState(ServerState state)
        {
            lock (_lock)
            {
                if (_state == state) return;
                if (_disposed && state != ServerState.Stopped) return;
                _state = state;
            }
            var changed = StateChanged;
            if (changed != null) changed(state);
        }

        static string ExitCode(Process process)
        {
            try { return process.HasExited ? " (exit code " + process.ExitCode + ")" : ""; }
            catch (InvalidOperationException) { return ""; }
        }

        /// <summary>A TCP port on 127.0.0.1 that is free now, so a client can be made before the server is ready
        /// (ServerLaunch.Port). Another process could take it before the server binds it: the start then fails with
        /// the server's own message in LastError.</summary>
        public static int FreeLoopbackPort()
        {
            var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
            listener.Start();
            try { return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port; }
            finally { listener.Stop(); }
        }

        static string NewToken()
        {
            var bytes = new byte[24];
            using (var rng = RandomNumberGenerator.Create()) rng.GetBytes(bytes);
            var sb = new StringBuilder(48);
            foreach (var b in bytes) sb.Append(b.ToString("x2", CultureInfo.InvariantCulture));
            return sb.ToString();
        }

        /// <summary>Arguments quoted for ProcessStartInfo (the same rules on Mono and .NET): spaces and quotes survive.</summary>
        public static string JoinArguments(IEnumerable<string> args)
        {
            var sb = new StringBuilder();
            foreach (var a in args)
            {
                if (sb.Length > 0) sb.Append(' ');
                if (a.Length > 0 && a.IndexOfAny(new[] { ' ', '\t', '"' }) < 0) { sb.Append(a); continue; }
                sb.Append('"');
                var slashes = 0;
                foreach (var c in a)
                {
                    if (c == '\\') { slashes++; continue; }
                    if (c == '"') sb.Append('\\', slashes * 2 + 1);
                    else sb.Append('\\', slashes);
                    slashes = 0;
                    sb.Append(c);
                }
                sb.Append('\\', slashes * 2);
                sb.Append('"');
            }
            return sb.ToString();
        }
    }

    /// <summary>The server's one stdout line: a flat JSON object of strings and numbers, read without a JSON library.</summary>
    public static class LaunchLine
    {
        public static Dictionary<string, string> Parse(string line)
        {
            var fields = new Dictionary<string, string>();
            var i = 0;
            Skip(line, ref i);
            if (i >= line.Length || line[i] != '{') return fields;
            i++;
            while (true)
            {
                Skip(line, ref i);
                if (i >= line.Length || line[i] == '}') return fields;
                var key = ReadString(line, ref i);
                Skip(line, ref i);
                if (key == null || i >= line.Length || line[i] != ':') return fields;
                i++;
                Skip(line, ref i);
                string value;
                if (i < line.Length && line[i] == '"') value = ReadString(line, ref i);
                else
                {
                    var start = i;
                    while (i < line.Length && line[i] != ',' && line[i] != '}') i++;
                    value = line.Substring(start, i - start).Trim();
                }
                if (value == null) return fields;
                fields[key] = value;
                Skip(line, ref i);
                if (i < line.Length && line[i] == ',') i++;
            }
        }

        static void Skip(string s, ref int i)
        {
            while (i < s.Length && char.IsWhiteSpace(s[i])) i++;
        }

        static string ReadString(string s, ref int i)
        {
            if (i >= s.Length || s[i] != '"') return null;
            var sb = new StringBuilder();
            for (i++; i < s.Length; i++)
            {
                var c = s[i];
                if (c == '"') { i++; return sb.ToString(); }
                if (c != '\\' || i + 1 >= s.Length) { sb.Append(c); continue; }
                c = s[++i];
                switch (c)
                {
                    case 'n': sb.Append('\n'); break;
                    case 't': sb.Append('\t'); break;
                    case 'r': sb.Append('\r'); break;
                    case 'b': sb.Append('\b'); break;
                    case 'f': sb.Append('\f'); break;
                    case 'u':
                        if (i + 4 < s.Length) { sb.Append((char)int.Parse(s.Substring(i + 1, 4), NumberStyles.HexNumber)); i += 4; }
                        break;
                    default: sb.Append(c); break;  // \" \\ \/
                }
            }
            return null;
        }
    }
}
