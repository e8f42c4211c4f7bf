#!/usr/bin/env bash
# The GPU checks of work not yet (fully) run on a GPU, about ten minutes: correctness of the
# default paths first, then performance (spark-bench, ncu, tuned MoE, tensor-core attention, the
# MoE kernel alone), then the rest (backend suite, timings, sanitizers, speculative decoding on
# CUDA). ONLY="step ..." runs a subset within a short budget. Bundle: scripts/gpu-bundle
# gpu_speculation_test gpu_backend_test gpu_kernels_test gpu_moe_test gpu_moe_tuner_test
# gpu_sampling_test gpu_nccl_test spark-model spark-bench bench_moe; then, from the repository root:
#   run(carry=["bundle"], command="OUT=$OUT bash tests/gpu/checks/one_gpu_call.sh")
set -uo pipefail
export B=bundle
tar -C $B -xzf $B/bin.tar.gz
export LD_LIBRARY_PATH=$PWD/$B/lib:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0
export SPARK_REFERENCE_MODELS_DIR=$PWD/tests/data/models
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >>$S
# ONLY="name ..." runs just those steps (short device budgets).
# STEP_RAN: whether the last step ran (not filtered out by ONLY), so that the summary lines after
# a step are added only when it ran.
STEP_RAN=0
step() {
  local name=$1 t=$2; shift 2
  STEP_RAN=0
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return 0; fi
  STEP_RAN=1
  local t0=$(date +%s)
  timeout "$t" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc $(( $(date +%s) - t0 ))s" >>$S
  [ "$STEP_RAN" = 1 ] && grep -E '^\[  (PASSED|FAILED) |^\[  FAILED  \]|^\[(cuda-air|moe|spec|model-cuda|timing|attention|linear|tc-attention)|Failure$' "$OUT/$name.log" | head -60 >>$S
}
# Correctness of what runs by default first: kernels against the CPU (RMSNorm, RoPE,
# attention, dense linears with the FP8 GEMV), greedy GPU sampling, graphs and device logits,
# spark-model on CUDA against the CPU backend, the MoE at GLM-4.5-Air widths.
step kernels 60 $B/bin/gpu_kernels_test --gtest_filter='-*Timing*'
step sampling 60 $B/bin/gpu_sampling_test --gtest_filter='*Greedy*'
[ "$STEP_RAN" = 1 ] && grep -E '^\[sampling' "$OUT/sampling.log" >>$S
step graphs 150 $B/bin/gpu_backend_test --gtest_filter='*DecodeGraphs*:*DeviceLogits*:*TensorCoreAttention*:*RandomMoeAtAirWidths*:*ProgrammaticLaunch*'
[ "$STEP_RAN" = 1 ] && grep -E '^\[cuda-graphs|^\[pdl' "$OUT/graphs.log" >>$S
model_cuda() {
  local m=$OUT/tiny ids=5,17,3,99,1,42,7,8,250,11
  $B/bin/spark-model tiny $m >/dev/null || return 1
  for b in cpu cuda; do
    $B/bin/spark-model logits $m --ids $ids --out $OUT/logits-$b.bin --backend $b || return 1
    $B/bin/spark-model generate $m --ids $ids --max-tokens 16 --ignore-eos --json --backend $b >$OUT/generate-$b.json || return 1
  done
  python3 - $OUT <<'PY'
import array, json, sys
out = sys.argv[1]
def floats(n):
    a = array.array("f"); a.frombytes(open(f"{out}/{n}", "rb").read()); return a
c, g = floats("logits-cpu.bin"), floats("logits-cuda.bin")
rel = max(abs(x - y) for x, y in zip(c, g)) / max(abs(x) for x in c)
gc = json.load(open(f"{out}/generate-cpu.json"))["ids"]; gg = json.load(open(f"{out}/generate-cuda.json"))["ids"]
same = next((i for i, (x, y) in enumerate(zip(gc, gg)) if x != y), len(gc))
print(f"[model-cuda] logits rel {rel:.3e}; greedy equal {same}/{len(gc)}")
sys.exit(0 if rel <= 3e-2 and same >= 4 else 1)
PY
}
export -f model_cuda
step model_cuda 30 bash -c model_cuda
step moe_air 60 $B/bin/gpu_moe_test --gtest_filter='MoeRouterTest.*:MoePackTest.*:MoeForwardMiscTest.*:Shapes/MoeForwardTest.*glm45air*'
# The GEMV path's work split: every gate/up K split, down block width and down vectors in
# flight at 1, 2, 4 and 8 tokens, FP8 per-channel (picks MoeGemvTiling's defaults).
step moe_gemv_sweep 120 $B/bin/bench_moe --formats fp8-per-channel --caps 0 --batches 1,2,4,8 \
  --gemv-max-tokens 8 --gemv-k-splits 1,2,4,8 --gemv-down-outputs 4,8,16 \
  --gemv-down-vectors 1,2,3 --iters 20
[ "$STEP_RAN" = 1 ] && grep -vE '^device:|^$' "$OUT/moe_gemv_sweep.log" >>$S
# The MoE GEMVs' new work splits: down with every item of a warp in flight (down_vectors 4:
# GLM-4.7 tp=4's rows of one vector per lane) and gate/up as row sweeps over a persistent grid,
# each against the defaults (moe_all / mma_moe check them at every shape).
step moe_down_items 120 $B/bin/bench_moe --formats fp8-per-channel,fp8-block128 --caps 0 \
  --batches 1,2,4 --gemv-max-tokens 4 --gemv-down-vectors 1,4 --gemv-gate-up-sweep 0,1 \
  --iters 20
[ "$STEP_RAN" = 1 ] && grep -vE '^device:|^$' "$OUT/moe_down_items.log" >>$S
# The dense one-row FP8 GEMV (batch-1 qkv / o) at every K split.
step gemv_splits 60 $B/bin/gpu_kernels_test --gtest_filter='*EveryKSplit*'
[ "$STEP_RAN" = 1 ] && grep -E '^\[gemv-(splits|dequant|mma-slices)' "$OUT/gemv_splits.log" >>$S
# The one-token FP8 GEMVs on the tensor cores: the dense kernel against the CPU (formats, warp
# and K splits, activations beyond f16's range), the MoE GEMVs against the CPU (every shape and
# format), then the MoE GEMVs timed against the CUDA-core ones (every gate/up warp split), and
# decode with both.
step mma_gemv 60 $B/bin/gpu_kernels_test --gtest_filter='*TensorCoreGemv*'
[ "$STEP_RAN" = 1 ] && grep -E '^\[gemv-mma\]' "$OUT/mma_gemv.log" >>$S
step mma_moe 300 $B/bin/gpu_moe_test --gtest_filter='Shapes/MoeForwardTest.*'
[ "$STEP_RAN" = 1 ] && grep -E 'half-mma' "$OUT/mma_moe.log" | head -40 >>$S
step moe_gemv_mma 120 $B/bin/bench_moe --formats fp8-per-channel,fp8-block128 --caps 0 \
  --batches 1,2,4 --gemv-max-tokens 4 --gemv-fp8-dequant 1,3 --gemv-k-splits 1,2,4,8 --iters 20
[ "$STEP_RAN" = 1 ] && grep -vE '^device:|^$' "$OUT/moe_gemv_mma.log" >>$S
# The expert-grouped tensor-core MoE kernels against the tiles at 8 to 64 tokens, every warp
# split, with and without the GB10 cap (both formats of the FP8 checkpoints).
step moe_grouped 150 $B/bin/bench_moe --formats fp8-per-channel,fp8-block128 --caps 0,101376 \
  --batches 8,16,32,64 --grouped-max-tokens 64 --gemv-k-splits 1,2,4,8 --iters 10
[ "$STEP_RAN" = 1 ] && grep -vE '^device:|^$' "$OUT/moe_grouped.log" >>$S
step moe_tiles_small 90 $B/bin/bench_moe --formats fp8-per-channel,fp8-block128 --caps 0 \
  --batches 8,16,32,64 --iters 10
[ "$STEP_RAN" = 1 ] && grep -vE '^device:|^$' "$OUT/moe_tiles_small.log" >>$S
for g in --gemv-tensor-cores --no-gemv-tensor-cores; do
  step bench$g 90 $B/bin/spark-bench engine --config glm-4.5-air --load-format dummy \
    --backend cuda --layers 24 --batch-sizes 1,8 --input-len 128 --output-len 32 --cuda-graphs $g
  [ "$STEP_RAN" = 1 ] && tail -n 3 "$OUT/bench$g.log" >>$S
done
# The router's top-k (block-wide selection in the fused router kernel) against the CPU and the
# two-kernel path.
step moe_router 60 $B/bin/gpu_moe_test --gtest_filter='MoeRouterTest.*'
# The one-shot all-reduce's rank-order sum and the single-rank group (the two-rank checks are in
# two_gpu_all_reduce.sh).
step rank_order_sum 60 $B/bin/gpu_nccl_test --gtest_filter='*RankOrderSum*:*SingleRank*'
# Weight prefetch into L2 beside the latency-bound kernels: its checks (argument checks, graph
# fork and join, bit-identical logits eager and in graphs), then decode at 0 / 30 / 60% of L2
# per prefetch.
step l2_prefetch 150 bash -c "$B/bin/gpu_kernels_test --gtest_filter='L2Prefetch*' && \
  $B/bin/gpu_backend_test --gtest_filter='*L2Prefetch*:*ProgrammaticLaunch*'"
for p in 0 30 60; do
  step bench_l2_$p 90 $B/bin/spark-bench engine --config glm-4.5-air --load-format dummy \
    --backend cuda --layers 24 --batch-sizes 1,8 --input-len 128 --output-len 32 --cuda-graphs \
    --l2-prefetch-percent $p
  [ "$STEP_RAN" = 1 ] && tail -n 3 "$OUT/bench_l2_$p.log" >>$S
done
# The dense one-row FP8 GEMV as row sweeps over a persistent grid: against the CPU, then decode.
step gemv_sweep 60 $B/bin/gpu_kernels_test --gtest_filter='*RowSweep*'
[ "$STEP_RAN" = 1 ] && grep -E '^\[gemv-sweep\]' "$OUT/gemv_sweep.log" >>$S
step bench_sweep 90 $B/bin/spark-bench engine --config glm-4.5-air --load-format dummy \
  --backend cuda --layers 24 --batch-sizes 1,8 --input-len 128 --output-len 32 --cuda-graphs \
  --gemv-row-sweep
[ "$STEP_RAN" = 1 ] && tail -n 3 "$OUT/bench_sweep.log" >>$S
# gemv_fp8=auto: the dense tuner's test (every variant, the CPU afterwards), then decode with each
# dense FP8 shape's variant timed at load (against bench_l2_0, the defaults, in the same run).
step dense_gemv_tuner 60 $B/bin/gpu_kernels_test --gtest_filter='*DenseGemvTuner*'
[ "$STEP_RAN" = 1 ] && grep -E '^\[dense-gemv\] chose' "$OUT/dense_gemv_tuner.log" >>$S
step bench_gemv_auto 90 $B/bin/spark-bench engine --config glm-4.5-air --load-format dummy \
  --backend cuda --layers 24 --batch-sizes 1,8 --input-len 128 --output-len 32 --cuda-graphs \
  --gemv-fp8-auto
[ "$STEP_RAN" = 1 ] && grep -E '^dense GEMV' "$OUT/bench_gemv_auto.log" >>$S
[ "$STEP_RAN" = 1 ] && tail -n 3 "$OUT/bench_gemv_auto.log" >>$S
# Decode under GB10's shared-memory cap (against bench_l2_0, the defaults, in the same run).
step bench_cap 90 $B/bin/spark-bench engine --config glm-4.5-air --load-format dummy \
  --backend cuda --layers 24 --batch-sizes 1,8 --input-len 128 --output-len 32 --cuda-graphs \
  --smem-cap-bytes 101376
[ "$STEP_RAN" = 1 ] && tail -n 3 "$OUT/bench_cap.log" >>$S
# The MoE GEMVs with FP8 weights converted by the hardware and by integer bit placement.
step moe_gemv_dequant 90 $B/bin/bench_moe --formats fp8-per-channel,fp8-block128 --caps 0 \
  --batches 1,2,4 --gemv-max-tokens 4 --gemv-fp8-dequant 1,2 --iters 20
[ "$STEP_RAN" = 1 ] && grep -vE '^device:|^$' "$OUT/moe_gemv_dequant.log" >>$S
# The whole MoE suite (every shape and format, tiles and the GEMV path) and the tuner.
step moe_all 300 $B/bin/gpu_moe_test
step moe_tuner 120 $B/bin/gpu_moe_tuner_test
# The GEMV path's split tuned per bucket (1, 2, 4 tokens): the tuner's test, then spark-model
# tune-moe at GLM-4.7 tp=4 and GLM-4.5-Air widths (untuned against tuned whole forwards, and the
# split each bucket chose on this device).
step tuner_gemv 90 $B/bin/gpu_moe_tuner_test --gtest_filter='*Gemv*'
for m in "glm-4.7 --tp 4" "glm-4.5-air --tp 1"; do
  n=tune_gemv_$(echo "$m" | cut -d' ' -f1 | tr -d '.-')
  step $n 90 $B/bin/spark-model tune-moe --config $m --format fp8-channel --batches 1,2,4 \
    --out "$OUT/$n.json"
  [ "$STEP_RAN" = 1 ] && grep -E '^(batch|[0-9]|  batch|verified|tuned)' "$OUT/$n.log" >>$S
done
# Performance.
# Decode steps from CUDA graphs against eager steps: GLM-4.5-Air shapes, FP8, 24 of 46 layers
# (fits an H100 80GB), same machine, same run.
# Defaults (shared expert in the MoE kernels, programmatic launch) against neither, with graphs.
for g in --cuda-graphs --no-cuda-graphs "--no-fuse-shared-experts --no-programmatic-launch" \
  "--moe-gemv-max-tokens 0"; do
  n=bench$(echo "$g" | tr -d ' ')
  step $n 90 $B/bin/spark-bench engine --config glm-4.5-air --load-format dummy \
    --backend cuda --layers 24 --batch-sizes 1,8,64 --input-len 128 --output-len 32 $g
  [ "$STEP_RAN" = 1 ] && tail -n 4 "$OUT/$n.log" >>$S
done
# Per-kernel GPU time of eager decode steps (2 layers): where a step's time goes. Caches are not
# flushed between kernels and clocks not locked, as in a run (ncu's defaults flush and lock, which
# makes one-block kernels read several microseconds slower).
step ncu 90 ncu --cache-control none --clock-control none --metrics gpu__time_duration.sum \
  --print-summary per-kernel $B/bin/spark-bench \
  engine --config glm-4.5-air --load-format dummy --backend cuda --layers 2 --batch-sizes 1 \
  --input-len 16 --output-len 8 --no-cuda-graphs
# Why the batch-1 GEMVs stop short of the bandwidth: throughput and warp stall reasons of the MoE
# gate/up and down GEMVs (GLM-4.5-Air shapes) and the dense one-row FP8 GEMV.
step ncu_gemv 120 ncu --cache-control all --clock-control none \
  -k 'regex:GateUpKernel|DownKernel|GemvFp8OneRow' -c 12 \
  --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats \
  --section ComputeWorkloadAnalysis --section InstructionStats \
  $B/bin/spark-bench engine --config glm-4.5-air --load-format dummy --backend cuda --layers 2 \
  --batch-sizes 1 --input-len 16 --output-len 4 --no-cuda-graphs
[ "$STEP_RAN" = 1 ] && grep -E '^  [A-Za-z].*(Kernel|Gemv)|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Achieved Occupancy|Theoretical Occupancy|Registers Per|Waves Per SM|Stall|cycles being stalled|Block Limit|Issue Slots|Executed Ipc|SM Busy|pipeline|Pipe' "$OUT/ncu_gemv.log" | head -120 >>$S
# The dense row-sweep GEMV (--gemv-row-sweep): why it streams under 2 TB/s (memory workload,
# stalls, issue load) where a copy reaches 3 TB/s.
step ncu_gemv_sweep 120 ncu --cache-control all --clock-control none \
  -k 'regex:GemvFp8Sweep' -c 6 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
  --section Occupancy --section LaunchStats --section InstructionStats \
  $B/bin/spark-bench engine --config glm-4.5-air --load-format dummy --backend cuda --layers 2 \
  --batch-sizes 1 --input-len 16 --output-len 4 --no-cuda-graphs --gemv-row-sweep
[ "$STEP_RAN" = 1 ] && grep -E '^  [A-Za-z].*(Kernel|Gemv)|Duration|Memory Throughput|DRAM Throughput|L2 Hit|Achieved Occupancy|Theoretical Occupancy|Registers Per|Waves Per SM|Grid Size|Block Limit|Stall|cycles being stalled|Issue Slots|Executed Ipc' "$OUT/ncu_gemv_sweep.log" | head -80 >>$S
# The same for the tensor-core GEMVs (--gemv-tensor-cores).
step ncu_gemv_mma 120 ncu --cache-control all --clock-control none \
  -k 'regex:GateUpMma|DownMma|GemvFp8Mma' -c 12 \
  --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats \
  --section ComputeWorkloadAnalysis --section InstructionStats \
  $B/bin/spark-bench engine --config glm-4.5-air --load-format dummy --backend cuda --layers 2 \
  --batch-sizes 1 --input-len 16 --output-len 4 --no-cuda-graphs --gemv-tensor-cores
[ "$STEP_RAN" = 1 ] && grep -E '^  [A-Za-z].*(Kernel|Gemv)|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Achieved Occupancy|Theoretical Occupancy|Registers Per|Waves Per SM|Stall|cycles being stalled|Block Limit|Issue Slots|Executed Ipc|SM Busy|pipeline|Pipe' "$OUT/ncu_gemv_mma.log" | head -120 >>$S
# The MoE GEMVs at GLM-4.7 tp=4 widths (1 token, both dequant paths) and the router + top-k
# kernel at GLM-4.5-Air's: DRAM and L2 throughput, occupancy, waves, stalls.
step ncu_moe_gemv47 120 ncu --cache-control all --clock-control none \
  -k 'regex:GateUp|Down' -c 8 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
  --section Occupancy --section LaunchStats \
  $B/bin/bench_moe --shapes glm47-tp4 --formats fp8-per-channel --caps 0 --batches 1 --iters 1 \
  --gemv-max-tokens 4 --gemv-fp8-dequant 1,3
[ "$STEP_RAN" = 1 ] && grep -E '^  [A-Za-z].*(Kernel|Gemv)|Duration|Memory Throughput|DRAM Throughput|L2 Hit|Achieved Occupancy|Theoretical Occupancy|Registers Per|Waves Per SM|Grid Size|Block Limit|cycles being stalled|Stall Long' "$OUT/ncu_moe_gemv47.log" | head -80 >>$S
step ncu_router 90 ncu --cache-control none --clock-control none -k 'regex:RouterTopK' -c 2 \
  --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats \
  --section SchedulerStats \
  $B/bin/spark-bench engine --config glm-4.5-air --load-format dummy --backend cuda --layers 2 \
  --batch-sizes 1 --input-len 16 --output-len 4 --no-cuda-graphs
[ "$STEP_RAN" = 1 ] && grep -E '^  [A-Za-z].*Kernel|Duration|Memory Throughput|Achieved Occupancy|Registers Per|Grid Size|Block Size|cycles being stalled|Stall|Issue Slots|Eligible' "$OUT/ncu_router.log" | head -40 >>$S
# The tile GEMMs at 8, 256 and 1,024 tokens: every candidate the tuner times (gate/up and down
# apart), then ncu of the default tiles at 1,024 tokens (GLM-4.5-Air): tensor, L2 and DRAM
# throughput and stalls (where the large batches lose against the anchor).
step moe_tile_sweep 200 $B/bin/bench_moe --formats fp8-per-channel --caps 0 --batches 8,256,1024 \
  --iters 10 --tune-log
[ "$STEP_RAN" = 1 ] && grep -vE '^device:|^$' "$OUT/moe_tile_sweep.log" >>$S
step ncu_tiles 120 ncu --cache-control all --clock-control none -k 'regex:MoeGemmKernel' -c 4 \
  --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats \
  --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  $B/bin/bench_moe --shapes glm45-air --formats fp8-per-channel --caps 0 --batches 1024 --iters 1
[ "$STEP_RAN" = 1 ] && grep -E '^  [A-Za-z].*Kernel|Duration|Memory Throughput|DRAM Throughput|L2 Cache Throughput|L1/TEX Hit|L2 Hit|Compute \(SM\)|Achieved Occupancy|Theoretical Occupancy|Registers Per|Waves Per SM|Stall|cycles being stalled|Block Limit|Executed Ipc|Issue Slots Busy|Pipe' "$OUT/ncu_tiles.log" | head -120 >>$S
# spark-bench as above with MoE tile configs tuned first (buckets up to 256 tokens), with the
# tuning time.
step bench_tuned 240 $B/bin/spark-bench engine --config glm-4.5-air --load-format dummy \
  --backend cuda --layers 24 --batch-sizes 1,8,64 --input-len 128 --output-len 32 \
  --max-batch-tokens 256 --moe-tune
[ "$STEP_RAN" = 1 ] && tail -n 6 "$OUT/bench_tuned.log" >>$S
# Decode at a long context with the tensor-core attention kernel against the CUDA-core one.
for a in --attention-tensor-cores --no-attention-tensor-cores; do
  step long$a 90 $B/bin/spark-bench engine --config glm-4.5-air --load-format dummy \
    --backend cuda --layers 8 --batch-sizes 1,16 --input-len 4096 --output-len 16 \
    --cuda-graphs $a
  [ "$STEP_RAN" = 1 ] && tail -n 3 "$OUT/long$a.log" >>$S
done
# The fused MoE kernel alone at the anchor's shapes (GLM-4.7 tp=4, GLM-4.5-Air), FP8 per-channel,
# with and without the GB10 cap; roofline from the copy bandwidth measured in the same run.
step moe_bench 150 $B/bin/bench_moe --formats fp8-per-channel --caps 0,101376
cat "$OUT/moe_bench.log" >>$S
# Few tokens: the GEMV path against the tiles (both formats of the FP8 checkpoints).
for g in 0 8; do
  step moe_gemv$g 90 $B/bin/bench_moe --formats fp8-per-channel,fp8-block128 --caps 0 \
    --batches 1,2,4,8 --gemv-max-tokens $g
  [ "$STEP_RAN" = 1 ] && grep -vE '^device:|^$' "$OUT/moe_gemv$g.log" >>$S
done
# The autotuner at large batches (tuned against heuristic tiles), then a whole model's MoE
# shapes tuned offline as `spark-model tune-moe` does (issue 7: under 10 minutes on one GPU).
step moe_tune_bench 150 $B/bin/bench_moe --formats fp8-per-channel --caps 0 --batches 64,256,1024 --tune
[ "$STEP_RAN" = 1 ] && grep -vE '^device:|^$' "$OUT/moe_tune_bench.log" >>$S
step tune_moe ${TUNE_S:-590} $B/bin/spark-model tune-moe --config glm-4.5-air --tp 1 \
  --format fp8-channel --out $OUT/moe_tuning.json --max-seconds $(( ${TUNE_S:-590} - 30 ))
[ "$STEP_RAN" = 1 ] && tail -n 30 "$OUT/tune_moe.log" >>$S
# The rest of the backend suite, timings, sanitizers, speculation.
step backend 70 $B/bin/gpu_backend_test --gtest_filter='-*DecodeGraphs*:*DeviceLogits*:*TensorCoreAttention*:*RandomMoeAtAirWidths*:*ProgrammaticLaunch*'
step kernel_timings 60 $B/bin/gpu_kernels_test --gtest_filter='*Timing*'
# The tensor-core attention kernel under racecheck and memcheck (quick shapes).
step sanitize_attention 120 env SPARK_GPU_QUICK=1 compute-sanitizer --tool racecheck \
  --error-exitcode 3 $B/bin/gpu_kernels_test --gtest_filter='PagedAttention*'
[ "$STEP_RAN" = 1 ] && tail -n 3 "$OUT/sanitize_attention.log" >>$S
step memcheck_attention 120 env SPARK_GPU_QUICK=1 compute-sanitizer --tool memcheck \
  --error-exitcode 3 $B/bin/gpu_kernels_test --gtest_filter='PagedAttention*'
[ "$STEP_RAN" = 1 ] && tail -n 3 "$OUT/memcheck_attention.log" >>$S
# The kernels first run in the waiting steps (row sweeps, every-item down, block-wide top-k,
# L2 prefetch, rank-order sum) under racecheck and memcheck.
for tool in racecheck memcheck; do
  # (the prefetcher's test ends a capture unjoined on purpose: API errors are not reported)
  step sanitize_new_$tool 150 env SPARK_GPU_QUICK=1 compute-sanitizer --tool $tool \
    --report-api-errors no --error-exitcode 3 $B/bin/gpu_kernels_test --gtest_filter='*RowSweep*:L2Prefetch*'
  [ "$STEP_RAN" = 1 ] && tail -n 3 "$OUT/sanitize_new_$tool.log" >>$S
  step sanitize_new_moe_$tool 200 compute-sanitizer --tool $tool --error-exitcode 3 \
    $B/bin/gpu_moe_test --gtest_filter='MoeRouterTest.Fused*:*NewGemvSplits*'
  [ "$STEP_RAN" = 1 ] && tail -n 3 "$OUT/sanitize_new_moe_$tool.log" >>$S
done
step sanitize_rank_order_sum 60 compute-sanitizer --tool memcheck --error-exitcode 3 \
  $B/bin/gpu_nccl_test --gtest_filter='*RankOrderSum*'
[ "$STEP_RAN" = 1 ] && tail -n 3 "$OUT/sanitize_rank_order_sum.log" >>$S
step speculation 100 $B/bin/gpu_speculation_test
[ "$STEP_RAN" = 1 ] && grep -iE 'us|ms' "$OUT/speculation.log" | grep -iE 'verify|draft|compact|decode step' | head -10 >>$S
# Greedy equality with speculation through spark-model on CUDA (and its decode speeds).
step spec_generate 90 env SPARK_GPU_BUNDLE=$B OUT=$OUT/spec bash tests/gpu/checks/speculative_generate.sh
echo done >>$S
