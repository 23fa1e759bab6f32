"""Talking to a running daemon: say, converse, roles (what a game does over gRPC, from a terminal)."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import click

from .. import defaults as D
from ..protocol import Order
from . import client_options, main


@contextmanager
def daemon_client(address: str, token: str, tls_ca):
    """A Client for the command, closed after it; a gRPC error becomes one line ("NOT_FOUND: no NPC ...")."""
    import grpc

    from ..server.client import Client

    client = Client(address, token, tls_ca)
    try:
        yield client
    except grpc.RpcError as exc:
        raise click.ClickException(f"{exc.code().name}: {exc.details()}") from None
    finally:
        client.close()


def line_options(max_tokens: int, temperature: float | None, seed: int | None, contrast: float | None) -> dict:
    """GenerationOptions fields from say's and converse's flags: what is left out (None, or max_tokens 0) is the
    daemon's default; --seed 0 is a seed too."""
    opts = {"max_tokens": max_tokens} if max_tokens else {}
    given = {"temperature": temperature, "seed": seed, "contrast": contrast}
    return opts | {k: v for k, v in given.items() if v is not None}


@main.command()
@click.argument("npc_id")
@click.argument("line", default="")
@click.option("--scene", "scene_path", type=click.Path(exists=True, dir_okay=False), help="SceneContext JSON (docs/daemon.md).")
@click.option("--session", default="", help="Conversation id: the daemon remembers earlier lines of this session.")
@click.option("--max-tokens", default=0, type=click.IntRange(0), help="0: the daemon's default.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=None, help=f"Sampling temperature; 0 is greedy. Default: the daemon's ({D.TEMPERATURE}).")
@click.option("--seed", type=click.IntRange(0), default=None, help="Sampling seed, for a repeatable line.")
@click.option("--contrast", type=click.FloatRange(0, D.MAX_CONTRAST), default=None,
              help="Contrastive decoding: the NPC's voice pushed this far from the base model's; 0 is off. Default: the "
                   "daemon's (serve --contrast).")
@click.option("--blend", default=None, metavar="ROLE=W,...",
              help="A procedural NPC (no role file) speaking with a mix of hosted roles, e.g. innkeeper=0.7,merchant=0.3. "
                   "Needs --profile.")
@click.option("--profile", "profile_path", type=click.Path(exists=True, dir_okay=False),
              help="With --blend: the procedural NPC's profile JSON (name and persona; the id may be left out).")
@click.option("--sentences", is_flag=True, help="Print one complete sentence a line, as each completes (for text-to-speech).")
@click.option("--stats", is_flag=True, help="Print token counts, time to first token and the blocks' weights.")
@click.option("--prepare", is_flag=True,
              help="First ask the daemon to read the NPC's prompt up to the line (what a game does as the player walks "
                   "up), and print what it read.")
@click.option("--emotion", is_flag=True, help="Ask for the line's emotion (neutral, happy, sad, angry, afraid, surprised, "
                                            "disgusted); printed after the line.")
@click.option("--emotions", default="", metavar="E,...", help="Narrow the emotions to these (implies --emotion).")
@click.option("--action", "actions", multiple=True, metavar="ID[:WHAT]",
              help="An action the scene offers, e.g. --action 'open_shop:show the shop window' --action none; the NPC "
                   "picks exactly one, printed after the line. Repeat for each.")
@client_options
def say(npc_id, line, scene_path, session, max_tokens, temperature, seed, contrast, blend, profile_path, sentences, stats, prepare,
        emotion, emotions, actions, address, tls_ca, token):
    """Stream NPC_ID's reply to LINE from a running daemon."""
    from ..server.client import beat_request, describe_beats, load_npc_profile, load_scene, parse_blend

    if bool(blend) != bool(profile_path):
        raise click.UsageError("--blend and --profile go together: a procedural NPC needs a voice and a character")
    try:
        scene = load_scene(scene_path) if scene_path else None
        procedural = {"blend": parse_blend(blend), "profile": load_npc_profile(profile_path, npc_id)} if blend else {}
        beats = beat_request(emotion, emotions, list(actions))
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    opts = line_options(max_tokens, temperature, seed, contrast)
    from ..server.sentences import sentences as split_sentences
    from ..server.words import CACHE_WORD

    with daemon_client(address, token, tls_ca) as client:
        if prepare:
            p = client.prepare(npc_id, scene, session, **procedural)
            click.echo(f"[prepared: skipped, {p.skipped}]" if p.skipped else
                       f"[prepared: {p.prompt_tokens} tokens before the line, {p.read_tokens} read "
                       f"({CACHE_WORD.get(p.prompt_cache, '')}), "
                       f"{p.elapsed_ms:.0f} ms]", err=True)
        last = None

        def texts():
            nonlocal last
            for chunk in client.say(npc_id, line, scene, session, **procedural, beats=beats, **opts):
                last = chunk
                yield chunk.text

        if sentences:
            for sentence in split_sentences(texts()):
                click.echo(sentence)
        else:
            for text in texts():
                click.echo(text, nl=False)
                sys.stdout.flush()
            click.echo("")
        beat = describe_beats(last) if last is not None else ""
        if beat:
            click.echo(beat)
        if stats and last is not None:
            w = ", ".join(f"{x.role_id} {x.weight:.2f}" for x in last.role_weights)
            click.echo(f"[{last.completion_tokens} tokens, prompt {last.prompt_tokens} ({last.cached_prompt_tokens} cached, "
                       f"{CACHE_WORD.get(last.prompt_cache, '')}), first token {last.time_to_first_token_ms:.0f} ms, "
                       f"blocks: {w}]", err=True)


@main.command()
@click.argument("npc_ids", nargs=-1, required=True)
@click.option("--topic", default="", help="What they talk about.")
@click.option("--line", "opening_line", default="", help="The player's opening line; without one, the first NPC opens.")
@click.option("--turns", default=0, type=click.IntRange(0), help=f"Turns to generate; 0: the daemon's default ({D.CONVERSE_TURNS}).")
@click.option("--order", type=click.Choice(list(Order.ALL)), default=Order.ROUND_ROBIN, show_default=True,
              help="named_last: the NPC the last line named speaks next.")
@click.option("--scene", "scene_path", type=click.Path(exists=True, dir_okay=False), help="SceneContext JSON (docs/daemon.md).")
@click.option("--max-tokens", default=0, type=click.IntRange(0), help="Per turn; 0: the daemon's default.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=None, help=f"Sampling temperature; 0 is greedy. Default: the daemon's ({D.TEMPERATURE}).")
@click.option("--seed", type=click.IntRange(0), default=None, help="Sampling seed, for a repeatable scene.")
@click.option("--contrast", type=click.FloatRange(0, D.MAX_CONTRAST), default=None,
              help="Contrastive decoding for every turn; 0 is off. Default: the daemon's (serve --contrast).")
@client_options
def converse(npc_ids, topic, opening_line, turns, order, scene_path, max_tokens, temperature, seed, contrast, address, tls_ca,
             token):
    """Stream a conversation among 2 to 4 hosted NPCs to the terminal, one speaker a line."""
    from ..server.client import load_scene
    from ..server.words import ORDER

    try:
        scene = load_scene(scene_path) if scene_path else None
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    opts = line_options(max_tokens, temperature, seed, contrast)
    with daemon_client(address, token, tls_ca) as client:
        turn = None
        for chunk in client.converse(list(npc_ids), scene, topic, opening_line, turns, ORDER[order], **opts):
            if chunk.done:
                break
            text = chunk.text
            if chunk.turn != turn:  # a new speaker: its name, then its line as it streams
                turn, text = chunk.turn, text.lstrip()
                click.echo(f"{chunk.npc_id}: ", nl=False)
            click.echo(text, nl=False)
            sys.stdout.flush()
            if chunk.turn_done:
                click.echo("")


@main.command()
@client_options
def roles(address, tls_ca, token):
    """List the roles a running daemon hosts, one a line, id first."""
    with daemon_client(address, token, tls_ca) as client:
        res = client.roles()
    for r in res.roles:
        mix = ", ".join(f"{w.role_id} {w.weight:.2f}" for w in r.weights)
        click.echo(f"{r.id}\t{r.name}\t{r.kind}\t{mix}")
    for p in res.problems:
        click.echo(f"problem: {p.error}", err=True)
