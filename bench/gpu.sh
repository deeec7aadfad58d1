#!/usr/bin/env bash
# One call on a bare GPU machine (under 10 minutes): install carried wheels, run the GPU tests
# (pytest marker `gpu`) and the GPU benchmark, writing JSON under $OUT (or bench/results).
#   here:  bash bench/gpu_wheels.sh
#   there: device run, carry [".whl"], command: bash bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu-info.txt"
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu-tests.log"
timeout 300 python3 bench/gpu_bench.py --out "$OUT/gpu-bench.json" 2>&1 | tee "$OUT/gpu-bench.log"
