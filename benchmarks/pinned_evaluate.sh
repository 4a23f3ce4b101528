#!/usr/bin/env bash
# The evaluation pinned by the architecture issue: every evaluation method x every metric on the first
# 8 photos of the ImageNet sample, small sample counts, a fixed chunk size, one thread. Its results.csv
# must stay byte-identical across refactorings (sha256 in docs/architecture.md).
#   bash benchmarks/pinned_evaluate.sh OUT_DIR        (DATA=... for another photo folder)
set -euo pipefail
OUT=${1:?usage: pinned_evaluate.sh OUT_DIR}
DATA=${DATA:-../shared/data/imagenet-sample}
SK=${SK:-saliencekit}
OMP_NUM_THREADS=1 "$SK" evaluate "$DATA" --limit 8 --batch-size 8 --seed 0 --out "$OUT" --overwrite \
  --methods gradient,gradient_x_input,smoothgrad,smoothgrad_square,smoothgrad_var,ig_black,ig_blur,integrated_gradients,smoothtaylor,smoothtaylor_adaptive,original,positive,negative,active,inactive,gradcam,gradcampp,smoothgradcampp,igos,random \
  --metrics deletion,insertion,deletion_igos,insertion_igos,aupc,autvc,allegiance,average_drop,increase_in_confidence \
  -o smoothgrad.n_samples=4 -o integrated_gradients.n_steps=4 -o smoothtaylor.n_samples=4 \
  -o 'smoothtaylor_adaptive.adaptive_options={"max_iter": 2, "draws": 4, "regions": 6}' \
  -o smoothgradcampp.n_samples=4 -o igos.iterations=2 -o igos.ig_steps=3 \
  -M deletion.step=3136 -M insertion.step=3136 -M deletion_igos.step=3136 -M insertion_igos.step=3136 \
  -M aupc.draws=4 -M aupc.regions=6
sha256sum "$OUT/results.csv"
