// Baseline for engine/bench/tokenizer_bench.cc on the build machine: the Hugging Face Rust
// tokenizer through its official Node.js binding (npm package `tokenizers`, the same 0.23.2
// release as the Python package), on the same corpus and workloads:
//   entries  encode every corpus entry, one call each (includes the binding's per-call cost)
//   whole    encode the whole corpus file repeated 8 times as one text
// Usage: (cd /tmp/hf && npm install tokenizers@0.23.2) &&
//   NODE_PATH=/tmp/hf/node_modules RAYON_NUM_THREADS=1 node tests/reference/tokenizer_bench_hf.mjs \
//       .cache/testdata/qwen3/tokenizer.json tests/data/tokenizer/corpus.txt
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import path from 'node:path';

const require = createRequire(path.join(process.env.NODE_PATH || process.cwd(), 'x.js'));
const { Tokenizer } = require('tokenizers');

const [tokenizerPath, corpusPath] = process.argv.slice(2);
const raw = readFileSync(corpusPath, 'utf8');
const body = raw.endsWith('\n') ? raw.slice(0, -1) : raw;
const entries = body.split('\n%%%%\n');
const whole = raw.repeat(8);
const entryBytes = entries.reduce((n, e) => n + Buffer.byteLength(e), 0);

let t0 = performance.now();
const tok = Tokenizer.fromFile(tokenizerPath);
console.log(`tokenizers (node binding); load ${(performance.now() - t0).toFixed(1)} ms`);

async function measure(label, fn, nbytes, minSeconds = 2.0) {
  await fn();  // warm-up
  let runs = 0, tokens = 0;
  const start = performance.now();
  let elapsed = 0;
  do {
    tokens += await fn();
    runs += 1;
    elapsed = (performance.now() - start) / 1e3;
  } while (elapsed < minSeconds);
  console.log(`${label.padEnd(10)} ${(tokens / elapsed / 1e6).toFixed(3).padStart(8)} Mtok/s  ` +
              `${(runs * nbytes / elapsed / 1e6).toFixed(2).padStart(8)} MB/s  (${runs} runs)`);
}

const opts = { addSpecialTokens: false };
await measure('entries', async () => {
  let n = 0;
  for (const e of entries) n += (await tok.encode(e, null, opts)).getIds().length;
  return n;
}, entryBytes);
await measure('whole', async () => (await tok.encode(whole, null, opts)).getIds().length,
              Buffer.byteLength(whole));
