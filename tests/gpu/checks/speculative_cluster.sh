#!/usr/bin/env bash
# Speculative decoding through the control plane on the CUDA backend (two GPUs, tp=2).
# A deployment with `--option speculative.steps=2` (topk 1) on a tiny GLM checkpoint with an MTP
# layer must serve the same greedy chat completion and completion tokens as the same checkpoint
# deployed without speculation, show its counters in `sparkctl status` and /metrics
# (spark_spec_drafted_tokens_total > 0), and a checkpoint without MTP must fail naming the fix.
#
# 1. Here (build machine), under the CUDA build lock:
#      env SPARK_GPU_BUNDLE=bundle-ctl \
#        scripts/gpu-test spark-shard spark-agent spark-controller sparkctl spark-model
#      (the script runs from the repository root: tests/gpu/checks/speculative_cluster.sh)
# 2. On the GPU machine (device tool, one call, repository root):
#      run(kind="nvidia-h100-x2", carry=["bundle-ctl"], timeout_s=600,
#          command="OUT=$OUT bash tests/gpu/checks/speculative_cluster.sh bundle-ctl")
# SPARK_CLUSTER_BACKEND=cpu rehearses the same steps on any machine.
set -uo pipefail
ROOT=$(pwd)
bundle=${1:-bundle-ctl}
if [ ! -d "$bundle/bin" ] && [ -f "$bundle/bin.tar.gz" ]; then tar -xzf "$bundle/bin.tar.gz" -C "$bundle"; fi
out=${OUT:-out/ctl}
mkdir -p "$out"
summary="$out/ctl-summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
fail() {
  say "FAILED: $*"
  finish 1
}
export LD_LIBRARY_PATH="$ROOT/$bundle/lib:${LD_LIBRARY_PATH:-}"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

BACKEND=${SPARK_CLUSTER_BACKEND:-cuda}
# shellcheck source=/dev/null
source "$ROOT/scripts/lib/local-cluster.sh"
LC_BUILD=$(lc_build_from_bundle "$ROOT/$bundle") || exit 2
export LC_BUILD
export LC_STATE=$(mktemp -d)
export LC_QUIET=1 LC_HTTP_PORT=0 LC_READY_TIMEOUT_S=${LC_READY_TIMEOUT_S:-300} LC_AGENTS=2
export LC_CONTROLLER_FLAGS="--restart-budget 1"
# Agent i sees only GPU i.
export LC_BACKEND=$BACKEND LC_PIN_GPUS=1

finish() {
  local code=$1
  for m in spec plain auto nomtp; do lc_undeploy "$m" >/dev/null 2>&1; done
  lc_stop >/dev/null 2>&1
  tar -czf "$out/ctl-logs.tar.gz" -C "$LC_STATE" logs agents 2>/dev/null
  [ "$code" -eq 0 ] && say "ALL PASSED"
  rm -rf "$LC_BUILD"
  exit "$code"
}

chat() {  # $1 model: prints content and completion tokens
  curl -sS --max-time 120 "$(lc_url)/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model": "'"$1"'", "max_tokens": 24, "temperature": 0, "ignore_eos": true,
         "chat_template_kwargs": {"enable_thinking": false},
         "messages": [{"role": "user", "content": "Hello from two GPUs!"}]}' |
    python3 -c '
import json, sys
r = json.load(sys.stdin)
m = r["choices"][0]["message"]
print(json.dumps((m.get("reasoning_content") or "") + (m.get("content") or "")), r["usage"]["completion_tokens"])'
}
complete() {  # $1 model: prints the token ids
  curl -sS --max-time 120 "$(lc_url)/v1/completions" -H 'Content-Type: application/json' \
    -d '{"model": "'"$1"'", "prompt": [1, 2, 3, 4, 5], "max_tokens": 32, "temperature": 0,
         "ignore_eos": true}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["token_ids"])'
}
deploy_wait() {  # NAME PATH [sparkctl deploy args...]
  local name=$1 path=$2
  shift 2
  lc_sparkctl deploy "$name" --path "$path" --tp 2 --backend "$BACKEND" "$@" >/dev/null || fail "deploy $name"
  local start=$SECONDS
  lc_sparkctl wait "$name" --state ready --timeout-s "$LC_READY_TIMEOUT_S" >/dev/null ||
    fail "$name not ready: $(lc_sparkctl status "$name" 2>&1 | head -n 20)"
  say "   $name ready after $((SECONDS - start)) s"
}

[ "$BACKEND" = cuda ] && nvidia-smi --query-gpu=index,name --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$summary"
say "1. controller + 2 agents ($BACKEND backend), tiny GLM with an MTP layer"
lc_start || fail "cluster did not start"
"$LC_BUILD/engine/tools/spark-model" tiny "$LC_STATE/model-mtp" --mtp >"$LC_STATE/logs/model-mtp.log" 2>&1 ||
  fail "spark-model tiny --mtp"

say "2. deploy spec (tp 2, --option speculative.steps=2)"
deploy_wait spec "$LC_STATE/model-mtp" --option speculative.steps=2
spec_chat=$(chat spec) || fail "chat on spec"
spec_ids=$(complete spec) || fail "completion on spec"
say "   chat: $spec_chat"
say "   ids:  $spec_ids"
sleep 2  # rank 0 reports its counters about once a second
lc_sparkctl status spec | grep -E "^(options|speculative):" | sed 's/^/   /' | tee -a "$summary"
curl -sS "$(lc_url)/metrics" | grep '^spark_spec_' | sed 's/^/   /' | tee -a "$summary"
drafted=$(curl -sS "$(lc_url)/metrics" | sed -n 's/^spark_spec_drafted_tokens_total{model="spec"} //p')
awk -v d="${drafted:-0}" 'BEGIN {exit !(d > 0)}' || fail "no drafted tokens in /metrics"
lc_undeploy spec || fail "undeploy spec"

say "3. deploy plain (same checkpoint, --option speculative=off)"
deploy_wait plain "$LC_STATE/model-mtp" --option speculative=off
plain_chat=$(chat plain) || fail "chat on plain"
plain_ids=$(complete plain) || fail "completion on plain"
say "   chat: $plain_chat"
say "   ids:  $plain_ids"
[ "$spec_chat" = "$plain_chat" ] || fail "greedy chat differs with speculation"
[ "$spec_ids" = "$plain_ids" ] || fail "greedy completion differs with speculation"
say "   greedy output equal with and without speculation"
off_drafted=$(curl -sS "$(lc_url)/metrics" | sed -n 's/^spark_spec_drafted_tokens_total{model="plain"} //p')
[ -z "$off_drafted" ] || [ "$off_drafted" = 0 ] || fail "speculative=off drafted $off_drafted tokens"
lc_undeploy plain || fail "undeploy plain"

say "3b. deploy auto (same checkpoint, no speculative option): speculates on CUDA only"
deploy_wait auto "$LC_STATE/model-mtp"
auto_ids=$(complete auto) || fail "completion on auto"
[ "$auto_ids" = "$plain_ids" ] || fail "greedy completion differs in the automatic mode"
sleep 2
auto_drafted=$(curl -sS "$(lc_url)/metrics" | sed -n 's/^spark_spec_drafted_tokens_total{model="auto"} //p')
say "   auto: drafted ${auto_drafted:-none}"
if [ "$BACKEND" = cuda ]; then
  awk -v d="${auto_drafted:-0}" 'BEGIN {exit !(d > 0)}' || fail "the automatic mode did not speculate on CUDA"
else
  [ -z "$auto_drafted" ] || [ "$auto_drafted" = 0 ] || fail "the automatic mode speculated on the CPU"
fi
lc_undeploy auto || fail "undeploy auto"

say "4. speculative on a checkpoint without MTP fails naming the fix"
lc_make_model || fail "spark-model tiny"
lc_sparkctl deploy nomtp --path "$LC_STATE/model" --tp 2 --backend "$BACKEND" \
  --option speculative.steps=2 >/dev/null || fail "deploy nomtp"
lc_wait_for "lc_sparkctl --json status nomtp | grep -q 'has no MTP layer'" 120 ||
  fail "no MTP error: $(lc_sparkctl status nomtp 2>&1 | head -n 12)"
lc_sparkctl --json status nomtp | python3 -c 'import json, sys; print("   " + json.load(sys.stdin)["last_error"][:200])' | tee -a "$summary"
finish 0
