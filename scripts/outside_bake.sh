#!/usr/bin/env bash
# Bake the outside corpus (docs/corpora.md) as the village set is baked (scripts/rebuild_roles.sh): four roles
# pre-finetuned together, two added by expansion, fp32, fixed seeds; then `eval --quick` on it.
# Usage: bash scripts/outside_bake.sh [OUT_DIR] [extra flags for both trainings...]   (default /tmp/neeko-outside)
# The set's shape (--rank, --alpha, --targets) is the pre-finetune's alone: give it in SET_FLAGS, e.g.
#   SET_FLAGS="--rank 16" bash scripts/outside_bake.sh /tmp/out-r16
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/neeko-outside}"
shift || true
SRC=corpora/shakespeare
mkdir -p "$OUT/roles"
rm -f "$OUT"/roles/*.nrole
neeko-npc bake "$SRC/hamlet" "$SRC/falstaff" "$SRC/iago" "$SRC/rosalind" --out "$OUT/roles" --seed 0 --precision fp32 \
  ${SET_FLAGS:-} "$@"
for r in lear cleopatra; do
  neeko-npc bake-role --profile "$SRC/$r/profile.json" --data "$SRC/$r/lines.jsonl" --roles "$OUT/roles" --seed 0 \
    --precision fp32 "$@"
done
neeko-npc eval --quick --roles "$OUT/roles" --src "$SRC" --json "$OUT/eval.json" --plot "$OUT/eval.png"
