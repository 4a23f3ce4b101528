#!/usr/bin/env bash
# λ per mask resolution for I-GOS (docs/igos.md): I-GOS maps of the first N photos of the ImageNet
# sample at mask 7, 56, 112, 224 with the default λ2 (tv = 20) and with λ2 scaled by s / 28
# (the total variation of a sharp-edged region falls about as 1/s), then RISE deletion / insertion.
# Mask 28 and 14 at the defaults (tv = 20) come from the 50-photo run (igos_eval.py maps --n 50).
# Usage: benchmarks/igos_lambda.sh OUT_DIR [N] [THREADS]
set -euo pipefail
OUT=${1:-/tmp/igos_lambda}
N=${2:-4}
T=${3:-1}
PY=${PY:-python}
HERE=$(dirname "$0")
run() {  # size tv tag
  $PY "$HERE/igos_eval.py" maps --n "$N" --group 4 --mask-size "$1" --batch-size 8 --threads "$T" \
    --options "{\"channels_last\": true, \"tv\": $2}" --tag "$3" --out "$OUT"
  $PY "$HERE/igos_eval.py" metrics --n "$N" --mask-size "$1" --tag "$3" --threads "$T" --channels-last --out "$OUT"
}
for s in 7 56 112 224; do
  run "$s" 20 "_tv20"
done
run 7 5 "_tv5"
run 56 40 "_tv40"
run 112 80 "_tv80"
run 224 160 "_tv160"
