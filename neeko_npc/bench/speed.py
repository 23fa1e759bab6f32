"""The timed sections of the benchmark.

Sections that go through a target (time to first token, switching, concurrency) work the same on an
in-process engine and on a daemon. The decode and adapter-switch sections drive llama.cpp contexts
directly, so every configuration (base, one role, fused, dense mixture, merged model) runs the very
same loop: prefill one prompt, then greedy-decode a fixed number of tokens, end-of-turn ignored.
Configurations are interleaved round by round so that machine noise hits them all alike.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np

from .stats import ratio, summary

OPENING = ["Good day. What is this place?", "I need help, and quickly.", "What do you know about the old mill?",
           "Have you seen a traveller in a grey cloak?", "Is there work for someone like me?",
           "Why is everyone so nervous today?", "Can I trust you?", "What would you sell me for three silver?",
           "Tell me about yourself.", "Where can I sleep tonight?"]
FOLLOW_UP = ["And what happened after that?", "Who else should I ask about it?", "That is not what I heard.",
             "How long have you lived here?", "Could you say that again, more plainly?",
             "Is that a threat?", "What would you do in my place?", "And the price?",
             "Do you have family here?", "Thank you. One more thing: the road north, is it safe?"]


# -- through a target ------------------------------------------------------------------

def run_together(fn, args) -> float:
    """``fn(a)`` for every ``a`` at once, one thread each; the wall time until the last one ends."""
    threads = [threading.Thread(target=fn, args=(a,)) for a in args]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def first_and_follow_up(target, roles: list[str], reps: int, max_tokens: int = 16, progress=None) -> dict:
    """Time to first token of a conversation's first line and of its follow-up.

    In process, each first line starts cold (no cached prefix), and the follow-up is then replayed cold
    with the very same prompt: the follow-up's gain is measured against a line of the same length."""
    tag = uuid.uuid4().hex[:8]
    rows, errors = [], []
    for i in range(reps):
        npc = roles[i % len(roles)]
        session = f"bench-{tag}-{i}"
        target.forget_cache()
        a = target.say(npc, OPENING[i % len(OPENING)], session, max_tokens)
        hist = target.history(session, npc)
        b = target.say(npc, FOLLOW_UP[i % len(FOLLOW_UP)], session, max_tokens)
        row = {"npc": npc, "first_ms": a.ttft * 1000, "first_prompt_tokens": a.prompt_tokens,
               "first_cached_tokens": a.cached_tokens, "follow_ms": b.ttft * 1000,
               "follow_prompt_tokens": b.prompt_tokens, "follow_cached_tokens": b.cached_tokens}
        errors += [x.error for x in (a, b) if x.error]
        if hist is not None and not a.error and not b.error and target.forget_cache():
            target.set_history(session, npc, hist)
            c = target.say(npc, FOLLOW_UP[i % len(FOLLOW_UP)], session, max_tokens)
            if c.error:
                errors.append(c.error)
            elif c.prompt_tokens != b.prompt_tokens:
                errors.append(f"cold replay of {npc}'s follow-up had {c.prompt_tokens} prompt tokens, not {b.prompt_tokens}")
            else:
                row["cold_same_ms"] = c.ttft * 1000
        rows.append(row)
        if progress:
            progress()
    follow = summary([r["follow_ms"] for r in rows])
    cold = summary([r.get("cold_same_ms") for r in rows])
    return {"first_line_ms": summary([r["first_ms"] for r in rows]), "follow_up_ms": follow,
            "cold_same_length_ms": cold,
            "follow_over_cold": ratio(follow.get("p50", 0), cold["p50"]) if cold["n"] else None,
            "first_prompt_tokens": summary([r["first_prompt_tokens"] for r in rows]),
            "follow_prompt_tokens": summary([r["follow_prompt_tokens"] for r in rows]),
            "follow_cached_tokens": summary([r["follow_cached_tokens"] for r in rows]),
            "rows": rows, "errors": errors}


def switching(target, roles: list[str], reps: int, max_tokens: int = 8, progress=None) -> dict:
    """Time to first token when consecutive requests repeat one NPC, alternate two, or rotate all.

    Every request has a new player line and no session, so what is reused is the NPC's cached system
    prompt; which of those stay cached depends on the pool's contexts (--pool-size)."""
    orders = {"repeat": [roles[0]] * reps, "alternate_2": [roles[i % 2] for i in range(reps)] if len(roles) > 1 else None,
              "rotate_all": [roles[i % len(roles)] for i in range(reps)] if len(roles) > 2 else None}
    out, errors = {}, []
    for name, seq in orders.items():
        if seq is None:
            continue
        target.forget_cache()
        for npc in dict.fromkeys(seq):  # warm each NPC once; not timed
            target.say(npc, "Hello.", "", max_tokens)
        lines = [target.say(npc, OPENING[i % len(OPENING)], "", max_tokens) for i, npc in enumerate(seq)]
        errors += [x.error for x in lines if x.error]
        out[name] = {"ttft_ms": summary([x.ttft for x in lines if not x.error], 1000),
                     "cached_tokens": summary([x.cached_tokens for x in lines if not x.error])}
        if progress:
            progress()
    base = out["repeat"]["ttft_ms"]["p50"]
    for name, v in out.items():
        v["extra_ms_vs_repeat"] = v["ttft_ms"]["p50"] - base
    out["errors"] = errors
    return out


def concurrency(target, roles: list[str], levels: list[int], per_stream: int, max_tokens: int = 32, progress=None) -> dict:
    """K streams at once, each a different NPC and session, each saying ``per_stream`` lines."""
    out = {}
    for k in levels:
        lines, lock = [], threading.Lock()
        start = threading.Barrier(k)
        tag = uuid.uuid4().hex[:6]

        def stream(j: int) -> None:
            npc = roles[j % len(roles)]
            start.wait()
            for q in range(per_stream):
                x = target.say(npc, OPENING[(j + q) % len(OPENING)], f"bench-{tag}-{j}", max_tokens, temperature=0.7, seed=j * 31 + q)
                with lock:
                    lines.append(x)

        wall = run_together(stream, range(k))
        ok = [x for x in lines if not x.error]
        toks = sum(x.completion_tokens for x in ok)
        out[str(k)] = {"streams": k, "lines": len(lines), "errors": len(lines) - len(ok),
                       "error_messages": sorted({x.error for x in lines if x.error})[:5],
                       "completion_tokens": toks, "wall_s": wall, "aggregate_tok_s": toks / wall,
                       "ttft_ms": summary([x.ttft for x in ok], 1000)}
        if progress:
            progress()
    return out


def beat_cost(target, roles: list[str], reps: int, max_tokens: int = 24, progress=None) -> dict:
    """What a beat adds to a line: the same greedy line without a beat, with a learned one (the NPC's own head:
    every beat it learned) and with the question (7 emotions, 3 actions no role learned), in turns, each from the
    same cached state (the NPC's prompt already held). Time to the last chunk, which carries the beat. What a
    beat adds is the median over rounds of each round's difference from its own line without one (the rounds'
    NPCs and lines differ, and a fused NPC has no learned beat, so unpaired medians would compare other lines)."""
    from .targets import BENCH_BEATS

    plain, asked, learned, errors, same = [], [], [], [], True
    asked_extra, learned_extra = [], []  # each round's beat time minus its own line's
    for i in range(reps):
        npc = roles[i % len(roles)]
        line = OPENING[i % len(OPENING)]
        target.say(npc, line, "", max_tokens)  # the NPC's prompt is then held, for every line alike; not timed
        own = target.learned_ask(npc)
        runs = [(None, plain), (BENCH_BEATS, asked)] + ([(own, learned)] if own else [])
        got = [(target.say(npc, line, "", max_tokens, beats=ask), ask, into) for ask, into in runs]
        errors += [x.error for x, _, _ in got if x.error]
        if any(x.error for x, _, _ in got):
            continue
        for x, ask, into in got:
            if ask and not (x.beat[0] in ask.emotions and x.beat[1] in [a.id for a in ask.actions]):
                errors.append(f"{npc}: beat {x.beat} is not among the candidates asked")
            same = same and x.text == got[0][0].text
            into.append(x.total)
        asked_extra.append(got[1][0].total - got[0][0].total)
        if own:
            learned_extra.append(got[2][0].total - got[0][0].total)
        if progress:
            progress()
    p, q, r = summary(plain, 1000), summary(asked, 1000), summary(learned, 1000)
    qx, rx = summary(asked_extra, 1000), summary(learned_extra, 1000)
    return {"emotions": len(BENCH_BEATS.emotions), "actions": len(BENCH_BEATS.actions), "max_tokens": max_tokens,
            "line_ms": p, "with_beats_ms": q, "extra": qx, "extra_ms": qx.get("p50") if plain else None,
            "with_learned_ms": r, "learned_extra": rx, "learned_extra_ms": rx.get("p50") if learned else None,
            "same_lines": same, "errors": errors}


def speaker_changes(target, roles: list[str], turns: int, progress=None) -> dict:
    """What changing speaker costs in a Converse: the gap from one turn's end to the next turn's first text, each
    turn a different NPC (its own adapters, its own prompt with every earlier line). Scenes of 2 and 3 NPCs."""
    out, errors = {}, []
    for k in (2, 3):
        if len(roles) < k:
            continue
        gaps, first, ended, speakers = [], None, None, []
        try:
            for npc, turn, text, end, t in target.converse(roles[:k], turns):
                if text and first is None:
                    first = t
                    if ended is not None:
                        gaps.append(t - ended)
                    speakers.append(npc)
                if end:
                    ended, first = t, None
        except Exception as exc:  # measured, not raised
            errors.append(f"{type(exc).__name__}: {exc}")
        out[str(k)] = {"npcs": k, "turns": len(speakers), "changes": sum(a != b for a, b in zip(speakers, speakers[1:])),
                       "gap_ms": summary(gaps, 1000)}
        if progress:
            progress()
    out["errors"] = errors
    return out


# -- on llama.cpp contexts directly ----------------------------------------------------

@dataclass
class DecodeSetup:
    key: str  # what the report and the targets look it up by: base, one_role, fused, merged, dense, dense_many
    name: str  # what the table shows
    ctx: object  # a LlamaContext
    adapters: list
    scales: list[float]
    note: str = ""
    base_ctx: object = None  # contrastive decoding: a second context without adapters, decoding the same tokens
    contrast: float = 0.0


@dataclass
class DecodeRow:
    key: str
    name: str
    blocks: int
    decode_tok_s: dict  # summary() of the rounds
    prefill_tok_s: dict
    note: str = ""


def _prefill(s: DecodeSetup, prompt: list[int]) -> np.ndarray:
    s.ctx.set_adapters(s.adapters, s.scales)
    s.ctx.clear()
    return s.ctx.decode(prompt)


def _contrasted_prefill(s: DecodeSetup, prompt: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """The setup's logits after ``prompt`` and, for a contrasted setup, its base context's (read the same way)."""
    logits = _prefill(s, prompt)
    if s.base_ctx is None:
        return logits, None
    s.base_ctx.set_adapters([], [])
    s.base_ctx.clear()
    return logits, s.base_ctx.decode(prompt)


def decode_rates(setups: list[DecodeSetup], prompt: list[int], n_tokens: int, rounds: int, progress=None) -> list[DecodeRow]:
    """Greedy decode tokens/s (and prefill tokens/s) per setup, end-of-turn ignored. A contrasted setup (one with a
    ``base_ctx``) reads and decodes every token on both contexts and draws from ``contrasted`` logits, as a served
    contrasted line does."""
    from ..roles.sampling import contrasted

    dec = {s.name: [] for s in setups}
    pre = {s.name: [] for s in setups}
    for _ in range(rounds):
        for s in setups:
            t0 = time.perf_counter()
            logits, base = _contrasted_prefill(s, prompt)
            t1 = time.perf_counter()
            for _ in range(n_tokens):
                tok = int(np.argmax(logits if base is None else contrasted(logits, base, s.contrast)))
                logits = s.ctx.decode([tok])
                if base is not None:
                    base = s.base_ctx.decode([tok])
            t2 = time.perf_counter()
            pre[s.name].append(len(prompt) / (t1 - t0))
            dec[s.name].append(n_tokens / (t2 - t1))
            if progress:
                progress()
    return [DecodeRow(s.key, s.name, len(s.adapters), summary(dec[s.name]), summary(pre[s.name]), s.note) for s in setups]


def adapter_switch(ctx, a: tuple[list, list[float]], b: tuple[list, list[float]], prompt: list[int], reps: int) -> dict:
    """The cost of the adapter switch alone: the same cold request for role A, after a request for A
    (repeat) or after one for B (switch). Only what the context held before differs. It measured as a
    fixed overhead (about the same at 8 and 32 prompt tokens), so a short prompt keeps it above the
    noise of the prefill."""
    A = DecodeSetup("a", "a", ctx, *a)
    B = DecodeSetup("b", "b", ctx, *b)
    repeat, switch, set_cost = [], [], []
    _prefill(A, prompt)
    for _ in range(reps):
        _prefill(A, prompt)
        t = time.perf_counter()
        _prefill(A, prompt)
        repeat.append(time.perf_counter() - t)
        _prefill(B, prompt)
        t = time.perf_counter()
        _prefill(A, prompt)
        switch.append(time.perf_counter() - t)
        t = time.perf_counter()
        ctx.set_adapters(*b)
        ctx.set_adapters(*a)
        set_cost.append((time.perf_counter() - t) / 2)
    r, s = summary(repeat, 1000), summary(switch, 1000)
    return {"repeat_ms": r, "switch_ms": s, "extra_ms": s["p50"] - r["p50"], "set_adapters_us": summary(set_cost, 1e6),
            "prompt_tokens": len(prompt)}
