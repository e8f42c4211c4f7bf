#!/usr/bin/env bash
# Runs the steps of one_gpu_call.sh that wait for a GPU run (docs/gpu-testing.md), most urgent
# first, within BUDGET_S seconds (default 540: one device call with room to spare), then leaves
# only the logs and summary.txt under $OUT (other files, such as model_cuda's generated
# checkpoints, would crowd out what comes back). STEPS="name ..." overrides the list.
#   run(carry=["bundle"], timeout_s=600, command="OUT=$OUT bash tests/gpu/checks/waiting_steps.sh")
set -uo pipefail
: "${OUT:?set OUT}"
export OUT
STEPS=${STEPS:-"moe_router tuner_gemv tune_gemv_glm47 tune_gemv_glm45air dense_gemv_tuner
  bench_l2_0 bench_gemv_auto l2_prefetch gemv_sweep rank_order_sum bench_l2_30 bench_cap
  bench_sweep moe_down_items gemv_splits ncu_router ncu_moe_gemv47 mma_gemv moe_gemv_mma
  bench--gemv-tensor-cores bench_l2_60 bench_tuned mma_moe sanitize_new_racecheck
  sanitize_new_moe_racecheck sanitize_new_memcheck sanitize_new_moe_memcheck
  sanitize_rank_order_sum"}
budget=${BUDGET_S:-540}
start=$(date +%s)
for st in $STEPS; do
  left=$((budget - ($(date +%s) - start)))
  if [ "$left" -le 20 ]; then
    echo "== $st skipped: the budget is spent" >>"$OUT/summary.txt"
    continue
  fi
  ONLY=$st timeout "$left" bash tests/gpu/checks/one_gpu_call.sh >/dev/null 2>&1
done
pkill -f 'bundle/bin/' 2>/dev/null
find "$OUT" -mindepth 1 -maxdepth 1 ! -name '*.log' ! -name summary.txt -exec rm -rf {} +
grep '^== ' "$OUT/summary.txt"
