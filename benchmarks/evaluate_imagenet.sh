#!/usr/bin/env bash
# The runs behind docs/evaluation.md: EfficientNet-Lite0 on the first N images of the ImageNet
# sample (sorted by file name). Reduced sample counts and coarser deletion/insertion steps because
# the CPU was shared; see docs/evaluation.md. Usage: benchmarks/evaluate_imagenet.sh DATA_DIR OUT_ROOT [N_MAIN]
set -euo pipefail
DATA=${1:-../shared/data/imagenet-sample}
OUT=${2:-eval-imagenet}
N=${3:-2}
SK=${SK:-saliencekit}
COMMON=(--model efficientnet-lite0 --seed 0 --block-size 2 --batch-size 8)
SAMPLES=(-o smoothgrad.n_samples=8 -o integrated_gradients.n_steps=8 -o smoothtaylor.n_samples=10
         -o active.top_k=5 -o inactive.top_k=5 -o smoothgradcampp.n_samples=8)
STEPS=(-M deletion.step=6272 -M insertion.step=6272)

# 1. all methods, faithfulness / noise / confidence metrics
$SK evaluate "$DATA" "${COMMON[@]}" --limit "$N" --out "$OUT/main" --skip-missing \
  --methods gradient,original,positive,negative,gradcam,gradcampp,ig_black,smoothtaylor,ig_blur,random,smoothgrad,smoothgrad_square,smoothgrad_var,smoothgradcampp,active,inactive \
  --metrics deletion,insertion,autvc,average_drop,increase_in_confidence "${SAMPLES[@]}" "${STEPS[@]}"

# 2. allegiance of the sign-aware maps (black deletion; white for negative / inactive)
$SK evaluate "$DATA" "${COMMON[@]}" --limit "$N" --out "$OUT/allegiance" \
  --methods original,gradient,positive,negative,active,inactive,random --metrics allegiance "${SAMPLES[@]}"

# 3. SmoothTaylor: fixed vs adaptive noising (AUTVC objective)
$SK evaluate "$DATA" "${COMMON[@]}" --limit "${N_ST:-2}" --out "$OUT/smoothtaylor" \
  --methods smoothtaylor,smoothtaylor_adaptive --metrics autvc,deletion,insertion \
  "${SAMPLES[@]}" "${STEPS[@]}" \
  -o smoothtaylor_adaptive.objective=autvc -o 'smoothtaylor_adaptive.adaptive_options={"max_iter": 4}'
