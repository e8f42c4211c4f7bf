#!/usr/bin/env python3
"""Writes the golden ids of tests/engine/text with Hugging Face `tokenizers` (the reference).

Usage (on a machine with the Python `tokenizers` package, e.g. the GPU machine):
    python3 tests/reference/tokenizer_golden.py \
        .cache/testdata/qwen3/tokenizer.json tests/data/tokenizer/corpus.txt \
        tests/data/tokenizer/qwen3_golden.jsonl

Corpus format (shared with tokenizer_golden_js.mjs): the file minus one trailing "\\n", split on
"\\n%%%%\\n"; each piece is one entry, and the whole file is one more entry at the end.

Each output line is {"text", "ids", "decoded", "ids_no_special"}:
    ids             Tokenizer.encode(text, add_special_tokens=False).ids
    decoded         Tokenizer.decode(ids, skip_special_tokens=False)
    ids_no_special  the same encode with encode_special_tokens=True (special tokens as text)
"""
import argparse
import json
import sys

import tokenizers
from tokenizers import Tokenizer


def read_entries(path):
    with open(path, encoding="utf-8", newline="") as f:
        raw = f.read()
    body = raw[:-1] if raw.endswith("\n") else raw
    entries = body.split("\n%%%%\n")
    entries.append(raw)
    return entries


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizer_json")
    parser.add_argument("corpus")
    parser.add_argument("out_jsonl")
    args = parser.parse_args()

    tok = Tokenizer.from_file(args.tokenizer_json)
    lines = []
    for text in read_entries(args.corpus):
        tok.encode_special_tokens = False
        ids = tok.encode(text, add_special_tokens=False).ids
        decoded = tok.decode(ids, skip_special_tokens=False)
        tok.encode_special_tokens = True
        ids_no_special = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        lines.append(json.dumps({"text": text, "ids": ids, "decoded": decoded,
                                 "ids_no_special": ids_no_special}, ensure_ascii=False))
    with open(args.out_jsonl, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    print(f"tokenizers {tokenizers.__version__}: wrote {len(lines)} entries to {args.out_jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
