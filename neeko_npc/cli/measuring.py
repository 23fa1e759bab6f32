"""Measuring: eval (role fidelity beside baselines) and bench (speed and memory beside baselines); their figures
are in docs/results.md with the commands that made them."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from .. import defaults as D
from . import DEFAULT_ROLES, base_model_option, friendly_errors, main, need_matplotlib, roles_option, tls_and_token_options


# -- eval ----------------------------------------------------------------------------------

@main.command("eval")
@roles_option("The role set to evaluate.")
@click.option("--src", "src_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_ROLES / "src",
              show_default=True, help="Role folders (ID/lines.jsonl) whose held-out scenes are scored.")
@base_model_option
@click.option("--holdout", default=D.HOLDOUT, show_default=True, type=click.FloatRange(0.01, 0.9), help="Must match the bake's --holdout.")
@click.option("--max-len", default=D.MAX_LEN, show_default=True, type=click.IntRange(32, 8192), help="Tokens per scored example (as the bake's).")
@click.option("--precision", type=click.Choice(list(D.PRECISIONS)), default=None, help="Default: the precision the roles were baked in.")
@click.option("--no-shared", is_flag=True, help="Skip the shared-LoRA baseline (it trains one LoRA on all roles' lines).")
@click.option("--shared-weight", type=click.FloatRange(0, min_open=True), default=None,
              help="Gate weight of each of the shared LoRA's M blocks. Default 1/M: one LoRA of rank M*r with the roles' "
                   "alpha. 1 gives it M times that scale.")
@click.option("--no-attribution", is_flag=True, help="Skip attribution (it generates replies for every role).")
@click.option("--no-beats", is_flag=True, help="Skip the beats (each annotated held-out line's emotion and action).")
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0, 2),
              help="Attribution replies: 0 is greedy; above 0 they are drawn as the daemon draws them "
                   f"(its default is {D.TEMPERATURE}).")
@click.option("--top-p", default=D.TOP_P, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Attribution replies: nucleus cut, with --temperature above 0.")
@click.option("--strength", default=1.0, show_default=True, type=click.FloatRange(0, 4),
              help="Attribution replies: the own block's gate weight (1 is as served).")
@click.option("--contrast", default=None, type=click.FloatRange(0, D.MAX_CONTRAST),
              help="Attribution replies: decode the blocks' logits pushed away from the base model's by this much "
                   "(contrastive decoding as serve --contrast does it; 0 is off, two forwards a token). Default: as "
                   f"served, each role's own contrast (its bake's voice check), else {D.CONTRAST:g}.")
@click.option("--reply-tokens", type=click.IntRange(1, 512), default=None,
              help="Attribution: the longest reply, in tokens (default 40; 16 with --quick).")
@click.option("--prompts-per-role", type=click.IntRange(1, 1000), default=None,
              help="Attribution: held-out prompts taken from each role (default 6; 2 with --quick).")
@click.option("--quick", is_flag=True, help="CI-sized: 4 held-out scenes per role, a one-epoch shared LoRA on 6 scenes "
                                            "per role, 2 prompts per role; figures are rough.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report as JSON.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a PNG: the confusion matrix as a heat-map, and attribution with its intervals (needs matplotlib).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly_errors
def eval_cmd(roles_dir, src_dir, base_model, holdout, max_len, precision, no_shared, shared_weight, no_attribution, no_beats,
             temperature, top_p, strength, contrast, reply_tokens, prompts_per_role, quick, json_out, plot_out, quiet):
    """Role fidelity, beside baselines trained and scored in the same run.

    Prints the role confusion matrix (held-out loss; rows: whose lines, columns:
    whose block) beside in-context prompting and a shared LoRA of the same total
    rank; forgetting after expansion; leave-one-out fusion; and attribution of
    generated replies to the nearest role.
    """
    from dataclasses import replace

    from ..neeko.eval_table import report_table
    from ..neeko.evaluate import EvalConfig, evaluate
    from ..roles.base_model import resolve_base_model

    need_matplotlib(plot_out)
    cfg = replace(EvalConfig.quick() if quick else EvalConfig(), holdout=holdout, max_len=max_len, precision=precision,
                  shared=not no_shared, shared_weight=shared_weight, attribution=not no_attribution, beats=not no_beats,
                  temperature=temperature, top_p=top_p, strength=strength, contrast=contrast)
    if prompts_per_role is not None:
        cfg = replace(cfg, prompts_per_role=prompts_per_role)
    if reply_tokens is not None:
        cfg = replace(cfg, reply_tokens=reply_tokens)
    rep = evaluate(resolve_base_model(base_model), roles_dir, src_dir, cfg, progress=not quiet)
    click.echo(report_table(rep))
    if json_out:
        json_out.write_text(json.dumps(rep.to_dict(), indent=2))
        click.echo(f"wrote {json_out}")
    if plot_out:
        from ..neeko.eval_plot import plot

        click.echo(f"wrote {plot(rep, plot_out)}")


# -- bench -------------------------------------------------------------------------------

@main.command()
@roles_option("The role set to serve in process.")
@base_model_option
@click.option("--address", default=None, help="Benchmark a running daemon (host:port) instead of an engine in this process; "
                                               "baselines and memory are then skipped.")
@functools.partial(tls_and_token_options, token_help=f"Bearer token for --address (env {D.TOKEN_ENV}).")
@click.option("--pool-size", default=D.POOL_SIZE, show_default=True, type=click.IntRange(1, 64), help="In process: llama.cpp contexts.")
@click.option("--threads", default=None, type=click.IntRange(1, 256), help="In process: CPU threads, shared by the contexts decoding at once. Default: half the cores, leaving the rest to the game.")
@click.option("--contrast", type=click.FloatRange(0, D.MAX_CONTRAST, min_open=True), default=None,
              help=f"The contrasted decode row's contrast. Default: {D.CONTRAST or 1.0:g} (serve's --contrast, or 1 where "
                   "serve's is 0, off).")
@click.option("--no-memory", is_flag=True, help="Skip the memory section (it starts one daemon per role count).")
@click.option("--no-town", is_flag=True, help="Skip the town section (a day of 24 NPCs on 4 contexts, with and without snapshots).")
@click.option("--no-startup", is_flag=True, help="Skip the start-up section (server processes started cold, to the ready line).")
@click.option("--no-neighbours", is_flag=True, help="Skip the beside-a-game section (lines beside busy processes).")
@click.option("--bundle", "bundle_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A folder from `neeko-npc bundle`: its start-up is timed beside `neeko-npc serve`'s.")
@click.option("--quick", is_flag=True, help="CI-sized: fewer repetitions, 0 and 2 roles for memory; figures are rougher.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write every figure as JSON.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path), help="Also draw a PNG (needs matplotlib).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def bench(roles_dir, base_model, address, token, tls_ca, pool_size, threads, contrast, no_memory, no_town, no_startup, no_neighbours, bundle_dir, quick,
          json_out, plot_out, quiet):
    """Speed and memory: time to first token, decode rate, switching NPC,
    concurrency and resident memory, beside baselines measured in the same run
    (the base model alone, a merged single LoRA, one merged model per NPC, and a
    dense mixture running every block)."""
    from tqdm import tqdm

    from ..bench.report import plot, table
    from ..bench.run import BenchConfig, run_bench, total_steps

    need_matplotlib(plot_out)
    cfg = BenchConfig(roles_dir=roles_dir, base_model=base_model, address=address, token=token, tls_ca=tls_ca, quick=quick,
                      pool_size=pool_size, threads=threads, memory=not no_memory, **({"contrast": contrast} if contrast else {}), town=not no_town, startup=not no_startup,
                      neighbours=not no_neighbours,
                      bundle=bundle_dir)
    with tqdm(total=total_steps(cfg), disable=quiet, unit="step", file=sys.stderr) as bar:
        result = run_bench(cfg, bar)
    click.echo(table(result))
    if json_out:
        from dataclasses import asdict

        from ..bench.report import targets

        json_out.write_text(json.dumps({**result.to_dict(), "targets": [asdict(t) for t in targets(result)]}, indent=2))
        click.echo(f"wrote {json_out}")
    if plot_out:
        click.echo(f"wrote {plot(result, plot_out)}")
