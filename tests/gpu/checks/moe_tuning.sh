#!/usr/bin/env bash
# GPU checks of MoE autotuning (docs/moe-tuning.md); one H100 or H200.
#
# Build the bundle on the dev machine (cuda preset, under both build locks):
#   env SPARK_GPU_BUNDLE=bundle-tune scripts/gpu-test gpu_moe_tuner_test spark-model bench_moe \
#     spark-shard spark-agent spark-controller sparkctl
# Run it on the GPU machine, in the repository root, in one call:
#   run(kind="nvidia-h200", carry=["bundle-tune"], timeout_s=600,
#       command="OUT=$OUT TUNE_STEPS='0 1 2' bash tests/gpu/checks/moe_tuning.sh bundle-tune")
#   (the steps together may exceed one call's 600 s: run TUNE_STEPS='0 1 2', then '3 4 5', then '6' on the same warm machine)
#
# Steps (summary in $OUT/tune-summary.txt, exit status 0 when all passed):
#   0. gpu_moe_tuner_test: the tuner's records (bf16, FP8 channel, FP8 block; device limit and GB10
#      cap) are valid, within the limit, launched by MoeForward once set, same results as the
#      heuristic up to summation order; compute-sanitizer memcheck of the FP8 case.
#   1. spark-model tune-moe --config glm-4.5-air --tp 1 --format fp8-channel: the whole model's MoE
#      shapes (12 buckets, both GEMMs) tuned; wall time must be < 600 s; the verify table shows
#      heuristic vs tuned GEMM time per bucket and proves MoeForward launched the tuned configs.
#   2. the same under the GB10 cap (--smem-cap-bytes 101376): no config above 101,376 bytes.
#   3. GLM-4.7 at tp=4 (E=160, Im=384), buckets 1..256.
#   4. import of an SGLang-named file for this GPU (--no-tune), then verify it is launched.
#   5. bench_moe --tune (tuner vs heuristic, with the roofline).
#   6. cluster (tests/gpu/cluster_gpu.sh, tp=1, tiny MoE model): the first load tunes and writes
#      <state>/agents/n0/moe_tuning.json, the agent reports it, the controller stores it; after
#      deleting the node's file, a second deployment on the same controller gets the records with
#      its assignment and does not tune (shard log: from_controller>0 tuned_now=0).
set -uo pipefail
bundle=${1:-bundle-tune}
if [ ! -d "$bundle/bin" ] && [ -f "$bundle/bin.tar.gz" ]; then tar -xzf "$bundle/bin.tar.gz" -C "$bundle"; fi
out=${OUT:-out/tune}
mkdir -p "$out"
summary="$out/tune-summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
export LD_LIBRARY_PATH="$PWD/$bundle/lib:${LD_LIBRARY_PATH:-}"
export NCCL_NVLS_ENABLE=0
bin=$bundle/bin
failed=0
steps=" ${TUNE_STEPS:-0 1 2 3 4 5 6} "
step() { case "$steps" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$summary"

if step 0; then
say "== gpu_moe_tuner_test"
"$bin/gpu_moe_tuner_test" >"$out/tuner-test.log" 2>&1 || failed=1
grep -E '^\[moe-tuner\]|Failure|^\[  (PASSED|FAILED)' "$out/tuner-test.log" | tee -a "$summary"
compute-sanitizer --tool memcheck "$bin/gpu_moe_tuner_test" --gtest_filter='*fp8_channel*' \
  >"$out/tuner-memcheck.log" 2>&1 || failed=1
grep -E 'ERROR SUMMARY|^\[  (PASSED|FAILED)' "$out/tuner-memcheck.log" | tee -a "$summary"
fi

tune() {  # NAME ARGS...: runs tune-moe, keeps its log, prints the time and the verify table
  local name=$1
  shift
  local start=$SECONDS
  "$bin/spark-model" tune-moe "$@" >"$out/$name.log" 2>&1
  local rc=$?
  say "== $name: exit $rc, $((SECONDS - start)) s wall: spark-model tune-moe $*"
  grep -E '^(device|model|tuned|wrote|imported|warning|verified)|^  batch|^batch|^[0-9]+ ' "$out/$name.log" | tee -a "$summary"
  [ $rc -eq 0 ] || { failed=1; tail -n 5 "$out/$name.log" | tee -a "$summary"; }
  return $rc
}

if step 1; then
s1=$SECONDS
tune air-fp8 --config glm-4.5-air --tp 1 --format fp8-channel --out "$out/air.json"
[ $((SECONDS - s1)) -lt 600 ] || { say "FAILED: GLM-4.5-Air tuning took over 600 s"; failed=1; }
fi

if step 2; then
tune air-fp8-gb10 --config glm-4.5-air --tp 1 --format fp8-channel --smem-cap-bytes 101376 \
  --out "$out/air.json"
python3 - "$out/air.json" <<'PY' | tee -a "$summary" || failed=1
import json, sys
recs = json.load(open(sys.argv[1]))["records"]
def smem(c):
    return (c["block_m"] * 16 + 16 + 127) // 128 * 128 + c["stages"] * (c["block_m"] + c["block_n"]) * c["block_k_bytes"]
bad = [r for r in recs if smem(r["config"]) > r["device"]["smem_limit_bytes"]]
classes = sorted({r["device"]["smem_limit_bytes"] for r in recs})
print(f"air.json: {len(recs)} records, smem limits {classes}, over the limit: {len(bad)}")
sys.exit(1 if bad or 101376 not in classes else 0)
PY
fi

if step 3; then
tune glm47-tp4 --config glm-4.7 --tp 4 --batches 1,2,4,8,16,32,64,128,256 --out "$out/glm47.json"

fi

if step 4; then
# An SGLang-style file named for this GPU (the values are SGLang's usual shapes).
dev=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | sed 's/ /_/g')
imp="$out/E=128,N=1408,device_name=${dev},dtype=fp8_w8a8.json"
cat >"$imp" <<'JSON'
{"1": {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4, "num_stages": 4},
 "64": {"BLOCK_SIZE_M": 32, "BLOCK_SIZE_N": 128, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4, "num_stages": 3},
 "1024": {"BLOCK_SIZE_M": 128, "BLOCK_SIZE_N": 256, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 16, "num_warps": 8, "num_stages": 4}}
JSON
tune air-import --config glm-4.5-air --tp 1 --no-tune --import "$imp" --batches 1,8,64,1024 \
  --out "$out/imported.json"
fi

if step 5; then
say "== bench_moe --tune"
"$bin/bench_moe" --shapes glm45-air,glm47-tp4 --batches 1,8,64,256,1024 --caps 0,101376 --tune \
  >"$out/bench.log" 2>&1 || failed=1
grep -vE '^$' "$out/bench.log" | tail -n 60 | tee -a "$summary"
fi

if step 6; then
say "== cluster: tune once, then served from the controller"
st=$(mktemp -d)
OUT="$out/cluster1" SPARK_CLUSTER_STATE="$st" SPARK_CLUSTER_TP=1 tests/gpu/cluster_gpu.sh "$bundle" \
  >"$out/cluster1.log" 2>&1 || failed=1
tail -n 3 "$out/cluster1/cluster-summary.txt" 2>/dev/null | tee -a "$summary"
grep -h "MoE tuning done\|MoE tile configs" "$st"/agents/*/logs/*.log | head -n 4 | tee -a "$summary"
[ -s "$st/agents/n0/moe_tuning.json" ] || { say "FAILED: no moe_tuning.json in the agent's state dir"; failed=1; }
grep -h "reporting MoE tuning records" "$st"/logs/agent-*.log | head -n 2 | tee -a "$summary"
rm -f "$st"/agents/*/moe_tuning.json "$st"/agents/*/logs/*.log
OUT="$out/cluster2" SPARK_CLUSTER_STATE="$st" SPARK_CLUSTER_TP=1 tests/gpu/cluster_gpu.sh "$bundle" \
  >"$out/cluster2.log" 2>&1 || failed=1
tail -n 3 "$out/cluster2/cluster-summary.txt" 2>/dev/null | tee -a "$summary"
second=$(grep -h "MoE tile configs" "$st"/agents/*/logs/*.log | head -n 1)
say "second load: $second"
if grep -qh "tuning the MoE tile configs" "$st"/agents/*/logs/*.log ||
   ! echo "$second" | grep -q "tuned_now=0" || echo "$second" | grep -q "from_controller=0"; then
  say "FAILED: the second load did not come from the controller's records"
  failed=1
fi
tar -czf "$out/cluster-state-logs.tar.gz" -C "$st" logs agents 2>/dev/null
fi

[ $failed -eq 0 ] && say "ALL PASSED" || say "SOME STEPS FAILED"
exit $failed
