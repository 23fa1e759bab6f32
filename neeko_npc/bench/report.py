"""The benchmark's figures as a table, a list of targets met or missed, and an optional PNG plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .run import BenchResult

MiB = 1024 * 1024


def _f(x, fmt: str = "{:.1f}", none: str = "n/a") -> str:
    return none if x is None or x != x else fmt.format(x)


def _p(s: dict, key: str = "p50", fmt: str = "{:.1f}") -> str:
    return _f(s.get(key) if s else None, fmt)


@dataclass
class Target:
    key: str
    target: str  # what the table says
    value: float
    met: bool
    shown: str


def targets(r: BenchResult) -> list[Target]:
    """The issue's targets that this run measured, each with the measured value and whether it is met."""
    out = []

    def add(key, name, value, ok, shown):
        out.append(Target(key, name, value, bool(ok), shown))

    base, one = r.decode_row("base"), r.decode_row("one_role")
    if base and one:
        x = one.decode_tok_s["p50"] / base.decode_tok_s["p50"]
        add("decode_one_role", "decode with one role >= 90% of the base model alone", x, x >= 0.9, f"{x:.0%}")
    e2e = r.switching.get("alternate_2")
    if e2e:
        x = e2e["extra_ms_vs_repeat"]
        add("switch_engine", "switching NPC costs < 5 ms more than repeating one (engine, 2 NPCs alternating)", x, x < 5,
            f"{x:+.2f} ms time to first token")
    sw = r.adapter_switch
    if sw:
        add("switch_adapters", "... and when one context must change its adapter set (worst case)", sw["extra_ms"], sw["extra_ms"] < 5,
            f"{sw['extra_ms']:+.2f} ms")
    lb = r.beats.get("learned_extra_ms") if r.beats else None
    if lb is not None:
        add("beat_learned", "a learned beat adds at most 50 ms to its line (median of rounds, each against its own line)", lb, lb <= 50, f"{lb:+.0f} ms")
    t = r.ttft
    if t.get("follow_over_cold") is not None:
        v = t["follow_over_cold"]
        add("follow_up", "follow-up time to first token <= half a cold line of the same length", v, v <= 0.5, f"{v:.2f}x")
    for run, suffix, how in (("snapshots", "", "unannounced"), ("walks", "_walks", "the game prepares each visit")):
        t1 = r.town.get("town_1_over_hot" + suffix)
        if t1 is not None:
            add("town_1" + suffix, f"town, 1 player, {how}: time to first token p50 <= 1.5x a hot follow-up's", t1,
                t1 <= 1.5, f"{t1:.2f}x ({_f(r.town['runs'][run]['levels']['1']['ttft_ms'].get('p50'), '{:.0f}')} ms "
                f"against {_f(r.town['hot_follow_up_ms' + suffix], '{:.0f}')} ms)")
        fv = r.town.get("first_visit_over_hot" + suffix)
        if fv is not None:
            add("town_first" + suffix, f"town, {how}: an NPC's first line after start-up <= 2x a hot follow-up", fv,
                fv <= 2, f"{fv:.2f}x")
    bq = r.town.get("beside_over_quiet")
    if bq is not None:
        add("town_beside", "town, 1 player beside a busy neighbour: time to first token within 2x the quiet town's",
            bq, bq <= 2, f"{bq:.2f}x (p50)")
    p8 = r.town.get("runs", {}).get("pool 8", {}).get("levels", {}).get("8")
    if p8:
        p95, slowest = p8["ttft_ms"].get("p95", float("nan")), p8["stream_tok_s"].get("min", float("nan"))
        add("town_8_ttft", "8 players on 8 contexts: time to first token p95 < 1 s", p95, p95 < 1000, f"{p95:.0f} ms")
        add("town_8_rate", "... every stream at least 10 tokens/s while decoding", slowest, slowest >= 10,
            f"slowest line {slowest:.1f} tokens/s")
        add("town_8_errors", "... and zero errors", p8["errors"], p8["errors"] == 0, f"{p8['errors']} error(s)")
    if r.town.get("runs"):
        over = [lv for run in r.town["runs"].values() for lv in run["levels"].values()
                if lv["snapshot_budget"] and lv["snapshot_bytes_peak"] > lv["snapshot_budget"]]
        add("town_budget", "snapshot memory stays under its budget", len(over), not over,
            "under budget in every run" if not over else f"over budget in {len(over)} run(s)")
    for name, st in r.startup.items():
        ready, slug = st["ready_s"].get("p50", float("nan")), name.replace(", ", "_").replace(" ", "_")
        add(f"startup_{slug}_ready", f"{name}: ready line within 2 s of start", ready, ready <= 2, f"{ready:.2f} s (p50)")
        x = st["first_over_follow"]
        add(f"startup_{slug}_first", f"{name}: an NPC's first line after ready <= 2x a hot follow-up (time to first token)",
            x, x <= 2, f"{x:.2f}x")
        x = st.get("prepared_over_follow", float("nan"))
        add(f"startup_{slug}_prepared", f"{name}: ... the same for an NPC the game prepared as the player walked up",
            x, x <= 2, f"{x:.2f}x")
    nb = r.neighbours.get("runs", {})
    if nb:
        name, run = next(iter(nb.items()))  # the default (or given) threads come first
        for n, limit in (("1", 2), ("2", 4)):
            lv = run["levels"].get(n)
            if lv:
                for kind in ("hot", "cold"):
                    x = lv[f"{kind}_over_quiet"]
                    add(f"neighbours_{n}_{kind}", f"{name}, beside {n} busy neighbour(s): a {kind} line within {limit}x its "
                        "quiet time", x, x <= limit, f"{x:.2f}x")
    c = r.concurrency
    if "1" in c and "4" in c:
        a1 = c["1"]["aggregate_tok_s"]
        worst = min(c[k]["aggregate_tok_s"] for k in ("2", "4") if k in c)
        add("throughput", "aggregate throughput does not fall from 1 to 4 streams (5% noise allowed)", worst / a1, worst / a1 >= 0.95,
            f"lowest of 2 and 4 streams: {worst / a1:.2f}x of 1 stream")
    if c:
        errs = sum(v["errors"] for v in c.values())
        add("no_errors", "no errors under concurrency", errs, errs == 0, f"{errs} error(s)")
    return out


def table(r: BenchResult) -> str:
    m = r.machine
    tgt = r.target
    lines = [f"neeko-npc bench ({r.mode}{', quick' if r.quick else ''}): "
             f"{tgt.get('base_model') or tgt.get('address')}, {len(r.roles)} roles, "
             f"{m['cpus']} CPUs ({m['cpu'] or m['platform']})", ""]
    base = r.decode_row("base")
    if base:
        b = base.decode_tok_s["p50"]
        lines += [f"Decode: greedy, {r.decode_prompt_tokens}-token prompt; median of rounds, setups interleaved",
                  f"  {'setup':<42}{'blocks':>7}{'decode tok/s':>14}{'vs base':>9}{'prefill tok/s':>15}"]
        for row in r.decode:
            d = row.decode_tok_s["p50"]
            lines.append(f"  {row.name:<42}{row.blocks:>7}{d:>14.1f}{d / b:>9.0%}{row.prefill_tok_s['p50']:>15.0f}")
        lines.append("")
    t = r.ttft
    if t:
        lines += ["Time to first token (ms)          p50      p95   prompt tokens",
                  f"  first line{' (cold)' if 'cold_same_length_ms' in t and t['cold_same_length_ms']['n'] else '':<14}"
                  f"{_p(t['first_line_ms']):>9}{_p(t['first_line_ms'], 'p95'):>9}{_p(t['first_prompt_tokens'], fmt='{:.0f}'):>10}",
                  f"  follow-up line        {_p(t['follow_up_ms']):>9}{_p(t['follow_up_ms'], 'p95'):>9}"
                  f"{_p(t['follow_prompt_tokens'], fmt='{:.0f}'):>10}  ({_p(t['follow_cached_tokens'], fmt='{:.0f}')} cached)"]
        if t["cold_same_length_ms"]["n"]:
            lines.append(f"  same prompt, cold     {_p(t['cold_same_length_ms']):>9}{_p(t['cold_same_length_ms'], 'p95'):>9}"
                         f"      follow-up / cold: {_f(t['follow_over_cold'], '{:.2f}')}x")
        lines.append("")
    sw, e2e, rl = r.adapter_switch, r.switching, r.reload_per_npc
    if sw or e2e:
        lines.append("Switching NPC between consecutive requests")
        if sw:
            lines.append(f"  adapter switch alone ({sw['prompt_tokens']}-token cold prompt): repeat {_p(sw['repeat_ms'])} ms, "
                         f"switch {_p(sw['switch_ms'])} ms, extra {sw['extra_ms']:+.2f} ms; "
                         f"set_adapters {_p(sw['set_adapters_us'])} us")
        if e2e:
            parts = [f"{k} {_p(v['ttft_ms'])} ms ({_p(v['cached_tokens'], fmt='{:.0f}')} cached)"
                     for k, v in e2e.items() if k != "errors"]
            lines.append(f"  through the engine, TTFT p50: " + ", ".join(parts))
        if rl:
            lines.append(f"  baseline, one merged model per NPC: load + context + prefill {_p(rl['switch_ms'])} ms "
                         f"(p95 {_p(rl['switch_ms'], 'p95')} ms)")
        lines.append("")
    c = r.concurrency
    if c:
        lines.append(f"Concurrency      {'agg tok/s':>10}{'TTFT p50':>10}{'TTFT p95':>10}{'errors':>8}{'lines':>7}")
        for k, v in c.items():
            lines.append(f"  {k:>2} stream(s) {v['aggregate_tok_s']:>10.1f}{_p(v['ttft_ms'], 'p50', '{:.0f}'):>10}"
                         f"{_p(v['ttft_ms'], 'p95', '{:.0f}'):>10}{v['errors']:>8}{v['lines']:>7}")
            for e in v["error_messages"]:
                lines.append(f"      error: {e}")
        lines.append("")
    b = r.beats
    if b and b["line_ms"]["n"]:
        learned = (f"; with its learned beat {_p(b['with_learned_ms'], fmt='{:.0f}')} ms: {b['learned_extra_ms']:+.0f} ms "
                   f"(median of {b['learned_extra']['n']} rounds' differences)" if b.get("learned_extra_ms") is not None
                   else "; no role has a learned beat")
        lines += [f"Beats: the same greedy line ({b['max_tokens']} tokens at most) without a beat, with the beat question "
                  f"({b['emotions']} emotions, {b['actions']} actions no role learned) and with the NPC's learned beat, time "
                  "to the last chunk (p50); what a beat adds is the median of each round's difference from its own line",
                  f"  without {_p(b['line_ms'], fmt='{:.0f}')} ms, with the question {_p(b['with_beats_ms'], fmt='{:.0f}')} ms: "
                  f"{b['extra_ms']:+.0f} ms (median of {b['extra']['n']}){learned}; same lines: "
                  f"{'yes' if b['same_lines'] else 'NO'}" + (f"; {len(b['errors'])} error(s): {b['errors'][0]}" if b["errors"] else ""), ""]
    cv = {k: v for k, v in r.converse.items() if k != "errors"}
    if cv:
        hot = r.ttft.get("follow_up_ms", {}).get("p50")
        parts = [f"{v['npcs']} NPCs {_p(v['gap_ms'], fmt='{:.0f}')} ms (p95 {_p(v['gap_ms'], 'p95', '{:.0f}')}, "
                 f"{v['changes']} changes)" for v in cv.values()]
        lines += ["Converse: from one turn's end to the next speaker's first text, p50: " + "; ".join(parts)
                  + (f"; a hot follow-up's time to first token {hot:.0f} ms" if hot else "")
                  + (f"; error: {r.converse['errors'][0]}" if r.converse.get("errors") else ""), ""]
    if r.town.get("runs"):
        tw = r.town
        lines.append(f"Town: {tw['npcs']} NPCs, each player {tw['stops_per_player']} stops (an opening line and a follow-up, "
                     "or a bark every third); time to first token in ms")
        lines.append(f"  {'run':<24}{'players':>8}{'lines':>7}{'p50':>7}{'p95':>7}{'stream tok/s p50':>18}{'min':>6}"
                     f"{'hot/snap/cold':>15}{'errors':>8}{'snapshots MiB':>15}{'RSS MiB':>9}")
        for name, run in tw["runs"].items():
            label = f"{name} (pool {run['pool']})"
            for k, v in run["levels"].items():
                sv = v["served"]
                lines.append(f"  {label:<24}{k:>8}{v['lines']:>7}{_p(v['ttft_ms'], fmt='{:.0f}'):>7}"
                             f"{_p(v['ttft_ms'], 'p95', '{:.0f}'):>7}{_p(v['stream_tok_s']):>18}{_p(v['stream_tok_s'], 'min'):>6}"
                             f"{sv['hot']:>5}/{sv['snapshot']}/{sv['cold']:<4}{v['errors']:>6}"
                             f"{v['snapshot_bytes'] / MiB:>15.1f}{_f(v['rss_bytes'] and v['rss_bytes'] / MiB, '{:.0f}'):>9}")
                label = ""
            if run["warm_up"]:
                lines.append(f"    {run['warm_up']}")
        for run in ("snapshots", "walks"):
            one = tw["runs"].get(run, {}).get("levels", {}).get("1")
            if one:
                kinds = ", ".join(f"{k} {_p(v, fmt='{:.0f}')}" for k, v in one["ttft_ms_by_kind"].items())
                lines.append(f"  {run}, 1 player, p50 by kind of line (ms): {kinds}")
        for k, v in tw["runs"].get("walks", {}).get("levels", {}).items():
            pr = v["prepared"]
            lines.append(f"  walks, {k} player(s): {pr['calls']} visits prepared {tw['walk_s']:.1f} s ahead, "
                         f"{pr['skipped']} skipped (every context busy); read {_p(pr['read_tokens'], fmt='{:.0f}')} "
                         f"tokens in {_p(pr['ms'], fmt='{:.0f}')} ms (p50)")
        lines.append("")
    if r.startup:
        lines.append(f"Start-up: a server process started with --port 0, on an empty cache and again on what it left "
                     f"(p50 of {next(iter(r.startup.values()))['ready_s']['n']})")
        lines.append(f"  {'how':<24}{'ready s':>9}{'first TTFT ms':>15}{'follow-up ms':>14}{'first/follow':>14}"
                     f"{'prepared ms':>13}{'prepared/follow':>17}{'first line ms':>15}{'SIGTERM to exit s':>19}")
        for name, st in r.startup.items():
            lines.append(f"  {name:<24}{_p(st['ready_s'], fmt='{:.2f}'):>9}{_p(st['first_ttft_ms'], fmt='{:.0f}'):>15}"
                         f"{_p(st['follow_ttft_ms'], fmt='{:.0f}'):>14}{_f(st['first_over_follow'], '{:.2f}x'):>14}"
                         f"{_p(st.get('prepared_ttft_ms', {}), fmt='{:.0f}'):>13}"
                         f"{_f(st.get('prepared_over_follow', float('nan')), '{:.2f}x'):>17}"
                         f"{_p(st['first_line_ms'], fmt='{:.0f}'):>15}{_p(st['stop_s'], fmt='{:.2f}'):>19}")
            for e in st["errors"][:2]:
                lines.append(f"      error: {e}")
        lines.append("")
    if r.neighbours.get("runs"):
        nb = r.neighbours
        lines.append(f"Beside a game: a 24-token greedy line, hot (prompt held) and cold (prompt read), on a quiet "
                     f"machine and beside busy neighbours, each keeping all {nb['cores']} cores busy (p50, ms)")
        for name, run in nb["runs"].items():
            cells = "  ".join(f"{n} busy: hot {_p(lv['hot_ms'], fmt='{:.0f}')} ({_f(lv['hot_over_quiet'], '{:.2f}x')}), "
                              f"cold {_p(lv['cold_ms'], fmt='{:.0f}')} ({_f(lv['cold_over_quiet'], '{:.2f}x')})"
                              for n, lv in run["levels"].items())
            lines.append(f"  {name}: {cells}")
            for n, lv in run["levels"].items():
                for e in lv["errors"][:2]:
                    lines.append(f"      error ({n} busy): {e}")
        lines.append("")
    mem = r.memory
    if mem:
        lines.append(f"Memory: daemon RSS    {'roles':>6}{'RSS MiB':>9}{'ready s':>9}{'.nrole MiB':>12}")
        for row in mem["rows"]:
            lines.append(f"  {'':<20}{row['count']:>6}{_f(row['rss_bytes'] and row['rss_bytes'] / MiB):>9}"
                         f"{row['ready_s']:>9.1f}{row['nrole_bytes'] / MiB:>12.2f}")
        if "rss_bytes_per_role" in mem:
            lines.append(f"  per role: RSS {mem['rss_bytes_per_role'] / MiB:+.2f} MiB, on disk {mem['nrole_bytes_per_role'] / MiB:.2f} MiB "
                         f".nrole + {mem['adapter_cache_bytes_per_role'] / MiB:.2f} MiB adapter cache")
        for row in mem.get("merged_models", []):
            lines.append(f"  baseline, {row['count']} merged model(s) loaded: RSS {_f(row['rss_bytes'] and row['rss_bytes'] / MiB)} MiB, "
                         f"on disk {row['disk_bytes'] / MiB:.0f} MiB")
        lines.append("")
    for s in r.skipped:
        lines.append(f"skipped: {s}")
    if r.seconds:
        lines.append("Time taken: " + ", ".join(f"{k} {v:.0f} s" for k, v in r.seconds.items())
                     + f"; {sum(r.seconds.values()):.0f} s in all")
    ts = targets(r)
    if ts:
        lines.append("Targets")
        for x in ts:
            lines.append(f"  [{'met' if x.met else 'MISSED'}] {x.target}: {x.shown}")
    return "\n".join(lines)


def plot(r: BenchResult, path: str | Path) -> Path:
    """A 2x2 PNG: decode rates, time to first token, concurrency, memory. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'neeko-npc[bench]'") from None
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    if r.decode:
        ax[0, 0].barh([row.name for row in r.decode], [row.decode_tok_s["p50"] for row in r.decode])
        ax[0, 0].invert_yaxis()
    ax[0, 0].set_title("decode tokens/s (median)")
    t = r.ttft
    if t:
        keys = [("first line", "first_line_ms"), ("follow-up", "follow_up_ms"), ("same prompt, cold", "cold_same_length_ms")]
        keys = [(a, b) for a, b in keys if t.get(b, {}).get("n")]
        ax[0, 1].bar([a for a, _ in keys], [t[b]["p50"] for _, b in keys], label="p50")
        ax[0, 1].scatter([a for a, _ in keys], [t[b]["p95"] for _, b in keys], color="k", label="p95", zorder=3)
        ax[0, 1].legend()
    ax[0, 1].set_title("time to first token (ms)")
    c = r.concurrency
    if c:
        ks = [int(k) for k in c]
        ax[1, 0].plot(ks, [c[str(k)]["aggregate_tok_s"] for k in ks], "o-", label="aggregate tok/s")
        ax2 = ax[1, 0].twinx()
        ax2.plot(ks, [c[str(k)]["ttft_ms"].get("p95", 0) for k in ks], "s--", color="tab:red", label="TTFT p95 ms")
        ax[1, 0].set_xlabel("simultaneous streams")
        ax[1, 0].legend(loc="upper left")
        ax2.legend(loc="lower right")
    ax[1, 0].set_title("concurrency")
    mem = r.memory
    if mem:
        rows = [x for x in mem["rows"] if x["rss_bytes"]]
        ax[1, 1].plot([x["count"] for x in rows], [x["rss_bytes"] / MiB for x in rows], "o-", label="neeko daemon")
        mm = [x for x in mem.get("merged_models", []) if x["rss_bytes"]]
        if mm:
            ax[1, 1].plot([x["count"] for x in mm], [x["rss_bytes"] / MiB for x in mm], "s--", label="one merged model per NPC")
        ax[1, 1].set_xlabel("roles loaded")
        ax[1, 1].legend()
    ax[1, 1].set_title("resident memory (MiB)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
