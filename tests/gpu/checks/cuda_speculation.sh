#!/usr/bin/env bash
# Speculative decoding on the CUDA backend (MTP layer, tree chunks, hidden rows,
# KeepCacheEntries, CreateDummy with the MTP layer) - GPU verification. One GPU (H100 or H200) is
# enough; the tp=2 case runs two ranks on one GPU over Gloo.
#
# 1. Build and bundle on the build machine (CUDA build lock; 90a is enough for H100/H200):
#      env SPARK_GPU_BUNDLE=bundle-cuda-mtp \
#        SPARK_GPU_BUILD_DIR=build/cuda scripts/gpu-test gpu_speculation_test gpu_backend_test \
#        gpu_kernels_test
# 2. On the GPU machine, device tool, repository root, two calls (600 s each at most):
#    a) the new suite + memcheck of it (this script's body below):
#         run(kind="nvidia-h200", carry=["bundle-cuda-mtp"], timeout_s=600,
#             command="<lines from 'bundle=' to the end>")
#    b) the suites whose code changed (Forward refactor, attention with tree masks):
#         run(kind="nvidia-h200", carry=["bundle-cuda-mtp"], timeout_s=600,
#             command="OUT=$OUT SPARK_GPU_TESTS='gpu_(backend|kernels)_test' SPARK_GPU_SANITIZE=0 scripts/gpu-run-tests bundle-cuda-mtp")
set -euo pipefail
bundle=${1:-bundle-cuda-mtp}
OUT=${OUT:-/tmp/cuda-mtp-out}
mkdir -p "$OUT"
OUT=$OUT SPARK_GPU_TESTS='gpu_speculation_test' SPARK_GPU_SANITIZE=0 SPARK_GPU_TEST_TIMEOUT=400 \
  scripts/gpu-run-tests "$bundle" || true
export LD_LIBRARY_PATH=$PWD/$bundle/lib:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0
test -d "$bundle/bin" || tar -C "$bundle" -xzf "$bundle/bin.tar.gz"
timeout 150 compute-sanitizer --tool memcheck "$bundle/bin/gpu_speculation_test" \
  --gtest_filter='CudaSpeculationTest.Tree*:CudaSpeculationTest.Keep*:CudaSpeculationTest.Hidden*:CudaSpeculationTest.ForwardMtp*' \
  >"$OUT/speculation-memcheck.log" 2>&1 && echo "memcheck: OK" \
  || { echo "memcheck: FAILED or timed out"; tail -30 "$OUT/speculation-memcheck.log"; }
cat "$OUT/summary.txt"
