#!/usr/bin/env bash
# λ per mask resolution for I-GOS (docs/igos.md): I-GOS maps of the first N photos of the ImageNet
# sample at each SIZE:TV pair (mask SIZE, λ2 = TV, everything else at the defaults), then RISE
# deletion / insertion (igos_eval.py metrics). Default pairs: mask 7, 56, 112, 224 at the default
# λ2 = 20, and 224 at λ2 = 160 (= 20 * 224 / 28: the total variation of a sharp-edged region falls
# about as 1/s, so the same smoothing needs λ2 growing with s). Mask 28 and 14 at the defaults come
# from the 50-photo run (igos_eval.py maps --n 50).
# Usage: benchmarks/igos_lambda.sh OUT_DIR [N] [THREADS] [SIZE:TV ...]
set -euo pipefail
OUT=${1:-/tmp/igos_lambda}
N=${2:-4}
T=${3:-1}
shift $(( $# < 3 ? $# : 3 ))
PAIRS=("$@")
if [ ${#PAIRS[@]} -eq 0 ]; then PAIRS=(7:20 56:20 112:20 224:20 224:160); fi
PY=${PY:-python}
HERE=$(dirname "$0")
for pair in "${PAIRS[@]}"; do
  s=${pair%%:*}; tv=${pair##*:}
  $PY "$HERE/igos_eval.py" maps --n "$N" --group 4 --mask-size "$s" --batch-size 8 --threads "$T" \
    --options "{\"channels_last\": true, \"tv\": $tv}" --tag "_tv$tv" --out "$OUT"
  $PY "$HERE/igos_eval.py" metrics --n "$N" --mask-size "$s" --tag "_tv$tv" --threads "$T" --channels-last --out "$OUT"
done
