#!/usr/bin/env python3
"""Baseline for engine/bench/tokenizer_bench.cc: Hugging Face `tokenizers` encode throughput.

Same workloads as the C++ benchmark, on one thread (the C++ Encode is single-threaded):
    entries  encode every corpus entry (tests/data/tokenizer/corpus.txt), one call each
    whole    encode the whole corpus file repeated 8 times as one text
plus encode_batch over the entries (HF's own thread pool) for reference, and the load time.

Usage (e.g. on the GPU machine):
    RAYON_NUM_THREADS=1 python3 tests/reference/tokenizer_bench.py \
        .cache/testdata/qwen3/tokenizer.json tests/data/tokenizer/corpus.txt
"""
import argparse
import sys
import time

import tokenizers
from tokenizers import Tokenizer


def read_entries(path):
    with open(path, encoding="utf-8", newline="") as f:
        raw = f.read()
    body = raw[:-1] if raw.endswith("\n") else raw
    return body.split("\n%%%%\n"), raw


def measure(label, fn, nbytes, min_seconds):
    fn()  # warm the word cache, as the C++ benchmark does
    runs, tokens = 0, 0
    start = time.perf_counter()
    while True:
        tokens += fn()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    print(f"{label:<10} {tokens / elapsed / 1e6:8.3f} Mtok/s  "
          f"{runs * nbytes / elapsed / 1e6:8.2f} MB/s  ({runs} runs)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizer_json")
    parser.add_argument("corpus")
    parser.add_argument("--min-seconds", type=float, default=2.0)
    args = parser.parse_args()

    start = time.perf_counter()
    tok = Tokenizer.from_file(args.tokenizer_json)
    print(f"tokenizers {tokenizers.__version__}; load {1e3 * (time.perf_counter() - start):.1f} ms")

    entries, raw = read_entries(args.corpus)
    entry_bytes = sum(len(e.encode("utf-8")) for e in entries)
    whole = raw * 8

    measure("entries", lambda: sum(len(tok.encode(e, add_special_tokens=False).ids)
                                   for e in entries), entry_bytes, args.min_seconds)
    measure("whole", lambda: len(tok.encode(whole, add_special_tokens=False).ids),
            len(whole.encode("utf-8")), args.min_seconds)
    measure("batch", lambda: sum(len(e.ids) for e in
                                 tok.encode_batch(entries, add_special_tokens=False)),
            entry_bytes, args.min_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
