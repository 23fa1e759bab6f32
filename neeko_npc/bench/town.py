"""The town: more NPCs than contexts, a scripted day, at 1, 4 and 8 players at once (``bench`` section ``town``).

24 NPCs (the shipped blocks round-robin, each under its own id and its own profile) are served by a pool
of 4 contexts. Each player walks the town: at each NPC they say an opening line and a follow-up (the
follow-up is the conversation's second line, on the same session), and every third stop the NPC barks
first, unprompted. Players start at different NPCs, so at 8 players the contexts keep changing hands.

The same script runs on an engine that keeps conversation states (KV snapshots, the default) and on one
that does not (the baseline, ``--snapshot-mib 0``), each started fresh, so the first round also shows the
first line of each NPC after start-up. A third run walks: before each visit the game calls ``prepare`` (what
``NpcVoice.Prepare`` does as the player enters an NPC's talking range), and the player speaks
``walk_s`` seconds later (``WALK_S``, the bench's size ``town_walk_s``). A last run gives 8 players a
pool of 8 contexts.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from .. import defaults
from ..protocol import Cache
from ..roles.asset import RoleAsset, write_asset
from ..roles.prompt import SceneInfo
from .memory import rss_bytes
from .neighbours import busy_neighbours
from .speed import run_together
from .stats import ratio, summary
from .targets import InProcess, Line

TOWNSFOLK = [("Ada", "baker"), ("Bram", "cooper"), ("Cora", "weaver"), ("Dunn", "miller"), ("Edda", "herbalist"),
             ("Finn", "ferryman"), ("Greta", "brewer"), ("Hale", "tanner"), ("Ines", "midwife"), ("Jory", "stable hand"),
             ("Kell", "chandler"), ("Lise", "glassblower"), ("Mads", "fisherman"), ("Nell", "laundress"),
             ("Orrin", "bell-ringer"), ("Pia", "beekeeper"), ("Quin", "rat-catcher"), ("Rolf", "woodcutter"),
             ("Sanne", "seamstress"), ("Tobin", "lamplighter"), ("Ulla", "goatherd"), ("Vick", "tinker"),
             ("Wren", "scribe"), ("Yara", "potter")]
OPENERS = ["Good morning! What news today?", "Have you seen anyone strange in town?", "What do you do here?",
           "Is there work for a traveller?", "Where can I find a hot meal?", "What do you think of the mayor?"]
FOLLOW_UPS = ["Tell me more about that.", "And what would you do about it?", "Who else should I ask?",
              "How long has it been like this?"]
WALK_S = 1.0  # the "walks" run: seconds from entering an NPC's talking range (prepare) to the player's line
TOWN_SCENE = SceneInfo(location="the town square", time_of_day="morning", weather="clear", player_name="Ash",
                       player_standing="a newcomer")


def town_roles(blocks: list[RoleAsset], n: int, folder: Path) -> list[str]:
    """n role files in ``folder``: the given blocks round-robin, each under its own id and its own profile."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        src = blocks[i % len(blocks)]
        name, trade = TOWNSFOLK[i % len(TOWNSFOLK)]
        rid = f"{name.lower()}_{i}"
        profile = replace(src.profile, id=rid, name=name,
                          persona=f"{name} is the town's {trade}. {src.profile.persona}")
        write_asset(replace(src, profile=profile, sha256="", path=""), folder / f"{rid}.nrole")
        ids.append(rid)
    return ids


@dataclass
class Stop:
    npc: str
    line: str  # "" for a bark: the NPC speaks first
    session: str


def day(npcs: list[str], players: int, stops: int) -> list[list[Stop]]:
    """Each player's stops: ``stops`` NPC visits, each an opening line and a follow-up, or a bark every third."""
    tag = uuid.uuid4().hex[:6]
    plan = []
    for p in range(players):
        route = []
        for s in range(stops):
            npc = npcs[(p * len(npcs) // max(players, 1) + s) % len(npcs)]
            if s % 3 == 2:
                route.append(Stop(npc, "", ""))
                continue
            session = f"town-{tag}-{p}-{s}"
            route += [Stop(npc, OPENERS[(p + s) % len(OPENERS)], session),
                      Stop(npc, FOLLOW_UPS[(p + s) % len(FOLLOW_UPS)], session)]
        plan.append(route)
    return plan


def run_day(engine, plan: list[list[Stop]], max_tokens: int, seen: set[str], walk: float = 0.0) -> dict:
    """Every player's route at once, one thread each; figures per line and for the run. With ``walk`` > 0, each
    visit starts with ``engine.prepare`` and the player speaks ``walk`` seconds after it was called."""
    target = InProcess(engine, TOWN_SCENE)
    prepared: list = []
    lines: list[tuple[str, Line]] = []  # (kind of line, the line)
    lock = threading.Lock()
    start = threading.Barrier(len(plan))
    peak = [engine.snapshot_stats().get("bytes", 0)]

    def player(j: int) -> None:
        route = plan[j]
        start.wait()
        for i, stop in enumerate(route):
            with lock:
                kind = ("bark" if not stop.line else "follow-up" if i and route[i - 1].session == stop.session
                        else "repeat visit" if stop.npc in seen else "first visit")
                seen.add(stop.npc)
            if walk and kind != "follow-up":
                t0 = time.monotonic()
                prepared.append(engine.prepare(stop.npc, TOWN_SCENE, session=stop.session))
                time.sleep(max(0.0, walk - (time.monotonic() - t0)))
            lines.append((kind, target.say(stop.npc, stop.line, stop.session, max_tokens, temperature=0.7, seed=j * 101 + i)))
            with lock:
                peak[0] = max(peak[0], engine.snapshot_stats().get("bytes", 0))

    wall = run_together(player, range(len(plan)))
    ok = [x for _, x in lines if not x.error]
    by_kind = {k: summary([x.ttft for kind, x in lines if kind == k and not x.error], 1000)
               for k in ("first visit", "repeat visit", "follow-up", "bark")}
    stats = engine.snapshot_stats()
    return {
        "players": len(plan), "lines": len(lines), "errors": len(lines) - len(ok),
        "error_messages": sorted({x.error for _, x in lines if x.error})[:5], "wall_s": wall,
        "ttft_ms": summary([x.ttft for x in ok], 1000),
        "ttft_ms_by_kind": {k: v for k, v in by_kind.items() if v["n"]},
        "ttft_ms_by_cache": {c: summary([x.ttft for x in ok if x.cache == c], 1000) for c in Cache.ALL},
        "served": {c: sum(x.cache == c for x in ok) for c in Cache.ALL},
        "stream_tok_s": summary([x.decode_rate for x in ok]),
        "aggregate_tok_s": sum(x.completion_tokens for x in ok) / wall,
        "snapshot_bytes_peak": peak[0], "snapshot_bytes": stats.get("bytes", 0), "snapshot_budget": stats.get("budget", 0),
        "snapshots": stats.get("count", 0), "rss_bytes": rss_bytes(),
        "prepared": {"calls": len(prepared), "skipped": sum(bool(p.skipped) for p in prepared),
                     "read_tokens": summary([p.read_tokens for p in prepared if not p.skipped]),
                     "ms": summary([p.ms for p in prepared if not p.skipped])} if walk else {},
    }


def town(make_engine, npcs: list[str], levels: list[int], stops: int, max_tokens: int, progress=None,
         walk_s: float = WALK_S, beside: bool = False) -> dict:
    """The day at each level of players, on a fresh engine that keeps states and on one that does not; then 8
    players on 8 contexts; with ``beside``, the day of one player again beside a busy neighbour (neighbours.py),
    as a game would be. ``make_engine(pool_size, snapshots)`` starts an engine and waits for its warm-up."""
    out = {"npcs": len(npcs), "levels": levels, "stops_per_player": stops, "walk_s": walk_s, "runs": {}}
    runs = [("snapshots", 4, True, 0.0, levels, 0), ("baseline", 4, False, 0.0, levels, 0),
            ("walks", 4, True, walk_s, levels, 0), ("pool 8", 8, True, 0.0, [8], 0)]
    if beside:
        runs.append(("beside a game", 4, True, 0.0, [1], 1))
    for name, pool, snapshots, walk, lv, neighbours in runs:
        engine, warm_s = make_engine(pool, snapshots)
        try:
            seen: set[str] = set()
            with busy_neighbours(neighbours, defaults.cores()):
                days = {str(k): run_day(engine, day(npcs, k, stops), max_tokens, seen, walk) for k in lv}
            out["runs"][name] = {"pool": pool, "snapshots": snapshots, "walk_s": walk, "warm_up_s": warm_s,
                                 "warm_up": engine.warm_summary, "neighbours": neighbours, "levels": days}
        finally:
            engine.close()
        if progress:
            progress()
    if beside:
        one, quiet = out["runs"]["beside a game"]["levels"]["1"], out["runs"]["snapshots"]["levels"].get("1")
        if quiet:
            out["beside_over_quiet"] = ratio(one["ttft_ms"].get("p50", float("nan")), quiet["ttft_ms"].get("p50", float("nan")))
    # the targets' ratios, against the same run's hot follow-ups: with no warning of the visit, and walking up
    for run, suffix in (("snapshots", ""), ("walks", "_walks")):
        one = out["runs"][run]["levels"].get("1")
        if not one:
            continue
        hot = one["ttft_ms_by_kind"].get("follow-up", {}).get("p50")
        out["hot_follow_up_ms" + suffix] = hot
        out["town_1_over_hot" + suffix] = ratio(one["ttft_ms"]["p50"], hot) if hot else None
        first = one["ttft_ms_by_kind"].get("first visit", {}).get("p50")
        out["first_visit_over_hot" + suffix] = ratio(first, hot) if first and hot else None
    return out
