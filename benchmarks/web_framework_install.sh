#!/usr/bin/env bash
# Download + install cost of the web explorer's framework choice versus Gradio, each into a fresh
# virtualenv (numbers quoted in docs/web.md). Usage: bash benchmarks/web_framework_install.sh
set -euo pipefail
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
measure() {  # name, packages...
  local name=$1; shift
  "$PY" -m venv "$work/$name-venv"
  local pip="$work/$name-venv/bin/pip"
  local base; base=$(du -sk "$work/$name-venv/lib" | cut -f1)
  local t0=$(date +%s.%N)
  "$pip" download -q -d "$work/$name-dl" "$@" 2>/dev/null
  local t1=$(date +%s.%N)
  "$pip" install -q --no-index -f "$work/$name-dl" "$@" 2>/dev/null
  local t2=$(date +%s.%N)
  local after; after=$(du -sk "$work/$name-venv/lib" | cut -f1)
  printf '%-10s wheels=%-3s download=%6.1f MB (%5.1f s)  install=%5.1f s  installed=%6.1f MB\n' \
    "$name" "$(ls "$work/$name-dl" | wc -l)" "$(du -sk "$work/$name-dl" | awk '{print $1/1024}')" \
    "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$(echo "($after - $base) / 1024" | bc -l)"
}
measure starlette starlette uvicorn
measure gradio gradio
