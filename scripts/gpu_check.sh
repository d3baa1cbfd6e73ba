#!/usr/bin/env bash
# Everything in the compute layer that needs an NVIDIA GPU, in one short run (a few minutes):
# detection through NVML, the benchmark and its attestation, torch._int_mm against the exact CPU
# reference over many shapes, and a torch-export job on CUDA. Prints a short report; exit 1 on any failure.
# Usage (from the repo root, after `make bootstrap`, on the GPU machine): bash scripts/gpu_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-${OUT:-/tmp/gpunode-gpu-check}}
mkdir -p "$OUT"
status=0
step() { echo; echo "== $*"; }

step "nvidia-smi"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv || status=1

step "gpunode detect --json"
$PY -m node.cli detect --json | tee "$OUT/detect.json" || status=1

step "gpunode bench"
$PY -m node.cli bench --out "$OUT/attestation.json" || status=1

step "int8 workload on CUDA vs CPU reference, torch-export on CUDA"
$PY -m bench.gpu_check --out "$OUT/gpu_check.json" || status=1

step "node overhead vs raw torch on cuda:0"
$PY -m bench.node_overhead --device cuda:0 | tee "$OUT/node_overhead.txt" || status=1

echo
[ $status -eq 0 ] && echo "GPU CHECK: PASS" || echo "GPU CHECK: FAIL"
exit $status
