#!/usr/bin/env bash
# The cluster on a two-GPU machine: one spark-controller and two spark-agents (one GPU each,
# through CUDA_VISIBLE_DEVICES) deploy a tiny GLM-4 MoE checkpoint with tp=2 on the CUDA backend
# (two spark-shard processes joined by NCCL), serve a chat completion, survive `kill -9` of the
# rank-1 shard (the controller starts a new run and the model serves again), then undeploy.
#
#   tests/gpu/cluster_gpu.sh [BUNDLE]    (default BUNDLE: bundle; made by scripts/gpu-test)
#   SPARK_CLUSTER_TP=4 tests/gpu/cluster_gpu.sh ...   (tp and agents = GPUs used; default 2)
#
# Runs on the GPU machine, in the repository root, with the binaries of BUNDLE/bin (spark-controller,
# spark-agent, spark-shard, sparkctl, spark-model). Logs and a summary go to $OUT (default
# out/cluster-gpu): cluster-logs.tar.gz and cluster-summary.txt. Exit status 0 when every step
# passed. SPARK_CLUSTER_BACKEND=cpu rehearses the same steps on the CPU backend (any machine).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
bundle=${1:-bundle}
# A large bundle travels packed (scripts/gpu-bundle).
if [ ! -d "$bundle/bin" ] && [ -f "$bundle/bin.tar.gz" ]; then tar -xzf "$bundle/bin.tar.gz" -C "$bundle"; fi
out=${OUT:-out/cluster-gpu}
mkdir -p "$out"
summary="$out/cluster-summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
fail() {
  say "FAILED: $*"
  finish 1
}

export LD_LIBRARY_PATH="$ROOT/$bundle/lib:${LD_LIBRARY_PATH:-}"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

MODEL=tiny-glm
TP=${SPARK_CLUSTER_TP:-2}
LAST=$((TP - 1))
BACKEND=${SPARK_CLUSTER_BACKEND:-cuda}
# shellcheck source=scripts/lib/local-cluster.sh
source "$ROOT/scripts/lib/local-cluster.sh"
# The build-tree layout local-cluster.sh expects, made of links into the bundle.
LC_BUILD=$(lc_build_from_bundle "$ROOT/$bundle") || exit 2
export LC_BUILD
export LC_STATE=${SPARK_CLUSTER_STATE:-$(mktemp -d)}
export LC_QUIET=1 LC_HTTP_PORT=0 LC_READY_TIMEOUT_S=${LC_READY_TIMEOUT_S:-300}
# Agent i sees only GPU i, so each shard's device 0 is its own GPU.
export LC_AGENTS=$TP LC_BACKEND=$BACKEND LC_PIN_GPUS=1

finish() {
  local code=$1
  lc_undeploy "$MODEL" >/dev/null 2>&1
  lc_stop >/dev/null 2>&1
  tar -czf "$out/cluster-logs.tar.gz" -C "$LC_STATE" logs agents 2>/dev/null
  [ "$code" -eq 0 ] && say "ALL PASSED"
  rm -rf "$LC_BUILD"
  exit "$code"
}

chat() {  # prints the completion's content, fails when there is none
  curl -sS --max-time 120 "$(lc_url)/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model": "'"$MODEL"'", "max_tokens": 24, "seed": 7, "temperature": 0,
         "messages": [{"role": "user", "content": "Hello from two GPUs!"}]}' |
    python3 -c '
import json, sys
r = json.load(sys.stdin)
c = r["choices"][0]
m = c["message"]
text = (m.get("reasoning_content") or "") + (m.get("content") or "")
assert r["usage"]["completion_tokens"] > 0, r
print(repr(text[:80]), "finish:", c["finish_reason"], "tokens:", r["usage"]["completion_tokens"])'
}

shard_pid() {  # pid of rank $1's newest shard (agent pid files DEPLOYMENT-GENERATION-RANK.pid)
  local f
  f=$(ls -t "$LC_STATE"/agents/*/shards/"$MODEL"-*-"$1".pid 2>/dev/null | head -n 1)
  [ -n "$f" ] || return 1
  sed -n 's/^pid=\([0-9]*\)$/\1/p' "$f"
}

if [ "$BACKEND" = cuda ]; then
  nvidia-smi --query-gpu=index,name --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$summary"
  [ "$(nvidia-smi -L | wc -l)" -ge "$TP" ] || fail "needs $TP GPUs"
fi

say "1. controller + $TP agents (agent i on GPU i), $BACKEND backend"
lc_start || fail "cluster did not start"
lc_sparkctl nodes | sed 's/^/   /' | tee -a "$summary"

say "2. deploy $MODEL with tp=$TP on the $BACKEND backend"
lc_make_model || fail "spark-model tiny"
lc_sparkctl deploy "$MODEL" --path "$LC_STATE/model" --tp "$TP" --backend "$BACKEND" >/dev/null ||
  fail "deploy"
start=$SECONDS
lc_sparkctl wait "$MODEL" --state ready --timeout-s "$LC_READY_TIMEOUT_S" >/dev/null ||
  fail "not ready: $(lc_sparkctl status "$MODEL" 2>&1 | head -n 20)"
say "   ready after $((SECONDS - start)) s"
grep -h "CUDA backend created" "$LC_STATE"/agents/*/logs/*.log 2>/dev/null |
  head -n "$TP" | sed 's/^/   /' | tee -a "$summary"

say "3. chat completion"
reply=$(chat) || fail "chat completion"
say "   $reply"

say "4. kill -9 the rank-$LAST shard; the controller must start a new run"
pid=$(shard_pid "$LAST") || fail "no pid file for the rank-$LAST shard under $LC_STATE/agents"
kill -KILL "$pid" || fail "kill $pid"
start=$SECONDS
recovered() {  # a later run (generation >= 2) serves
  lc_sparkctl runs "$MODEL" 2>/dev/null | awk 'NR > 1 && $3 >= 2 && $4 == "ready" {f = 1} END {exit !f}'
}
lc_wait_for recovered "$LC_READY_TIMEOUT_S" ||
  fail "no new run became ready: $(lc_sparkctl runs "$MODEL" 2>&1 | head -n 5)"
say "   ready again after $((SECONDS - start)) s"
lc_sparkctl runs "$MODEL" 2>/dev/null | head -n 4 | sed 's/^/   /' | tee -a "$summary"

say "5. chat completion on the new run"
reply=$(chat) || fail "chat completion after recovery"
say "   $reply"

say "6. undeploy"
lc_undeploy "$MODEL" || fail "undeploy"
finish 0
