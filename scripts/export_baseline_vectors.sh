#!/usr/bin/env bash
# Golden vectors of the hand-written executors, the baseline the "one integer
# graph" refactor must reproduce code for code (issue 13's "Done when").
#
#   bash scripts/export_baseline_vectors.sh OUTDIR [COMMIT] [IMAGES]
#
# Checks COMMIT (default: the last main commit before the refactor) out into a
# temporary worktree and runs its own `export-vectors` once per recipe, so the
# vectors come from the old code whatever the current tree holds. Deterministic:
# a re-run writes identical tensors. Check them later with
#   simulate verify-vectors OUTDIR/<recipe>
set -euo pipefail
out=${1:?usage: export_baseline_vectors.sh OUTDIR [COMMIT] [IMAGES]}
commit=${2:-236edc4}
images=${3:-2}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
wt=$(mktemp -d)/baseline
git -C "$repo" worktree add --detach -q "$wt" "$commit"
trap 'git -C "$repo" worktree remove --force "$wt"' EXIT
recipes="static_w8a8 static_w4a4 tsptq_w4a4 tsptq_w8a8 igq_w4a4 scalepredictor_w4a4 apq"
for r in $recipes; do
  if [ -e "$out/$r" ]; then echo "$out/$r exists, skipped"; continue; fi
  echo "== $r"
  (cd "$wt" && python -m simulator.cli export-vectors --out "$out/$r" --images "$images" --recipe "$r")
done
