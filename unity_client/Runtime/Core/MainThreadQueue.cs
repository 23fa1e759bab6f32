using System;
using System.Collections.Concurrent;

namespace Neeko.Npc
{
    /// <summary>
    /// Callbacks posted from any thread, run on the thread that calls Pump (Unity's main thread, once per
    /// frame). A callback that throws never breaks the loop: the exception goes to CallbackFailed.
    /// </summary>
    public sealed class MainThreadQueue
    {
        readonly ConcurrentQueue<Action> _queue = new ConcurrentQueue<Action>();

        /// <summary>Raised (on the pumping thread) when a posted callback throws.</summary>
        public event Action<Exception> CallbackFailed;

        public int Count { get { return _queue.Count; } }

        public void Post(Action action)
        {
            if (action == null) throw new ArgumentNullException("action");
            _queue.Enqueue(action);
        }

        /// <summary>Run up to maxCallbacks queued callbacks; returns how many ran.</summary>
        public int Pump(int maxCallbacks = int.MaxValue)
        {
            int ran = 0;
            Action action;
            while (ran < maxCallbacks && _queue.TryDequeue(out action))
            {
                ran++;
                try { action(); }
                catch (Exception e)
                {
                    var handler = CallbackFailed;
                    if (handler != null) { try { handler(e); } catch { } }
                }
            }
            return ran;
        }
    }
}
