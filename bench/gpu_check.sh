#!/usr/bin/env bash
# The GPU path in one device call (bench/gpu_check.py says what it runs), within 8 minutes.
#   make gpu-carry, then, through the device tool: bash bench/gpu_check.sh   with carry: ["bench/carry"]
#   bash bench/gpu_check.sh --dry    here, on the CPU: the same steps on the tiny model (a test runs it)
# Writes bench/results/gpu_check.json ($KOAML_BENCH_OUT/gpu_check.json when set).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "${1:-}" = "--dry" ]; then
  PY=${PYTHON:-.venv/bin/python}
else
  PY=${PYTHON:-python3}
  if [ ! -d bench/carry/wheels ]; then
    echo "gpu_check: no bench/carry/wheels: run make gpu-carry here, then carry bench/carry" >&2
    exit 2
  fi
  # the carried wheels in a folder of their own, ahead of the machine's packages, which stay as they are
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/koaml-gpu-site bench/carry/wheels/*.whl
  export PYTHONPATH="/tmp/koaml-gpu-site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
fi
exec timeout 480 "$PY" bench/gpu_check.py "$@"
