using System;
using System.Collections.Generic;
using System.Linq;

namespace Neeko.Npc
{
    /// <summary>A character near the speaking NPC, as the game sees it.</summary>
    public struct NearbyCharacter
    {
        public string Name;
        public float Distance;
        public NearbyCharacter(string name, float distance) { Name = name; Distance = distance; }
    }

    /// <summary>
    /// Builds the SceneData for a line: what the game observes (location, clock, who is near), then the
    /// designer's overrides on top (any non-empty override wins; lists and facts are merged).
    /// </summary>
    public sealed class SceneContextBuilder
    {
        public float NearbyRadius = 12f;
        public int MaxNearby = 6;
        public int MaxRecentEvents = 8;

        /// <summary>"night", "dawn", "morning", "noon", "afternoon", "evening" from an hour in [0, 24).</summary>
        public static string TimeOfDayFromHour(float hour)
        {
            hour = ((hour % 24f) + 24f) % 24f;
            if (hour < 5f) return "night";
            if (hour < 7f) return "dawn";
            if (hour < 11.5f) return "morning";
            if (hour < 13.5f) return "noon";
            if (hour < 17.5f) return "afternoon";
            if (hour < 21f) return "evening";
            return "night";
        }

        public SceneData Build(string location, float? hour, IEnumerable<NearbyCharacter> nearby,
                               IEnumerable<string> recentEvents, SceneData overrides)
        {
            var s = new SceneData
            {
                Location = location ?? "",
                TimeOfDay = hour.HasValue ? TimeOfDayFromHour(hour.Value) : "",
            };
            if (nearby != null)
            {
                s.NearbyCharacters = nearby.Where(c => !string.IsNullOrEmpty(c.Name) && c.Distance <= NearbyRadius)
                    .OrderBy(c => c.Distance).Select(c => c.Name).Distinct().Take(MaxNearby).ToList();
            }
            if (recentEvents != null)
            {
                var events = recentEvents.Where(e => !string.IsNullOrEmpty(e)).ToList();
                s.RecentEvents = events.Skip(Math.Max(0, events.Count - MaxRecentEvents)).ToList();
            }
            return Apply(s, overrides);
        }

        /// <summary>Designer overrides on top of the observed scene.</summary>
        public static SceneData Apply(SceneData observed, SceneData overrides)
        {
            if (overrides == null) return observed;
            Func<string, string, string> pick = (o, v) => string.IsNullOrEmpty(o) ? v : o;
            var s = new SceneData
            {
                Location = pick(overrides.Location, observed.Location),
                TimeOfDay = pick(overrides.TimeOfDay, observed.TimeOfDay),
                Weather = pick(overrides.Weather, observed.Weather),
                NpcMood = pick(overrides.NpcMood, observed.NpcMood),
                NpcActivity = pick(overrides.NpcActivity, observed.NpcActivity),
                PlayerName = pick(overrides.PlayerName, observed.PlayerName),
                PlayerStanding = pick(overrides.PlayerStanding, observed.PlayerStanding),
                RecentEvents = observed.RecentEvents.Concat(overrides.RecentEvents).Distinct().ToList(),
                NearbyCharacters = observed.NearbyCharacters.Concat(overrides.NearbyCharacters).Distinct().ToList(),
                Facts = new Dictionary<string, string>(observed.Facts),
            };
            foreach (var kv in overrides.Facts) s.Facts[kv.Key] = kv.Value;
            return s;
        }
    }
}
