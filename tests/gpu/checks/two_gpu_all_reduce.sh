#!/usr/bin/env bash
# The all-reduce and tp=2 decode targets on two GPUs (issue: decode at the bandwidth limit):
# the one-shot all-reduce against the host's sums and its calibration against NCCL's all-reduce
# (gpu_nccl_test), then batch-1 decode at tp=2 with NCCL's all-reduce, with the calibrated
# one-shot path (its per-size times printed: the all-reduce time of one token's hidden state),
# and at tp=1 on the same machine for the speed-up.
# 1. Here: SPARK_CUDA_ARCHITECTURES=90a scripts/gpu-bundle gpu_nccl_test spark-bench
# 2. On the GPU machine (device tool, one call, repository root):
#      run(kind="nvidia-h100-x2", carry=["bundle"], timeout_s=600,
#          command="OUT=$OUT bash tests/gpu/checks/two_gpu_all_reduce.sh")
set -uo pipefail
B=${1:-bundle}
if [ ! -d "$B/bin" ] && [ -f "$B/bin.tar.gz" ]; then tar -xzf "$B/bin.tar.gz" -C "$B"; fi
export LD_LIBRARY_PATH=$PWD/$B/lib:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0
OUT=${OUT:-out/two_gpu}
mkdir -p "$OUT"
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >>"$S"
step() {
  local name=$1 t=$2; shift 2
  local t0=$(date +%s)
  timeout "$t" "$@" >"$OUT/$name.log" 2>&1
  echo "== $name rc=$? $(( $(date +%s) - t0 ))s" >>"$S"
}
step nccl 120 "$B/bin/gpu_nccl_test"
grep -E '^\[  (PASSED|FAILED) |^\[  FAILED  \]|^\[all-reduce\]' "$OUT/nccl.log" >>"$S"
bench() {
  local name=$1; shift
  step "$name" 150 "$B/bin/spark-bench" engine --config glm-4.5-air --load-format dummy \
    --backend cuda --layers 12 --batch-sizes 1,8 --input-len 128 --output-len 32 "$@"
  grep -E '^all-reduce|^one-shot' "$OUT/$name.log" >>"$S"
  tail -n 3 "$OUT/$name.log" >>"$S"
}
bench tp1 --tp 1 --cuda-graphs
bench tp2_nccl --tp 2
bench tp2_one_shot --tp 2 --one-shot-all-reduce-bytes -1
bench tp2_graphs --tp 2 --cuda-graphs --one-shot-all-reduce-bytes -1
cat "$S"
