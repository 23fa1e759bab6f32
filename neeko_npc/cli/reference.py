"""docs/cli.md, made from the commands' own help: ``python -m neeko_npc.cli.reference > docs/cli.md``.

tests/test_cli.py fails when the file differs from what this prints, so the reference is never stale."""

from __future__ import annotations

import click

from . import main

HEADER = """# Command-line reference

Every `neeko-npc` command with its options, as `neeko-npc COMMAND --help` prints them. This page is generated:
`python -m neeko_npc.cli.reference > docs/cli.md` (a test fails when it is stale). Defaults are declared once, in
`neeko_npc/defaults.py`.
"""


def reference() -> str:
    out = [HEADER]
    ctx = click.Context(main, info_name="neeko-npc", terminal_width=110, max_content_width=110, **main.context_settings)
    out += ["## Commands", "", "| command | what it does |", "|---|---|"]
    for name, cmd in sorted(main.commands.items()):
        out.append(f"| [`{name}`](#{name}) | {cmd.get_short_help_str(limit=200)} |")
    for name, cmd in sorted(main.commands.items()):
        sub = click.Context(cmd, info_name=name, parent=ctx, terminal_width=110, max_content_width=110)
        out += ["", f"## {name}", "", "```text", cmd.get_help(sub).rstrip(), "```"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(reference(), end="")
