// End-to-end tests of spark-controller's OpenAI-compatible endpoint, driven with the official
// OpenAI Node SDK (npm `openai`) against a running cluster serving the tiny random GLM-4 MoE
// checkpoint with tensor parallelism 2 on the CPU backend.
//
// Started by tests/e2e/run-e2e, which brings the cluster up and passes:
//   SPARK_E2E_URL      http://127.0.0.1:PORT (the controller)
//   SPARK_E2E_API_KEY  a key of the controller's --api-keys-file
//   SPARK_E2E_MODEL    the deployment name
//   SPARK_E2E_ADMIN_KEY  the key of the controller's --admin-key-file (lifecycle API)
//
// The model's weights are random, so no test looks at what the text says: they check the
// protocol (shapes, counts, determinism, streaming equal to non-streaming, stop strings cut the
// text where the unrestricted text had them, errors).
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { describe, test } from 'node:test';

import OpenAI from 'openai';

const BASE_URL = process.env.SPARK_E2E_URL;
const API_KEY = process.env.SPARK_E2E_API_KEY;
const MODEL = process.env.SPARK_E2E_MODEL ?? 'tiny-glm';
const ADMIN_KEY = process.env.SPARK_E2E_ADMIN_KEY;
// Larger than the controller's request body limit (8 MiB by default).
const TOO_LARGE_BYTES = Number(process.env.SPARK_E2E_TOO_LARGE_BYTES ?? 20 * 1024 * 1024);

if (!BASE_URL || !API_KEY) {
  throw new Error(
    'SPARK_E2E_URL and SPARK_E2E_API_KEY are not set: run the suite through tests/e2e/run-e2e');
}

const client = new OpenAI({ baseURL: `${BASE_URL}/v1`, apiKey: API_KEY, maxRetries: 0, timeout: 120_000 });
const USER = [{ role: 'user', content: 'Write a short poem about GPUs.' }];

// POST with a raw body (a header given as null is left out); returns { status, headers, text,
// json }.
async function rawPost(path, body, headers = {}) {
  const merged = { 'Content-Type': 'application/json', Authorization: `Bearer ${API_KEY}`, ...headers };
  for (const name of Object.keys(merged)) if (merged[name] === null) delete merged[name];
  const response = await fetch(`${BASE_URL}${path}`, { method: 'POST', headers: merged, body });
  const text = await response.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // left null: the assertion names the body
  }
  return { status: response.status, headers: response.headers, text, json };
}

// The OpenAI error object: {"error": {"message": string, "type": string, "param", "code"}}.
function assertOpenAiError(response, expectedStatus) {
  assert.equal(response.status, expectedStatus, `status ${response.status}, body ${response.text}`);
  assert.ok(response.json && typeof response.json.error === 'object',
    `no OpenAI error object in ${response.text}`);
  const { error } = response.json;
  assert.equal(typeof error.message, 'string');
  assert.ok(error.message.length > 0, 'empty error message');
  assert.equal(typeof error.type, 'string');
  assert.ok('param' in error, `error without "param": ${response.text}`);
  assert.ok('code' in error, `error without "code": ${response.text}`);
  return error;
}

// The error's message or param names `field`.
function assertNamesField(error, field) {
  const named = (error.param ?? '').includes(field) || error.message.includes(field);
  assert.ok(named, `the error does not name "${field}": ${JSON.stringify(error)}`);
}

async function collectChatStream(params) {
  const stream = await client.chat.completions.create({ ...params, stream: true });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

function streamedContent(chunks, index = 0) {
  let content = '';
  for (const chunk of chunks) {
    for (const choice of chunk.choices) {
      if (choice.index === index && choice.delta?.content) content += choice.delta.content;
    }
  }
  return content;
}

// A greedy completion of at least `minChars` characters of content (the random model may end
// early on some prompts; a few prompts are tried).
async function longGreedyCompletion(minChars) {
  for (const prompt of ['The cluster', 'Once upon a time', 'Tensor parallel shards', 'Hello world']) {
    const r = await client.completions.create({
      model: MODEL, prompt, max_tokens: 40, temperature: 0, ignore_eos: true,
    });
    const text = r.choices[0].text;
    if (text.length >= minChars) return { prompt, text };
  }
  throw new Error(`no prompt gave ${minChars} characters of greedy text`);
}

// A stop string that first occurs in `text` past its start: characters [at, at + length).
function stopStringOf(text) {
  for (let at = Math.floor(text.length / 3); at + 3 <= text.length; at++) {
    const candidate = text.slice(at, at + 3);
    if (candidate.trim().length === 3 && text.indexOf(candidate) === at) return candidate;
  }
  for (let at = 1; at + 2 <= text.length; at++) {
    const candidate = text.slice(at, at + 2);
    if (text.indexOf(candidate) === at) return candidate;
  }
  throw new Error(`no usable stop string in ${JSON.stringify(text)}`);
}

describe('models', () => {
  test('GET /v1/models lists the deployment', async () => {
    const models = [];
    for await (const m of client.models.list()) models.push(m);
    const ours = models.find((m) => m.id === MODEL);
    assert.ok(ours, `${MODEL} not in ${JSON.stringify(models)}`);
    assert.equal(ours.object, 'model');
    assert.equal(typeof ours.created, 'number');
    assert.equal(typeof ours.owned_by, 'string');
  });
});

describe('chat completions', () => {
  test('non-streaming: OpenAI shape, usage numbers, deterministic at temperature 0', async () => {
    const params = { model: MODEL, messages: USER, max_tokens: 12, temperature: 0, ignore_eos: true };
    const r = await client.chat.completions.create(params);
    assert.equal(r.object, 'chat.completion');
    assert.equal(typeof r.id, 'string');
    assert.equal(typeof r.created, 'number');
    assert.equal(r.model, MODEL);
    assert.equal(r.choices.length, 1);
    const choice = r.choices[0];
    assert.equal(choice.index, 0);
    assert.equal(choice.message.role, 'assistant');
    assert.equal(choice.finish_reason, 'length');
    const text = (choice.message.content ?? '') + (choice.message.reasoning_content ?? '');
    assert.ok(text.length > 0, 'twelve tokens gave no text');
    assert.equal(r.usage.completion_tokens, 12);
    assert.ok(r.usage.prompt_tokens > 5, `prompt_tokens ${r.usage.prompt_tokens}`);
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);

    const again = await client.chat.completions.create(params);
    assert.deepEqual(again.choices[0].message, choice.message);
    assert.equal(again.usage.prompt_tokens, r.usage.prompt_tokens);
    assert.notEqual(again.id, r.id);
  });

  test('reasoning: thinking on by default, off with chat_template_kwargs; reasoning tokens counted', async () => {
    const base = { model: MODEL, messages: USER, max_tokens: 24, temperature: 0, ignore_eos: true };
    const thinking = await client.chat.completions.create(base);
    const details = thinking.usage.completion_tokens_details;
    assert.equal(typeof details?.reasoning_tokens, 'number', JSON.stringify(thinking.usage));
    assert.ok(details.reasoning_tokens >= 0 && details.reasoning_tokens <= thinking.usage.completion_tokens);
    const reasoning = thinking.choices[0].message.reasoning_content ?? '';
    assert.equal(reasoning.length > 0, details.reasoning_tokens > 0,
      `reasoning_content ${JSON.stringify(reasoning)} vs ${details.reasoning_tokens} reasoning tokens`);
    assert.ok(!reasoning.includes('<think>') && !(thinking.choices[0].message.content ?? '').includes('<think>'));

    const off = await client.chat.completions.create({ ...base, chat_template_kwargs: { enable_thinking: false } });
    assert.ok(!off.choices[0].message.reasoning_content, 'reasoning with thinking off');
    assert.equal(off.usage.completion_tokens_details?.reasoning_tokens ?? 0, 0);
    assert.notEqual(off.usage.prompt_tokens, thinking.usage.prompt_tokens, 'thinking off renders another prompt');
  });

  test('prompt_tokens grows with the conversation', async () => {
    const short = await client.chat.completions.create({ model: MODEL, messages: USER, max_tokens: 1 });
    const longer = await client.chat.completions.create({
      model: MODEL,
      max_tokens: 1,
      messages: [{ role: 'system', content: 'You are a helpful assistant.' }, ...USER,
        { role: 'assistant', content: 'GPUs hum.' }, { role: 'user', content: 'Another one.' }],
    });
    assert.ok(longer.usage.prompt_tokens > short.usage.prompt_tokens + 10,
      `${longer.usage.prompt_tokens} vs ${short.usage.prompt_tokens}`);
  });

  test('streaming: role first, deltas add up to the non-streaming text, usage chunk, [DONE]', async () => {
    const params = { model: MODEL, messages: USER, max_tokens: 16, temperature: 0, ignore_eos: true };
    const whole = await client.chat.completions.create({ ...params, chat_template_kwargs: { enable_thinking: false } });
    const chunks = await collectChatStream({
      ...params, chat_template_kwargs: { enable_thinking: false }, stream_options: { include_usage: true },
    });
    assert.ok(chunks.length >= 3, `only ${chunks.length} chunks`);
    const ids = new Set(chunks.map((c) => c.id));
    assert.equal(ids.size, 1, 'chunks of one stream carry one id');
    for (const c of chunks) {
      assert.equal(c.object, 'chat.completion.chunk');
      assert.equal(c.model, MODEL);
    }
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    const finishes = chunks.flatMap((c) => c.choices.filter((ch) => ch.finish_reason).map((ch) => ch.finish_reason));
    assert.deepEqual(finishes, ['length']);
    const last = chunks[chunks.length - 1];
    assert.deepEqual(last.choices, [], 'the usage chunk has no choices');
    assert.equal(last.usage.completion_tokens, 16);
    assert.equal(last.usage.prompt_tokens, whole.usage.prompt_tokens);
    assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + 16);
    for (const c of chunks.slice(0, -1)) assert.ok(!c.usage, 'usage only in the last chunk');
    assert.equal(streamedContent(chunks), whole.choices[0].message.content ?? '');
  });

  test('streaming over the wire: SSE events end with data: [DONE]', async () => {
    const r = await rawPost('/v1/chat/completions', JSON.stringify({
      model: MODEL, messages: USER, max_tokens: 4, stream: true, ignore_eos: true,
    }));
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type'), /^text\/event-stream/);
    const events = r.text.split('\n\n').filter((e) => e.trim().length > 0);
    assert.ok(events.every((e) => e.startsWith('data: ')), r.text);
    assert.equal(events[events.length - 1], 'data: [DONE]');
    for (const e of events.slice(0, -1)) JSON.parse(e.slice('data: '.length));
  });

  test('n=2 gives two choices', async () => {
    const r = await client.chat.completions.create({
      model: MODEL, messages: USER, max_tokens: 6, n: 2, seed: 11, ignore_eos: true,
    });
    assert.deepEqual(r.choices.map((c) => c.index).sort(), [0, 1]);
    assert.equal(r.usage.completion_tokens, 12);
  });

  test('seed makes sampling reproducible', async () => {
    const params = { model: MODEL, messages: USER, max_tokens: 16, temperature: 1, seed: 1234, ignore_eos: true };
    const a = await client.chat.completions.create(params);
    const b = await client.chat.completions.create(params);
    assert.deepEqual(b.choices[0].message, a.choices[0].message);
  });

  test('stop strings end the text before them, streaming and not', async () => {
    const base = { model: MODEL, messages: USER, max_tokens: 40, temperature: 0, ignore_eos: true,
      chat_template_kwargs: { enable_thinking: false } };
    let full = '';
    let messages = USER;
    for (const content of ['Write a short poem about GPUs.', 'Hi', 'Count to ten.', 'Tell me a story.']) {
      messages = [{ role: 'user', content }];
      full = (await client.chat.completions.create({ ...base, messages })).choices[0].message.content ?? '';
      if (full.length >= 8) break;
    }
    assert.ok(full.length >= 8, `greedy chat text too short to cut: ${JSON.stringify(full)}`);
    const stop = stopStringOf(full);
    const expected = full.slice(0, full.indexOf(stop));

    const r = await client.chat.completions.create({ ...base, messages, stop: [stop] });
    assert.equal(r.choices[0].message.content ?? '', expected);
    assert.equal(r.choices[0].finish_reason, 'stop');
    assert.ok(!(r.choices[0].message.content ?? '').includes(stop));

    const chunks = await collectChatStream({ ...base, messages, stop });
    assert.equal(streamedContent(chunks), expected);
    assert.ok(!streamedContent(chunks).includes(stop), 'the stop string leaked into the stream');
  });

  test('logprobs: one entry per token with top_logprobs alternatives', async () => {
    const r = await client.chat.completions.create({
      model: MODEL, messages: USER, max_tokens: 8, temperature: 0, ignore_eos: true,
      logprobs: true, top_logprobs: 3,
    });
    const { content } = r.choices[0].logprobs;
    assert.equal(content.length, r.usage.completion_tokens);
    for (const entry of content) {
      assert.equal(typeof entry.token, 'string');
      assert.ok(entry.logprob <= 0, `logprob ${entry.logprob}`);
      assert.ok(Array.isArray(entry.bytes) && entry.bytes.every((b) => Number.isInteger(b) && b >= 0 && b < 256));
      assert.equal(entry.top_logprobs.length, 3);
      const lps = entry.top_logprobs.map((t) => t.logprob);
      assert.deepEqual([...lps].sort((x, y) => y - x), lps, 'alternatives best first');
      for (const t of entry.top_logprobs) {
        assert.equal(typeof t.token, 'string');
        assert.ok(Array.isArray(t.bytes));
      }
      // Greedy: the chosen token is the most likely one.
      assert.ok(Math.abs(entry.logprob - lps[0]) < 1e-4, `${entry.logprob} vs best ${lps[0]}`);
      assert.equal(entry.token, entry.top_logprobs[0].token);
    }
  });

  test('tool definitions and tool_choice are accepted', async () => {
    const tools = [{
      type: 'function',
      function: {
        name: 'get_weather',
        description: 'Current weather of a city',
        parameters: {
          type: 'object',
          properties: { city: { type: 'string' }, days: { type: 'integer' } },
          required: ['city'],
        },
      },
    }];
    for (const tool_choice of ['auto', 'none', 'required', { type: 'function', function: { name: 'get_weather' } }]) {
      const r = await client.chat.completions.create({
        model: MODEL, max_tokens: 8, tools, tool_choice,
        messages: [{ role: 'user', content: 'Weather in Paris?' }],
      });
      const choice = r.choices[0];
      assert.ok(['stop', 'length', 'tool_calls'].includes(choice.finish_reason), choice.finish_reason);
      assert.equal(choice.message.role, 'assistant');
      for (const call of choice.message.tool_calls ?? []) {
        assert.equal(call.type, 'function');
        assert.equal(typeof call.id, 'string');
        JSON.parse(call.function.arguments);
      }
    }
    // A conversation that carries a tool call and its result renders and runs.
    const r = await client.chat.completions.create({
      model: MODEL, max_tokens: 4, tools,
      messages: [
        { role: 'user', content: 'Weather in Paris?' },
        { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function',
          function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
        { role: 'tool', tool_call_id: 'call_1', content: '{"celsius": 21}' },
      ],
    });
    assert.equal(r.choices.length, 1);
    assert.ok(r.usage.prompt_tokens > 20);
  });
});

// GET /metrics as { name{labels}: value } (Prometheus text exposition, version 0.0.4).
async function metrics() {
  const response = await fetch(`${BASE_URL}/metrics`, { headers: { Authorization: `Bearer ${API_KEY}` } });
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type'), /^text\/plain/);
  const values = new Map();
  for (const line of (await response.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    assert.ok(match, `not a Prometheus sample line: ${JSON.stringify(line)}`);
    const value = Number(match[2]);
    assert.ok(!Number.isNaN(value) || match[2] === 'NaN', line);
    values.set(match[1], value);
  }
  return values;
}

function sumOf(values, prefix) {
  let sum = 0;
  for (const [key, value] of values) if (key === prefix || key.startsWith(`${prefix}{`)) sum += value;
  return sum;
}

describe('streaming clients', () => {
  test('the SDK stream helper assembles the same message as the non-streaming call', async () => {
    const params = { model: MODEL, messages: USER, max_tokens: 12, temperature: 0, ignore_eos: true,
      chat_template_kwargs: { enable_thinking: false } };
    const whole = await client.chat.completions.create(params);
    const stream = client.chat.completions.stream(params);
    const final = await stream.finalChatCompletion();
    assert.equal(final.choices[0].message.content ?? '', whole.choices[0].message.content ?? '');
    assert.equal(final.choices[0].finish_reason, 'length');
  });

  test('a client that goes away mid-stream stops its request within a second', async () => {
    const stream = await client.chat.completions.create({
      model: MODEL, messages: USER, max_tokens: 3000, ignore_eos: true, stream: true,
    });
    let chunks = 0;
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta?.content || chunk.choices[0]?.delta?.reasoning_content) chunks++;
      if (chunks >= 3) break;  // leaving the loop aborts the HTTP request
    }
    const left = Date.now();
    let running = Infinity;
    while (Date.now() - left < 1500) {
      const m = await metrics();
      running = sumOf(m, 'spark_requests_running') + sumOf(m, 'spark_requests_queued');
      if (running === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.equal(running, 0, 'the abandoned request still runs 1.5 s after the client left');
    // The engine is free again: a short request completes promptly.
    const started = Date.now();
    const r = await client.chat.completions.create({ model: MODEL, messages: USER, max_tokens: 2, ignore_eos: true });
    assert.equal(r.usage.completion_tokens, 2);
    assert.ok(Date.now() - started < 10_000);
  });
});

describe('metrics', () => {
  test('GET /metrics: Prometheus text with request, token and latency figures', async () => {
    await client.chat.completions.create({ model: MODEL, messages: USER, max_tokens: 3, ignore_eos: true, stream: false });
    const m = await metrics();
    const ok = [...m].filter(([k]) => k.startsWith('spark_http_requests_total{') && k.includes('status="200"'));
    assert.ok(ok.length > 0 && ok.some(([, v]) => v >= 1), 'no answered request counted');
    assert.ok(sumOf(m, 'spark_completion_tokens_total') >= 3);
    assert.ok(sumOf(m, 'spark_prompt_tokens_total') >= 1);
    assert.ok(sumOf(m, 'spark_time_to_first_token_seconds_count') >= 1);
    assert.ok([...m.keys()].some((k) => k.startsWith('spark_deployment_state{') && k.includes(`model="${MODEL}"`)));
    const unauthorized = await fetch(`${BASE_URL}/metrics`);
    assert.equal(unauthorized.status, 401);
  });
});

describe('completions', () => {
  test('text prompt: OpenAI shape and usage', async () => {
    const r = await client.completions.create({
      model: MODEL, prompt: 'Hello world', max_tokens: 10, temperature: 0, ignore_eos: true,
    });
    assert.equal(r.object, 'text_completion');
    assert.equal(r.model, MODEL);
    assert.equal(r.choices.length, 1);
    assert.equal(typeof r.choices[0].text, 'string');
    assert.ok(r.choices[0].text.length > 0);
    assert.equal(r.choices[0].finish_reason, 'length');
    assert.equal(r.usage.completion_tokens, 10);
    assert.ok(r.usage.prompt_tokens >= 1);
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 10);
  });

  test('token-id prompt: prompt_tokens is its length; same text as the equivalent text prompt', async () => {
    const ids = [5, 17, 42, 99, 123, 7];
    const r = await client.completions.create({
      model: MODEL, prompt: ids, max_tokens: 6, temperature: 0, ignore_eos: true,
    });
    assert.equal(r.usage.prompt_tokens, ids.length);
    assert.equal(r.usage.completion_tokens, 6);

    const echo = await client.completions.create({
      model: MODEL, prompt: 'Hello world', max_tokens: 4, temperature: 0, ignore_eos: true, echo: true,
    });
    assert.ok(echo.choices[0].text.startsWith('Hello world'), JSON.stringify(echo.choices[0].text));
  });

  test('streaming: chunks add up to the non-streaming text', async () => {
    const params = { model: MODEL, prompt: 'Once upon a time', max_tokens: 12, temperature: 0, ignore_eos: true };
    const whole = await client.completions.create(params);
    const stream = await client.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let usage = null;
    let finish = null;
    for await (const chunk of stream) {
      assert.equal(chunk.object, 'text_completion');
      for (const c of chunk.choices) {
        text += c.text;
        finish = c.finish_reason ?? finish;
      }
      usage = chunk.usage ?? usage;
    }
    assert.equal(text, whole.choices[0].text);
    assert.equal(finish, 'length');
    assert.equal(usage.completion_tokens, 12);
  });

  test('stop strings cut the text and are not in it', async () => {
    const { prompt, text } = await longGreedyCompletion(8);
    const stop = stopStringOf(text);
    const r = await client.completions.create({
      model: MODEL, prompt, max_tokens: 40, temperature: 0, ignore_eos: true, stop,
    });
    assert.equal(r.choices[0].text, text.slice(0, text.indexOf(stop)));
    assert.equal(r.choices[0].finish_reason, 'stop');
  });

  test('logprobs: the legacy shape (tokens, token_logprobs, top_logprobs, text_offset)', async () => {
    const r = await client.completions.create({
      model: MODEL, prompt: 'Hello world', max_tokens: 5, temperature: 0, ignore_eos: true, logprobs: 2,
    });
    const lp = r.choices[0].logprobs;
    assert.equal(lp.tokens.length, 5);
    assert.equal(lp.token_logprobs.length, 5);
    assert.equal(lp.top_logprobs.length, 5);
    assert.equal(lp.text_offset.length, 5);
    for (let i = 0; i < 5; i++) {
      assert.equal(typeof lp.tokens[i], 'string');
      assert.ok(lp.token_logprobs[i] <= 0);
      // Greedy: the chosen token is among (first of) the two alternatives.
      const alternatives = lp.top_logprobs[i];
      assert.ok(Object.keys(alternatives).length >= 1 && Object.keys(alternatives).length <= 2);
      const best = Math.max(...Object.values(alternatives));
      assert.ok(Math.abs(lp.token_logprobs[i] - best) < 1e-4, `${lp.token_logprobs[i]} vs ${best}`);
      assert.ok(Number.isInteger(lp.text_offset[i]));
      assert.ok(i === 0 || lp.text_offset[i] >= lp.text_offset[i - 1]);
    }
  });
});

describe('errors', () => {
  test('bad JSON is a 400 with an OpenAI error body', async () => {
    for (const body of ['{"model": ', 'not json at all', '[1, 2', '']) {
      assertOpenAiError(await rawPost('/v1/chat/completions', body), 400);
    }
    assertOpenAiError(await rawPost('/v1/completions', '{"prompt": "x",'), 400);
  });

  test('wrong types are 400s naming the field', async () => {
    const cases = [
      [{ model: MODEL, messages: 'hello' }, 'messages'],
      [{ model: MODEL, messages: USER, max_tokens: 'ten' }, 'max_tokens'],
      [{ model: MODEL, messages: USER, temperature: 'hot' }, 'temperature'],
      [{ model: MODEL, messages: USER, stream: 'yes' }, 'stream'],
      [{ model: MODEL, messages: [{ role: 'wizard', content: 'x' }] }, 'role'],
      [{ model: MODEL, messages: USER, top_p: 7 }, 'top_p'],
      [{ model: 42, messages: USER }, 'model'],
      [{ model: MODEL, messages: USER, tools: [{ type: 'function' }] }, 'tools'],
    ];
    for (const [body, field] of cases) {
      const error = assertOpenAiError(await rawPost('/v1/chat/completions', JSON.stringify(body)), 400);
      assertNamesField(error, field);
    }
    const error = assertOpenAiError(
      await rawPost('/v1/completions', JSON.stringify({ model: MODEL, prompt: { text: 'x' } })), 400);
    assertNamesField(error, 'prompt');
  });

  test('the SDK raises BadRequestError for a bad parameter', async () => {
    await assert.rejects(
      client.chat.completions.create({ model: MODEL, messages: USER, temperature: 9 }),
      (err) => err instanceof OpenAI.BadRequestError && err.status === 400 &&
        typeof err.error?.message === 'string');
  });

  test('an unknown model is a 404 with an OpenAI error body', async () => {
    const error = assertOpenAiError(await rawPost('/v1/chat/completions',
      JSON.stringify({ model: 'no-such-model', messages: USER })), 404);
    assert.ok(error.message.includes('no-such-model'), error.message);
    await assert.rejects(
      client.completions.create({ model: 'no-such-model', prompt: 'x' }),
      (err) => err instanceof OpenAI.NotFoundError && err.status === 404);
  });

  test('unknown endpoints, methods and models: 404 / 405 with OpenAI error bodies', async () => {
    assertOpenAiError(await rawPost('/v1/embeddings', JSON.stringify({ model: MODEL, input: 'x' })), 404);
    const del = await fetch(`${BASE_URL}/v1/chat/completions`,
      { method: 'DELETE', headers: { Authorization: `Bearer ${API_KEY}` } });
    const text = await del.text();
    assertOpenAiError({ status: del.status, text, json: JSON.parse(text) }, 405);
    await assert.rejects(client.models.retrieve('no-such-model'),
      (err) => err instanceof OpenAI.NotFoundError && err.status === 404);
    const ours = await client.models.retrieve(MODEL);
    assert.equal(ours.id, MODEL);
  });

  test('a missing or wrong API key is a 401', async () => {
    const body = JSON.stringify({ model: MODEL, messages: USER, max_tokens: 1 });
    assertOpenAiError(await rawPost('/v1/chat/completions', body, { Authorization: null }), 401);
    assertOpenAiError(await rawPost('/v1/chat/completions', body, { Authorization: 'Bearer wrong-key' }), 401);
    assertOpenAiError(await rawPost('/v1/completions', body, { Authorization: 'Basic dXNlcjpwYXNz' }), 401);
    const models = await fetch(`${BASE_URL}/v1/models`);
    assert.equal(models.status, 401);
    const wrong = new OpenAI({ baseURL: `${BASE_URL}/v1`, apiKey: 'wrong-key', maxRetries: 0 });
    await assert.rejects(
      wrong.chat.completions.create({ model: MODEL, messages: USER, max_tokens: 1 }),
      (err) => err instanceof OpenAI.AuthenticationError && err.status === 401);
  });

  test('the lifecycle API wants the admin key, not an inference key', { skip: !ADMIN_KEY && 'no SPARK_E2E_ADMIN_KEY' }, async () => {
    const list = (authorization) => fetch(`${BASE_URL}/api/v1/models`,
      { headers: authorization ? { Authorization: authorization } : {} });
    assert.equal((await list(null)).status, 401);
    assert.ok([401, 403].includes((await list(`Bearer ${API_KEY}`)).status));
    const ok = await list(`Bearer ${ADMIN_KEY}`);
    assert.equal(ok.status, 200);
    assert.ok((await ok.json()).models.some((m) => m.name === MODEL));
  });

  test('limits: max_tokens above the ceiling and n above the maximum are 400s naming the limit', async () => {
    let error = assertOpenAiError(await rawPost('/v1/chat/completions',
      JSON.stringify({ model: MODEL, messages: USER, max_tokens: 100_000_000 })), 400);
    assertNamesField(error, 'max_tokens');
    error = assertOpenAiError(await rawPost('/v1/chat/completions',
      JSON.stringify({ model: MODEL, messages: USER, n: 1000 })), 400);
    assertNamesField(error, 'n');
  });

  test('a body over the size limit is a 413 with an OpenAI error body', async () => {
    // The request declares a body larger than the limit; the server answers after the headers,
    // before the body is sent (a client sending the whole body would see the connection close
    // under it, as with any HTTP server that refuses a body early).
    const response = await new Promise((resolve, reject) => {
      const url = new URL(`${BASE_URL}/v1/chat/completions`);
      const request = http.request({
        host: url.hostname, port: url.port, path: url.pathname, method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Content-Length': TOO_LARGE_BYTES,
          Authorization: `Bearer ${API_KEY}` },
      }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d) => { text += d; });
        res.on('end', () => {
          clearTimeout(timer);
          let json = null;
          try { json = JSON.parse(text); } catch { /* asserted below */ }
          request.destroy();
          resolve({ status: res.statusCode, text, json });
        });
      });
      const timer = setTimeout(() => {
        request.destroy();
        reject(new Error('no answer to a request declaring an oversized body within 10 s'));
      }, 10_000);
      request.on('error', () => {});  // EPIPE/ECONNRESET once the server closed: expected
      request.write(`{"model": "${MODEL}", "messages": [{"role": "user", "content": "`);
      request.write('x'.repeat(64 * 1024));
    });
    const error = assertOpenAiError(response, 413);
    assert.match(error.message, /body|large|limit|bytes/i);
  });

  test('the server keeps serving after 1,000 malformed requests', async () => {
    const garbage = [
      () => rawPost('/v1/chat/completions', '{"model":'),
      () => rawPost('/v1/chat/completions', JSON.stringify({ model: MODEL, messages: 7 })),
      () => rawPost('/v1/chat/completions', JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 42 }] })),
      () => rawPost('/v1/chat/completions', JSON.stringify({ model: MODEL, messages: USER, max_tokens: -3 })),
      () => rawPost('/v1/completions', JSON.stringify({ model: MODEL, prompt: [[1, 'a']] })),
      () => rawPost('/v1/completions', '\u0000\u0001\u0002\uffff'),
      () => rawPost('/v1/chat/completions', JSON.stringify({ model: MODEL, messages: USER, stop: { a: 1 } })),
      () => rawPost('/v1/chat/completions', 'x', { 'Content-Type': 'text/plain' }),
      () => rawPost('/v1/chat/completions', JSON.stringify({ messages: USER })),
      () => rawSocket('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n'),
      () => rawSocket('\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage that is not HTTP\r\n\r\n'),
      () => rawSocket('BREW /v1/models HTTP/1.1\r\nHost: x\r\n\r\n'),
    ];
    let done = 0;
    const statuses = new Map();
    const batch = 50;
    for (let start = 0; start < 1000; start += batch) {
      const results = await Promise.all(
        Array.from({ length: batch }, (_, k) => garbage[(start + k) % garbage.length]()));
      for (const r of results) {
        if (r.status !== undefined) {
          assert.ok(r.status >= 400 && r.status < 500, `status ${r.status} for a malformed request: ${r.text}`);
          statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
          if (r.json !== undefined && r.json !== null && r.kind !== 'socket') assert.ok(r.json.error, r.text);
        }
        done++;
      }
    }
    assert.equal(done, 1000);
    // Still serving, correctly.
    const r = await client.chat.completions.create({ model: MODEL, messages: USER, max_tokens: 4, ignore_eos: true });
    assert.equal(r.usage.completion_tokens, 4);
    const health = await fetch(`${BASE_URL}/healthz`);
    assert.equal(health.status, 200);
  });
});

// Writes raw bytes on a new connection; resolves with the status of the answer (if any).
function rawSocket(bytes) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: new URL(BASE_URL).hostname, port: new URL(BASE_URL).port });
    let data = '';
    socket.setTimeout(10_000);
    socket.on('connect', () => socket.end(Buffer.from(bytes, 'latin1')));
    socket.on('data', (d) => { data += d.toString('latin1'); });
    const finish = () => {
      const match = /^HTTP\/1\.[01] (\d{3})/.exec(data);
      resolve({ kind: 'socket', status: match ? Number(match[1]) : undefined, text: data, json: null });
    };
    socket.on('end', finish);
    socket.on('close', finish);
    socket.on('timeout', () => socket.destroy());
    socket.on('error', () => {});
  });
}
