# shellcheck shell=bash
# A spark cluster on this machine: one spark-controller and N spark-agents (CPU backend) on
# 127.0.0.1, serving `spark-model tiny` checkpoints. Sourced by scripts/demo, scripts/bench-serve
# and the end-to-end test harness (tests/e2e/run-e2e).
#
# Everything lives in a state directory STATE:
#   STATE/model/                 the tiny checkpoint (made once)
#   STATE/controller.db          the controller's SQLite store
#   STATE/controller.ports.json  ports the controller bound ({"http_port", "agent_endpoint"})
#   STATE/pids/*.pid             one file per process started here (controller, agent-N)
#   STATE/agents/nN/             agent state directories (their shards' pid files are under shards/)
#   STATE/logs/*.log             one log per process
#
# Settings (environment, read by lc_start): LC_BUILD (build tree with the binaries, required),
# LC_STATE (state directory, required), LC_AGENTS (default 2), LC_HTTP_PORT (0: any free port),
# LC_API_KEYS_FILE / LC_ADMIN_KEY_FILE (passed to spark-controller when set), LC_QUIET (1: no
# progress lines), LC_CONTROLLER_FLAGS (extra spark-controller flags, split on spaces),
# LC_BACKEND (the agents' backend, default cpu), LC_PIN_GPUS (1: agent i sees only GPU i through
# CUDA_VISIBLE_DEVICES, so each shard's device 0 is its own GPU).
#
# Processes are started with setsid so that they outlive the calling shell; lc_stop ends exactly
# the processes recorded in the pid files (and the shards those agents recorded), nothing else.

lc_say() { [ "${LC_QUIET:-0}" = 1 ] || printf '%s\n' "$*"; }

lc_die() {
  printf 'error: %s\n' "$*" >&2
  return 1
}

# The PID in STATE/pids/NAME.pid when that process is alive and is the binary it was started as.
lc_pid() {
  local file=$LC_STATE/pids/$1.pid pid exe
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  exe=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  case "$exe" in *spark-*) printf '%s\n' "$pid" ;; *) return 1 ;; esac
}

lc_http_port() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http_port"])' \
    "$LC_STATE/controller.ports.json"
}

lc_agent_endpoint() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["agent_endpoint"])' \
    "$LC_STATE/controller.ports.json"
}

lc_url() { printf 'http://127.0.0.1:%s\n' "$(lc_http_port)"; }

# sparkctl against this cluster (with the admin key when one is configured).
lc_sparkctl() {
  local args=(--controller "$(lc_url)")
  if [ -n "${LC_ADMIN_KEY_FILE:-}" ]; then
    args+=(--token "$(grep -v '^#' "$LC_ADMIN_KEY_FILE" | head -n1)")
  fi
  "$LC_BUILD/controller/sparkctl" "${args[@]}" "$@"
}

# Checks that the binaries exist in LC_BUILD.
lc_check_binaries() {
  local missing=() b
  for b in controller/spark-controller controller/sparkctl agent/spark-agent engine/shard/spark-shard \
    engine/tools/spark-model; do
    [ -x "$LC_BUILD/$b" ] || missing+=("$LC_BUILD/$b")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    lc_die "not built: ${missing[*]} (build them with: cmake --build $LC_BUILD --target" \
      "spark-controller spark-agent spark-shard spark-model sparkctl)"
  fi
}

# Makes the tiny checkpoint in STATE/model once.
lc_make_model() {
  if [ -f "$LC_STATE/model/config.json" ] && [ -f "$LC_STATE/model/tokenizer.json" ]; then
    return 0
  fi
  rm -rf "$LC_STATE/model"
  "$LC_BUILD/engine/tools/spark-model" tiny "$LC_STATE/model" >"$LC_STATE/logs/spark-model.log" 2>&1 ||
    lc_die "spark-model tiny failed: $(tail -n5 "$LC_STATE/logs/spark-model.log")"
}

# Waits up to $2 seconds for command $1 (a function or command string) to succeed.
lc_wait_for() {
  local what=$1 deadline=$((SECONDS + $2))
  while [ $SECONDS -lt $deadline ]; do
    if eval "$what" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  eval "$what" >/dev/null 2>&1
}

lc_start_controller() {
  if lc_pid controller >/dev/null; then return 0; fi
  rm -f "$LC_STATE/controller.ports.json"
  local args=(--db "$LC_STATE/controller.db" --http-listen "127.0.0.1:${LC_HTTP_PORT:-0}"
    --agent-listen "tcp://127.0.0.1:*" --port-file "$LC_STATE/controller.ports.json" --insecure
    --log-sink stderr --log-level info)
  [ -n "${LC_API_KEYS_FILE:-}" ] && args+=(--api-keys-file "$LC_API_KEYS_FILE")
  [ -n "${LC_ADMIN_KEY_FILE:-}" ] && args+=(--admin-key-file "$LC_ADMIN_KEY_FILE")
  # shellcheck disable=SC2206
  [ -n "${LC_CONTROLLER_FLAGS:-}" ] && args+=($LC_CONTROLLER_FLAGS)
  setsid "$LC_BUILD/controller/spark-controller" "${args[@]}" \
    >>"$LC_STATE/logs/controller.log" 2>&1 </dev/null &
  echo $! >"$LC_STATE/pids/controller.pid"
  if ! lc_wait_for "[ -s '$LC_STATE/controller.ports.json' ]" 20; then
    lc_die "spark-controller did not start within 20 s; its log ($LC_STATE/logs/controller.log):
$(tail -n 15 "$LC_STATE/logs/controller.log")"
    return 1
  fi
}

lc_start_agent() {
  local i=$1 node="n$1"
  if lc_pid "agent-$i" >/dev/null; then return 0; fi
  mkdir -p "$LC_STATE/agents/$node"
  # Every agent of this machine pretends to be its own node, with its own boot id.
  [ -s "$LC_STATE/agents/$node.boot-id" ] || cat /proc/sys/kernel/random/uuid >"$LC_STATE/agents/$node.boot-id"
  local pin=()
  if [ "${LC_PIN_GPUS:-0}" = 1 ]; then pin=(env "CUDA_VISIBLE_DEVICES=$i"); fi
  "${pin[@]}" setsid "$LC_BUILD/agent/spark-agent" --controller "$(lc_agent_endpoint)" \
    --node-name "$node" --backend "${LC_BACKEND:-cpu}" --state-dir "$LC_STATE/agents/$node" \
    --shard-binary "$LC_BUILD/engine/shard/spark-shard" --data-listen 127.0.0.1:0 \
    --advertise-host 127.0.0.1 --boot-id-file "$LC_STATE/agents/$node.boot-id" --insecure \
    --log-sink stderr >>"$LC_STATE/logs/agent-$i.log" 2>&1 </dev/null &
  echo $! >"$LC_STATE/pids/agent-$i.pid"
}

# A build tree (LC_BUILD layout) of links into the bin/ of a binary bundle (scripts/gpu-bundle,
# absolute path BUNDLE): prints the new directory, or fails naming a missing binary.
lc_build_from_bundle() {
  local bin=$1/bin dir b
  dir=$(mktemp -d) || return 1
  mkdir -p "$dir/controller" "$dir/agent" "$dir/engine/shard" "$dir/engine/tools"
  for b in controller/spark-controller controller/sparkctl agent/spark-agent \
    engine/shard/spark-shard engine/tools/spark-model; do
    if [ ! -x "$bin/$(basename "$b")" ]; then
      rm -rf "$dir"
      lc_die "$bin/$(basename "$b") is missing; build the bundle with scripts/gpu-bundle"
      return 1
    fi
    ln -s "$bin/$(basename "$b")" "$dir/$b"
  done
  printf '%s\n' "$dir"
}

lc_nodes_alive() {
  local want=$1
  [ "$(lc_sparkctl --json nodes 2>/dev/null | python3 -c '
import json, sys
nodes = json.load(sys.stdin)
nodes = nodes.get("nodes", nodes) if isinstance(nodes, dict) else nodes
print(sum(1 for n in nodes if n.get("state") == "alive"))' 2>/dev/null)" = "$want" ]
}

# Starts whatever of the controller and the agents is not running and waits until every agent is
# registered.
lc_start() {
  : "${LC_BUILD:?}" "${LC_STATE:?}"
  local agents=${LC_AGENTS:-2} i
  lc_check_binaries || return 1
  mkdir -p "$LC_STATE/pids" "$LC_STATE/logs" "$LC_STATE/agents"
  lc_make_model || return 1
  lc_start_controller || return 1
  for ((i = 0; i < agents; i++)); do lc_start_agent "$i"; done
  if ! lc_wait_for "lc_nodes_alive $agents" 30; then
    lc_die "the agents did not register within 30 s; logs in $LC_STATE/logs:
$(tail -n 8 "$LC_STATE"/logs/agent-*.log)"
    return 1
  fi
}

# lc_deploy NAME TP: deploys STATE/model when NAME is not deployed yet, and waits until it serves.
lc_deploy() {
  local name=$1 tp=$2
  if ! lc_sparkctl status "$name" >/dev/null 2>&1; then
    lc_sparkctl deploy "$name" --path "$LC_STATE/model" --tp "$tp" --backend cpu >/dev/null ||
      return 1
  fi
  if ! lc_sparkctl wait "$name" --state ready --timeout-s "${LC_READY_TIMEOUT_S:-180}" >/dev/null; then
    lc_die "model $name did not become ready; sparkctl status $name says:
$(lc_sparkctl status "$name" 2>&1 | head -n 20)"
    return 1
  fi
}

# lc_undeploy NAME: removes the deployment (its shards stop) and waits up to 20 s until it is gone,
# so that a later start deploys afresh (no run to recover, restart budget untouched).
lc_undeploy() {
  local name=$1
  lc_sparkctl status "$name" >/dev/null 2>&1 || return 0
  lc_sparkctl undeploy "$name" >/dev/null || return 1
  lc_wait_for "! lc_sparkctl status '$name'" 20
}

lc_running() { lc_pid controller >/dev/null; }

# Sends SIGTERM to PID and waits up to $2 seconds, then SIGKILL.
lc_end_pid() {
  local pid=$1 seconds=$2 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < seconds * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# Stops the agents (they stop their shards), any shard they left, then the controller.
lc_stop() {
  : "${LC_STATE:?}"
  local file name pid
  [ -d "$LC_STATE/pids" ] || return 0
  for file in "$LC_STATE"/pids/agent-*.pid; do
    [ -f "$file" ] || continue
    name=$(basename "$file" .pid)
    if pid=$(lc_pid "$name"); then lc_end_pid "$pid" 10; fi
    rm -f "$file"
  done
  # Shards whose agent was killed before it could stop them: only processes whose command line
  # names this state directory's assignment files.
  for file in "$LC_STATE"/agents/*/shards/*.pid; do
    [ -f "$file" ] || continue
    pid=$(sed -n 's/^pid=\([0-9]*\)$/\1/p' "$file")
    if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--assignment $LC_STATE/"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  if pid=$(lc_pid controller); then lc_end_pid "$pid" 10; fi
  rm -f "$LC_STATE/pids/controller.pid" "$LC_STATE/controller.ports.json"
}
