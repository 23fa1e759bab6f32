// Drives Neeko.Npc.NeekoServer from a test (tests/test_unity_server.py), under mono, against the real server.
// Usage: mono ServerDriver.exe MAX_RESTARTS FILE [ARGS...]
// It prints one line per event ("state Ready", "ready PORT PID TOKEN", "error ...") and obeys commands on stdin:
// "wait" (until Ready, 120 s), "kill" (the server process, as a crash would), "dispose", "quit".
using System;
using System.Collections.Generic;
using System.Diagnostics;
using Neeko.Npc;

static class ServerDriver
{
    static void Main(string[] argv)
    {
        var launch = new ServerLaunch { FileName = argv[1], MaxRestarts = int.Parse(argv[0]), FirstBackoff = TimeSpan.FromSeconds(0.2) };
        for (var i = 2; i < argv.Length; i++) launch.Arguments.Add(argv[i]);
        var server = new NeekoServer(launch);
        server.StateChanged += s => Say("state " + s);
        server.Start();
        string command;
        while ((command = Console.ReadLine()) != null)
        {
            if (command == "wait")
            {
                if (server.WaitUntilReady(TimeSpan.FromSeconds(120)))
                    Say("ready " + server.Port + " " + server.ProcessId + " " + server.Token + " " + server.Restarts);
                else
                    Say("not-ready " + server.State + " " + server.LastError);
            }
            else if (command == "kill")
            {
                Process.GetProcessById(server.ProcessId).Kill();
                var deadline = DateTime.UtcNow.AddSeconds(5);  // NeekoServer notices within 200 ms
                while (server.State == ServerState.Ready && DateTime.UtcNow < deadline) System.Threading.Thread.Sleep(10);
                Say("killed " + server.State);
            }
            else if (command == "dispose")
            {
                server.Dispose();
                Say("disposed " + server.State + " " + server.ProcessId);
            }
            else if (command == "quit") return;
        }
    }

    static readonly object Gate = new object();

    static void Say(string line)
    {
        lock (Gate) { Console.WriteLine(line); Console.Out.Flush(); }
    }
}
