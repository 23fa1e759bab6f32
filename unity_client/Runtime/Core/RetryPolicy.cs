using System;

namespace Neeko.Npc
{
    /// <summary>
    /// Exponential backoff for a daemon that is down or busy. Only transient errors are retried, and only
    /// before any text arrived (a half-spoken line is never restarted).
    /// </summary>
    public sealed class RetryPolicy
    {
        public int MaxAttempts = 4;
        public TimeSpan InitialDelay = TimeSpan.FromMilliseconds(250);
        public double Multiplier = 2.0;
        public TimeSpan MaxDelay = TimeSpan.FromSeconds(4);
        /// <summary>Each delay is scaled by a random factor in [1 - Jitter, 1 + Jitter].</summary>
        public double Jitter = 0.2;
        readonly Random _random;

        public RetryPolicy(int seed = 0) { _random = seed == 0 ? new Random() : new Random(seed); }

        public static RetryPolicy None { get { return new RetryPolicy { MaxAttempts = 1 }; } }

        /// <summary>The wait before the next try after attempt number `attempt` (1-based) failed; null to give up.</summary>
        public TimeSpan? NextDelay(int attempt, DialogueException error)
        {
            if (error == null || !error.Transient || attempt >= MaxAttempts) return null;
            double ms = InitialDelay.TotalMilliseconds * Math.Pow(Multiplier, attempt - 1);
            ms = Math.Min(ms, MaxDelay.TotalMilliseconds);
            double factor;
            lock (_random) factor = 1.0 + Jitter * (2.0 * _random.NextDouble() - 1.0);
            return TimeSpan.FromMilliseconds(Math.Max(0, ms * factor));
        }
    }
}
