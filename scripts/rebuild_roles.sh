#!/usr/bin/env bash
# Re-bake the shipped village roles from assets/roles/src/ with fixed seeds (same data, same weights).
# Shows all three ways a role is made: four roles pre-finetuned together, one added by expansion,
# one added by fusion. With the defaults: no voice check, so every NPC speaks at the daemon's contrast (0).
# Usage: bash scripts/rebuild_roles.sh [OUT_DIR] [extra bake flags...]   (default assets/roles;
# the extra flags, e.g. --epochs 2, go to the two trainings, not to the fusion; the set's shape, --rank, --alpha
# or --targets, is the pre-finetune's alone: SET_FLAGS="--rank 16" bash scripts/rebuild_roles.sh /tmp/r16)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-assets/roles}"
shift || true
SRC=assets/roles/src
mkdir -p "$OUT"
rm -f "$OUT"/*.nrole
# fp32, as the shipped files were baked: the same weights on every CPU, and no emulated bf16 (docs/making-roles.md)
# (--negatives: the set's lines, which an expansion held away from them needs: `... /tmp/village-d1 --distinct 1`.)
neeko-npc bake "$SRC/blacksmith" "$SRC/innkeeper" "$SRC/guard_captain" "$SRC/hedge_witch" --out "$OUT" --seed 0 --precision fp32 \
  ${SET_FLAGS:-} "$@"
neeko-npc bake-role --profile "$SRC/merchant/profile.json" --data "$SRC/merchant/lines.jsonl" --roles "$OUT" --seed 0 --precision fp32 \
  --negatives "$SRC" "$@"
neeko-npc bake-role --fuse --profile "$SRC/young_guard/profile.json" --roles "$OUT"
ls -l "$OUT"/*.nrole
