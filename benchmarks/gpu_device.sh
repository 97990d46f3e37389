#!/bin/bash
# The GPU checks on the GPU machine this workplace lends (docs/performance.md, "On the GPU machine this workplace
# lends"). Its image has torch but no Ray, Optuna or MLflow, and nothing can be installed there from a registry, so
# this runs what needs only torch and sweeplab's training code: B7 (fused trials), B6 with its K trials packed as
# K training processes (--packing processes), the gpu test tier's tests of training, fusing and CUDA graphs, and
# torch.profiler's reading of one LeNet step eager and replayed from a CUDA graph (gpu_profile.py).
# Prepared here with `make gpu-wheels`, then
# through the device tool:
#   run(command="bash benchmarks/gpu_device.sh", carry=["benchmarks/.gpu-wheels"], timeout_s=540)
# BENCH_ARGS adds options to run.py (--smoke: a try of the plumbing on any machine).
# Results in $OUT: gpu.txt, gpu-tests.log, profile.jsonl, profile.txt, bench.log and the benchmarks' .jsonl and .md
# (the shortest first, so that a run stopped at its limit still brings back what ran).
set -uo pipefail
out=${OUT:-/tmp/sweeplab-gpu}
mkdir -p "$out"
site=$(mktemp -d)
python3 -m pip install --quiet --no-index --no-deps --target "$site" benchmarks/.gpu-wheels/*.whl || exit 1
export PYTHONPATH="$PWD/src:$site" OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -m pytest -m gpu tests/test_fused.py tests/test_zoo_training.py tests/test_graphs.py -p no:cacheprovider -q -o addopts="-ra" \
  2>&1 | tee "$out/gpu-tests.log"
tests=$?
python3 benchmarks/gpu_profile.py --table "$out/profile.txt" 2>&1 | tee "$out/profile.jsonl"
profiled=$?
python3 benchmarks/run.py B6 B7 --packing processes ${BENCH_ARGS:-} --results "$out" 2>&1 | tee "$out/bench.log"
bench=$?
exit $((bench || tests || profiled))
