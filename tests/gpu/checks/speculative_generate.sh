#!/usr/bin/env bash
# Speculative decoding on CUDA: greedy output with speculation equals greedy
# output without it, token for token, on the CUDA backend (tiny GLM with an MTP layer, random
# and self-derived draft), chain and tree, tp 1 (and tp 2 on a 2-GPU machine).
# Build + bundle here:  SPARK_GPU_BUNDLE=bundle-spec scripts/gpu-test spark-model spark-bench
# Run on the GPU machine in the repo root:  OUT=$OUT bash tests/gpu/checks/speculative_generate.sh
set -euo pipefail
B=${SPARK_GPU_BUNDLE:-bundle-spec}
[ -f $B/bin.tar.gz ] && tar -C $B -xzf $B/bin.tar.gz
export LD_LIBRARY_PATH=$PWD/$B/lib:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0
M=$PWD/$B/bin/spark-model
OUT=${OUT:-/tmp/spec-out}; mkdir -p $OUT
$M tiny $OUT/tiny_mtp --mtp --seed 5
$PWD/$B/bin/spark-bench speculative --write-model $OUT/self_draft --layers 8   # agreeing draft
fail=0
GPUS=$(nvidia-smi -L | wc -l)
for model in $OUT/tiny_mtp $OUT/self_draft; do
  for tp in 1 2; do
    [ $tp -gt $GPUS ] && continue
    base="generate $model --ids 5,17,3,99,1,250,42 --max-tokens 48 --ignore-eos --json --backend cuda --tp $tp"
    name=$(basename $model)
    $M $base > $OUT/plain_${name}_tp$tp.json
    for flags in "--spec-steps 3" "--spec-steps 1" "--spec-steps 3 --spec-topk 2 --spec-draft-tokens 6" "--spec-steps 2 --spec-topk 3 --spec-draft-tokens 8"; do
      tag=$(echo "$flags" | tr ' -' '__')
      $M $base $flags > $OUT/spec_${name}_tp${tp}${tag}.json
      python3 - $OUT/plain_${name}_tp$tp.json $OUT/spec_${name}_tp${tp}${tag}.json "$name $flags tp$tp" <<'PY' || fail=1
import json, sys
a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2]))
ok = a["ids"] == b["ids"]
print(("[spec] OK  " if ok else "[spec] FAIL"), sys.argv[3], "acceptance", b["speculative"]["acceptance_length"],
      "decode tok/s", b["decode_tokens_per_s"], "vs", a["decode_tokens_per_s"])
sys.exit(0 if ok else 1)
PY
    done
  done
done
# CPU benchmark numbers of the same bundle, for reference (the bench runs the CPU backend).
$PWD/$B/bin/spark-bench speculative --max-tokens 128 --steps 3 > $OUT/bench_cpu.txt 2>&1 || fail=1
cat $OUT/bench_cpu.txt
exit $fail
