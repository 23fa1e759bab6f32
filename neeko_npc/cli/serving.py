"""Serving: serve (the dialogue daemon) and bundle (the daemon as one folder a game ships)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from .. import defaults as D
from . import base_model_option, friendly_errors, main, roles_option


# -- serving -----------------------------------------------------------------------------

@main.command()
@roles_option("Folder of .nrole files; watched for changes.", exists=False)
@base_model_option
@click.option("--host", default=D.HOST, show_default=True, help="Address to bind; 0.0.0.0 exposes the daemon to the network.")
@click.option("--port", default=D.PORT, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--token", envvar=D.TOKEN_ENV, default="",
              help=f"Require 'authorization: Bearer TOKEN'. Better from the environment ({D.TOKEN_ENV}) or --token-file: "
                   "a command line is visible to every process on the machine.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Read the token from this file's first line (one way a game's launcher passes it: docs/shipping.md).")
@click.option("--parent-pid", type=click.IntRange(1), default=None,
              help="Exit once this process is gone (the game's own pid), so a crashed game leaves no server behind.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="PEM certificate for TLS.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="PEM private key for TLS.")
@click.option("--pool-size", default=D.POOL_SIZE, show_default=True, type=click.IntRange(1, 64),
              help="llama.cpp contexts: NPC lines generated at once without waiting (about 57 MiB each at --n-ctx 2048).")
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="CPU threads, shared by the contexts decoding at once. Default: half the cores (at least one), leaving the rest to the game beside the server.")
@click.option("--n-ctx", default=D.N_CTX, show_default=True, type=click.IntRange(256, 131072), help="Tokens per context.")
@click.option("--max-queue", default=D.MAX_QUEUE, show_default=True, type=click.IntRange(0, 10000),
              help="Requests that may wait for a context; more get RESOURCE_EXHAUSTED.")
@click.option("--queue-timeout", default=D.QUEUE_TIMEOUT, show_default=True, type=click.FloatRange(0), help="Seconds a request waits for a context.")
@click.option("--snapshot-mib", default=D.SNAPSHOT_MIB, show_default=True, type=click.IntRange(0),
              help="Host memory for kept conversation states (KV snapshots, 22.5 KiB a token on the default model), so "
                   "a line can start on any free context; roles' prompts are prefilled into it at start-up. 0 turns it off.")
@click.option("--warm-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A read-only folder of roles' ready adapters and prefilled prompt prefixes (a bundle ships its own: "
                   "warm/). What is missing there is made and saved in the cache, so a second start is warm at once.")
@click.option("--contrast", default=None, type=click.FloatRange(0, D.MAX_CONTRAST),
              help=f"Contrastive decoding for every line that leaves it unset: each NPC's own voice pushed this far from "
                   f"the base model's before a token is drawn (0 is off; two decodes a token). Default: each NPC's own "
                   f"(chosen by its bake's voice check, where it had one), else {D.CONTRAST:g}; 0 with --engine openai, "
                   "which cannot contrast. docs/corpora.md measures what it does to how recognisable an NPC is.")
@click.option("--history-tokens", default=D.HISTORY_TOKENS, show_default=True, type=click.IntRange(0), help="Memory budget per (session, NPC).")
@click.option("--max-tokens-limit", default=D.MAX_TOKENS_LIMIT, show_default=True, type=click.IntRange(1), help="Largest max_tokens a request may ask for.")
@click.option("--max-player-line-chars", default=D.MAX_PLAYER_LINE_CHARS, show_default=True, type=click.IntRange(1),
              help="Longest player line a request may send.")
@click.option("--max-scene-chars", default=D.MAX_SCENE_CHARS, show_default=True, type=click.IntRange(0),
              help="Largest scene context a request may send, all fields together.")
@click.option("--max-profile-chars", default=D.MAX_PROFILE_CHARS, show_default=True, type=click.IntRange(0),
              help="A procedural NPC's profile, all fields together.")
@click.option("--max-blend", default=D.TOP_K, show_default=True, type=click.IntRange(1, 64),
              help="Roles a procedural NPC's blend may name, and blocks it may mix (the gate's top-k).")
@click.option("--max-actions", default=D.MAX_ACTIONS, show_default=True, type=click.IntRange(1, 256),
              help="Actions a request may declare for its line's beat.")
@click.option("--max-converse-turns", default=D.MAX_CONVERSE_TURNS, show_default=True, type=click.IntRange(1, 1024),
              help="Turns one Converse may ask for.")
@click.option("--max-memory-chars", default=D.MAX_MEMORY_CHARS, show_default=True, type=click.IntRange(10_000),
              help="Characters of conversation memory kept, all sessions together; the least recently used go first.")
@click.option("--max-interjections", default=D.MAX_INTERJECTIONS, show_default=True, type=click.IntRange(1, 64),
              help="Player lines a Converse call may send before one turn; more is refused (INVALID_ARGUMENT).")
@click.option("--max-converse", default=D.MAX_CONVERSE, show_default=True, type=click.IntRange(1, D.WORKERS - 1),
              help=f"Converse calls streaming at once (each holds one of the {D.WORKERS} gRPC worker threads); "
                   "more get RESOURCE_EXHAUSTED.")
@click.option("--watch-interval", default=D.WATCH_INTERVAL, show_default=True, type=click.FloatRange(0), help="Seconds between roles-folder scans; 0 turns watching off.")
@click.option("--engine", type=click.Choice(list(D.ENGINES)), default=D.ENGINES[0], show_default=True,
              help="torch: the block LoRA in torch, batching NPCs' decode steps (GPU; needs the [train] extra). openai: a "
                   "gateway; lines are generated by the OpenAI-compatible server at --upstream.")
@click.option("--upstream", default=None, metavar="URL",
              help="openai engine: the server that generates, e.g. http://vllm:8000/v1; each NPC is its adapter (model=<npc_id>).")
@click.option("--upstream-key", envvar=D.UPSTREAM_KEY_ENV, default="", help=f"openai engine: the upstream's API key (env {D.UPSTREAM_KEY_ENV}).")
@click.option("--upstream-models", type=click.Choice(list(D.UPSTREAM_MODELS)), default=D.UPSTREAM_MODELS[0], show_default=True,
              help="openai engine: 'listed' refuses an NPC the upstream's /v1/models does not list (for servers that fall back "
                   "to a default model on unknown names, as llama-cpp-python's does); 'any' relies on the upstream's 404 (vLLM).")
@click.option("--device", default=None, help="torch engine: cuda, cpu, ... Default: cuda when available.")
@click.option("--max-batch", default=D.MAX_BATCH, show_default=True, type=click.IntRange(1, 256), help="torch engine: NPC lines per batch.")
@click.option("-v", "--verbose", is_flag=True, help="Log every request and reload (INFO), not only warnings.")
@friendly_errors
def serve(**flags):
    """Run the dialogue daemon (gRPC) on the base model and every role in --roles.

    With --engine openai the daemon is a gateway: the same gRPC service, roles, prompts, memory and limits,
    with every line generated by the OpenAI-compatible server at --upstream (see docs/deployment.md).
    """
    from functools import partial

    from ..engine import open_engine
    from ..server import app

    server, config = serve_configs(flags)
    engine, upstream = flags["engine"], flags["upstream"]
    gateway = None
    if engine == "openai":
        if not upstream:
            raise click.UsageError("--engine openai needs --upstream URL (the OpenAI-compatible server that generates)")
        from ..engine.openai_engine import OpenAIEngine, Upstream, UpstreamConfig

        OpenAIEngine.check_contrast(flags["contrast"] or 0.0)
        gateway = UpstreamConfig(upstream, flags["upstream_key"], flags["upstream_models"])
        Upstream(gateway)  # a malformed URL is an error now, not once the daemon has started
    elif upstream:
        raise click.UsageError("--upstream is for --engine openai")
    app.run(server, partial(open_engine, engine, flags["roles_dir"], flags["base_model"], config, device=flags["device"],
                            upstream=gateway),
            echo=lambda line: click.echo(line, err=True), verbose=flags["verbose"], parent_pid=flags["parent_pid"])


def serve_configs(flags: dict):
    """serve's flags as the daemon's (ServerConfig, EngineConfig). A flag named as a field of ServerConfig,
    EngineConfig or Limits is that field; the others are converted here."""
    from ..engine.facade import EngineConfig
    from ..engine.limits import Limits
    from ..server import app
    from ..server.launch import read_token

    def named(cls) -> dict:
        return {f.name: flags[f.name] for f in dataclasses.fields(cls) if f.name in flags}

    config = EngineConfig(**named(EngineConfig) | {
        "n_threads": flags["threads"], "snapshot_bytes": flags["snapshot_mib"] * 1024 * 1024,
        "warm_dirs": (flags["warm_dir"],) if flags["warm_dir"] else (), "limits": Limits(**named(Limits))})
    server = app.ServerConfig(**named(app.ServerConfig) | {"token": read_token(flags["token"], flags["token_file"])})
    return server, config


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The folder to build (a new or empty one, or an earlier bundle, which is replaced).")
@roles_option("The roles to ship; every file must load on the base model.")
@base_model_option
@click.option("--cpu-variants", "variants_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of llama.cpp CPU variants (bash scripts/build_cpu_variants.sh DIR): the server loads the best "
                   "one for the player's CPU. Default: the one CPU backend installed here (AVX2).")
@friendly_errors
def bundle(out, roles_dir, base_model, variants_dir):
    """Build the server as one folder a game ships: the neeko-npc-server executable (serve's options), its runtime,
    the base model and the roles. Needs PyInstaller (the [bundle] extra); builds for this operating system."""
    from ..bundle.build import build_bundle

    click.echo(build_bundle(out, roles_dir, base_model, log=lambda line: click.echo(line, err=True),
                            variants_dir=variants_dir).summary())
