"""Making roles: bake, bake-role, fit-beats, voice-check, inspect, export (a designer's commands; docs/making-roles.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import defaults as D
from . import DEFAULT_ROLES, base_model_option, friendly_errors, main, roles_option


def train_options(f):
    opts = [
        click.option("--epochs", default=D.EPOCHS, show_default=True, type=click.IntRange(1, 1000), help="Passes over the training scenes."),
        click.option("--lr", default=D.LR, show_default=True, type=click.FloatRange(0, 1, min_open=True), help="Peak learning rate (AdamW, cosine)."),
        click.option("--batch-size", default=D.BATCH_SIZE, show_default=True, type=click.IntRange(1, 256), help="Examples per step."),
        click.option("--max-len", default=D.MAX_LEN, show_default=True, type=click.IntRange(32, 8192), help="Tokens per training example."),
        click.option("--seed", default=D.SEED, show_default=True, type=int, help="Seed for the block initialisation and the data order."),
        click.option("--precision", type=click.Choice(list(D.PRECISIONS)), default=D.PRECISION, show_default=True,
                     help="Base weights while training (blocks are always fp32). auto: bf16 on a CUDA GPU or a CPU with "
                          "AVX512-BF16 or AMX, else fp32 (emulated bf16 trains about 10x slower)."),
        click.option("--holdout", default=D.HOLDOUT, show_default=True, type=click.FloatRange(0, 0.9),
                     help="Share of scenes held out to measure the block."),
        click.option("--beat-question/--no-beat-question", default=D.BEAT_QUESTION, show_default=True,
                     help="Also train each annotated line's beat question (the fallback for beats no learned head "
                          "covers). Off, it is trained only for a role with too few annotated lines for a head; "
                          "on, training takes about three times as long."),
        click.option("--resume", is_flag=True, help="Continue from the checkpoint of an interrupted bake."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


distinct_option = click.option(
    "--distinct", default=D.DISTINCT, show_default=True, type=click.FloatRange(0, 100),
    help="Hold each trained block away from the other roles' lines: each step adds this weight times how far the "
         "block lowers a batch of another role's lines below the base model's loss. 0 is off; above 0 each step "
         "also runs that batch, so a bake takes longer (docs/corpora.md).")


voice_option = click.option(
    "--voice-check/--no-voice-check", "voice", default=D.VOICE_CHECK, show_default=True,
    help="Choose each trained role's own contrast (stored in its file; serve --contrast or a request overrides it): "
         f"the lowest of {', '.join(f'{c:g}' for c in D.VOICE_CHECK_CONTRASTS)} whose replies to the set's training "
         "prompts the eval's judge gives to the role within noise as often as at the best one. Needs two roles or "
         "more (bake-role: --negatives); a few minutes more.")


def _shares(v: dict) -> str:
    """How often a role's replies were recognised at each contrast of its voice check."""
    return ", ".join(f"{c}: {s:.0%}" for c, s in v["shares"].items())


def _print_voices(report) -> None:
    for rid, v in report.voices.items():
        click.echo(f"voice check: {rid} speaks at contrast {v['contrast']:g} (its replies recognised at {_shares(v)}; "
                   f"{v['prompts']} training prompts)")


def _train_config(epochs, lr, batch_size, max_len, seed, distinct=D.DISTINCT):
    from ..neeko.train import TrainConfig

    return TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, max_len=max_len, seed=seed, distinct=distinct)


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
@distinct_option
@voice_option
@train_options
@friendly_errors
def bake(role_dirs, out, base_model, r, alpha, targets, tau, top_k, min_weight, distinct, voice, epochs, lr, batch_size,
         max_len, seed, precision, holdout, beat_question, resume, quiet):
    """Pre-finetune: train several roles together, one LoRA block each.

    Each ROLE_DIR holds profile.json and lines.jsonl (docs/making-roles.md). Writes one
    ROLE_ID.nrole per role into --out and prints each role's held-out loss with
    and without its block.
    """
    from ..neeko.bake import LoraConfig, RoleSource, pre_finetune
    from ..roles.asset import GateSettings
    from ..roles.base_model import resolve_base_model

    sources = [RoleSource.from_dir(d, holdout) for d in role_dirs]
    ref = resolve_base_model(base_model)
    for s in sources:
        click.echo(f"  {s.profile.id:<20} {s.n_lines:>4} lines, {len(s.train)} train / {len(s.held)} held-out scenes")
    lora = LoraConfig(r=r, alpha=alpha, targets=tuple(t.strip() for t in targets.split(",") if t.strip()), precision=precision)
    report = pre_finetune(ref, sources, out, _train_config(epochs, lr, batch_size, max_len, seed, distinct), lora,
                          GateSettings(tau=tau, top_k=top_k, min_weight=min_weight), resume=resume, progress=not quiet,
                          beat_question=beat_question, voice=voice)
    _print_heldout(report)
    _print_voices(report)
    for p in report.assets:
        click.echo(f"wrote {p} ({p.stat().st_size / 1e6:.2f} MB)")


# -- bake-role (expansion or fusion) ---------------------------------------------------

@main.command("bake-role")
@click.option("--profile", "profile_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The role's profile JSON (our format or a Character Card V2).")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Dialogue JSONL (expansion).")
@click.option("--fuse", is_flag=True, help="No training: mix existing blocks by profile similarity.")
@roles_option("The existing role set.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Output file. Default: ROLES/ROLE_ID.nrole")
@click.option("--top-k", default=D.TOP_K, show_default=True, type=click.IntRange(1, 64), help="Fusion: blocks to mix.")
@click.option("--tau", default=D.FUSE_TAU, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Fusion: temperature (softer than the gate's, so close roles mix).")
@click.option("--replace", is_flag=True, help="Overwrite a role with the same id.")
@base_model_option
@distinct_option
@click.option("--negatives", "negatives_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Expansion: the folder of the set's role folders (ID/lines.jsonl), whose training lines the new "
                   "block is held away from (--distinct above 0) and its voice is told from (--voice-check).")
@voice_option
@train_options
@friendly_errors
def bake_role(profile_path, data, fuse, roles_dir, out, top_k, tau, replace, base_model, distinct, negatives_dir, voice,
              epochs, lr, batch_size, max_len, seed, precision, holdout, beat_question, resume, quiet):
    """Add one role to an existing set, without touching the others.

    With --data: expansion. A new block is appended and trained; every old
    role's block stays bit-identical. With --fuse: fusion. No training; the
    role mixes the existing blocks closest to its profile.
    """
    from ..roles.base_model import resolve_base_model
    from ..roles.profile import load_profile

    if fuse == bool(data):
        raise click.UsageError("give --data lines.jsonl (expansion) or --fuse (fusion), not both or neither")
    ref = resolve_base_model(base_model)
    if fuse:
        from ..neeko.bake import fuse as do_fuse

        asset, path = do_fuse(ref, roles_dir, load_profile(profile_path), out, top_k=top_k, tau=tau, replace=replace)
        click.echo(f"fused role {asset.id!r} from:")
        sims = asset.training["similarity"]
        weights = {f.role: f.weight for f in asset.fusion}
        for rid, sim in sorted(sims.items(), key=lambda kv: -kv[1]):
            w = f"weight {weights[rid]:.3f}" if rid in weights else "not used    "
            click.echo(f"  {rid:<20} {w}   (profile similarity {sim:.3f})")
        click.echo(f"wrote {path} ({path.stat().st_size / 1e3:.1f} kB)")
        return
    from ..neeko.bake import RoleSource, expand

    src = RoleSource.from_files(profile_path, data, holdout)
    click.echo(f"  {src.profile.id:<20} {src.n_lines:>4} lines, {len(src.train)} train / {len(src.held)} held-out scenes")
    report = expand(ref, roles_dir, src, _train_config(epochs, lr, batch_size, max_len, seed, distinct), out,
                    lora_precision=precision, replace=replace, resume=resume, progress=not quiet,
                    beat_question=beat_question, negatives_dir=negatives_dir, voice=voice)
    _print_heldout(report)
    _print_voices(report)
    if voice and not report.voices:
        click.echo("voice check: skipped (pass --negatives, the set's role folders, to tell this voice from the "
                   "others'); the role speaks at the daemon's contrast")
    click.echo(f"old roles' blocks verified bit-identical; wrote {report.assets[0]} ({report.assets[0].stat().st_size / 1e6:.2f} MB)")


def refit_options(roles_help: str, src_help: str):
    """The options of a command that adds to roles baked before (neeko/bake.py ``refit``): the roles, their lines,
    the bake's split and the base model."""
    def wrap(f):
        for o in reversed([
            roles_option(roles_help),
            click.option("--src", "src_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
                         help=src_help),
            click.option("--holdout", default=D.HOLDOUT, show_default=True, type=click.FloatRange(0, 0.9),
                         help="Share of scenes held out (the same split the bake used): only the others are read."),
            base_model_option,
        ]):
            f = o(f)
        return f
    return wrap


@main.command("fit-beats")
@refit_options("The role set whose trained roles get beat heads.", "Folder of role folders (ID/lines.jsonl) with annotated lines.")
@friendly_errors
def fit_beats(roles_dir, src_dir, holdout, base_model):
    """Fit learned beats for roles baked before them, blocks untouched.

    Every trained role in --roles with lines in --src/ID/lines.jsonl gets the
    beat head a bake now fits (its annotated training lines, under its own
    block) and is rewritten; a fused role that mixes it is re-pointed.
    """
    from ..neeko.bake import fit_beats as fit
    from ..roles.asset_read import read_asset
    from ..roles.base_model import resolve_base_model

    for p in fit(resolve_base_model(base_model), roles_dir, src_dir, holdout=holdout):
        beats = read_asset(p).training.get("beats")
        what = ", ".join(f"{k} from {v['lines']} lines" for k, v in beats.items()) if beats else "re-pointed"
        click.echo(f"wrote {p} ({what})")


@main.command("voice-check")
@refit_options("The role set whose trained roles get their own contrast.",
               "Folder of role folders (ID/profile.json, ID/lines.jsonl): the set's lines.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def voice_check_cmd(roles_dir, src_dir, holdout, base_model, quiet):
    """The bake's voice check for roles baked without it, blocks untouched.

    Every trained role in --roles with lines in --src/ID/lines.jsonl gets the
    contrast a bake with --voice-check chooses (bake --help) and is rewritten;
    a fused role that mixes it is re-pointed.
    """
    from ..neeko.bake import check_voices
    from ..roles.asset_read import read_asset
    from ..roles.base_model import resolve_base_model

    for p in check_voices(resolve_base_model(base_model), roles_dir, src_dir, holdout=holdout, progress=not quiet):
        v = read_asset(p).training.get("voice_check")
        what = f"contrast {v['contrast']:g}; recognised at {_shares(v)}" if v else "re-pointed"
        click.echo(f"wrote {p} ({what})")


# -- inspect ---------------------------------------------------------------------------

@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def inspect(file, as_json):
    """Validate a .nrole file and print what it holds."""
    from ..roles.asset_read import read_asset

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
        click.echo("  voice       " + (f"contrast {a.contrast:g} (its bake's voice check)" if a.contrast is not None
                                      else "the daemon's contrast (no voice check)"))
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
@roles_option("Role set (needed to resolve fused roles).")
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
    from ..export import export_all, export_role

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
    from ..roles.folder import find_role

    asset, known = find_role(roles_dir, role)
    lora, dest = export_role(asset, known, fmt, out, base_model, served_model)
    click.echo(f"exported {asset.id!r} ({asset.kind}, rank {lora.r}) as {fmt}: {dest}")
