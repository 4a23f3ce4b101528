#!/usr/bin/env bash
# The runs behind docs/evaluation.md: EfficientNet-Lite0 on the first N images of the ImageNet sample
# (file-name order), every method at its default settings except active / inactive (compared with the
# top 10 other classes instead of all 999) and deletion / insertion at 1,792 pixels per step (28 steps).
# Usage: benchmarks/evaluate_imagenet.sh DATA_DIR OUT_ROOT [N] [N_ST]
set -euo pipefail
DATA=${1:-../shared/data/imagenet-sample}
OUT=${2:-eval-imagenet}
N=${3:-100}
N_ST=${4:-12}
SK=${SK:-saliencekit}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # one core per run; two runs side by side on 2 cores
COMMON=(--model efficientnet-lite0 --seed 0 --channels-last -M deletion.step=1792 -M insertion.step=1792)

# 1. the main table: 16 maps x faithfulness / noise / confidence / allegiance metrics
$SK evaluate "$DATA" "${COMMON[@]}" --limit "$N" --out "$OUT/main" \
  --methods gradient,original,positive,negative,active,inactive,gradcam,gradcampp,smoothgradcampp,ig_black,ig_blur,smoothgrad,smoothgrad_square,smoothgrad_var,smoothtaylor,random \
  --metrics deletion,insertion,autvc,average_drop,increase_in_confidence,allegiance \
  -o active.top_k=10 -o inactive.top_k=10

# 2. SmoothTaylor: fixed sigma vs adaptive noising (objective AUTVC, at most 5 iterations)
$SK evaluate "$DATA" "${COMMON[@]}" --limit "$N_ST" --out "$OUT/smoothtaylor" \
  --methods smoothtaylor,smoothtaylor_adaptive,ig_black --metrics autvc,deletion,insertion \
  -o smoothtaylor_adaptive.objective=autvc -o 'smoothtaylor_adaptive.adaptive_options={"max_iter": 5}'

python "$(dirname "$0")/evaluation_claims.py" "$OUT/main/results.csv" "$OUT/smoothtaylor/results.csv"
