#!/usr/bin/env bash
# Runs the steps of one_gpu_call.sh that wait for a GPU run (docs/gpu-testing.md), most urgent
# first, within BUDGET_S seconds (default 540: one device call with room to spare), then leaves
# only the logs and summary.txt under $OUT (other files, such as model_cuda's generated
# checkpoints, would crowd out what comes back). STEPS="name ..." overrides the list.
#   run(carry=["bundle"], timeout_s=600, command="OUT=$OUT bash tests/gpu/checks/waiting_steps.sh")
set -uo pipefail
: "${OUT:?set OUT}"
export OUT
STEPS=${STEPS:-"bench_l2_0 bench_gemv_auto dense_gemv_tuner ncu_gemv_sweep moe_tuner moe_all ncu ncu_gemv ncu_tiles
  speculation backend"}
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
