// The official `openai` npm package against Staple in front of tools/fake_openai.
// The processes are started with the helpers of harness.js.
// Run: STAPLE_BIN=$PWD/build/staple FAKE_OPENAI_BIN=$PWD/build/fake_openai node --test tests/sdk
// (ctest runs it as sdk.openai_node once `npm ci --prefix tests/sdk` installed the package).

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import OpenAI from 'openai';

import {
  FAKE_OPENAI_BIN,
  STAPLE_BIN,
  UPSTREAM_KEY,
  cleanEnv,
  freePort,
  start,
  waitForHttp,
} from './harness.js';

const API_KEY = UPSTREAM_KEY;

describe('openai npm package through Staple', { skip: !STAPLE_BIN || !FAKE_OPENAI_BIN }, () => {
  let dir;
  let fake;
  let staple;
  let baseURL;
  let fakeURL;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'staple-sdk-'));
    const fakePort = await freePort();
    fake = start(FAKE_OPENAI_BIN, ['--host', '127.0.0.1', '--port', String(fakePort)], cleanEnv(),
                 dir, 'fake_openai');
    await waitForHttp(`http://127.0.0.1:${fakePort}/_fake/stats`, fake);
    fakeURL = `http://127.0.0.1:${fakePort}`;

    const staplePort = await freePort();
    const env = {
      ...cleanEnv(),
      OPENAI_BASE_URL: `http://127.0.0.1:${fakePort}/v1`,
      OPENAI_API_KEY: API_KEY,
      STAPLE_UPSTREAM_RETRIES: '0',
      STAPLE_THREADS: '1',
      // High enough never to refuse the other tests; a request asking for more is refused.
      STAPLE_TOKEN_LIMITS: '1000000 per minute',
    };
    staple = start(STAPLE_BIN, ['serve', '--host', '127.0.0.1', '--port', String(staplePort)], env,
                   dir, 'staple');
    await waitForHttp(`http://127.0.0.1:${staplePort}/healthz`, staple);
    baseURL = `http://127.0.0.1:${staplePort}/v1`;
  });

  after(() => {
    for (const child of [staple, fake]) {
      if (child && child.exitCode === null && child.pid) process.kill(child.pid, 'SIGTERM');
    }
    if (dir && process.env.STAPLE_KEEP_TEST_DIRS !== '1') {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  const client = (options = {}) =>
    new OpenAI({ apiKey: 'client-own-key', baseURL, maxRetries: 0, timeout: 10000, ...options });

  test('non-streaming completion', async () => {
    const { data, response } = await client()
      .chat.completions.create({
        model: 'fake-model',
        temperature: 0.2,
        messages: [{ role: 'user', content: 'hello' }],
      })
      .withResponse();
    assert.equal(data.object, 'chat.completion');
    assert.equal(data.choices[0].message.content, 'echo(1): hello');
    assert.ok(data.usage.total_tokens > 0);
    assert.match(response.headers.get('x-staple-conversation') ?? '', /^[0-9a-f-]{36}$/);
  });

  test('streaming completion arrives in chunks', async () => {
    const stream = await client().chat.completions.create({
      model: 'fake-model',
      stream: true,
      stream_options: { include_usage: true },
      messages: [{ role: 'user', content: 'hi there' }],
    });
    let text = '';
    let chunks = 0;
    let usage = null;
    for await (const chunk of stream) {
      chunks += 1;
      if (chunk.usage) usage = chunk.usage;
      text += chunk.choices[0]?.delta?.content ?? '';
    }
    assert.equal(text, 'echo(1): hi there');
    assert.ok(chunks > 2, `only ${chunks} chunks`);
    assert.ok(usage && usage.completion_tokens > 0);
  });

  test('server-side memory through X-Staple-Conversation', async () => {
    const id = `sdk-${Date.now()}`;
    const remembering = client({ defaultHeaders: { 'X-Staple-Conversation': id } });
    const first = await remembering.chat.completions.create({
      model: 'fake-model',
      messages: [{ role: 'user', content: 'one' }],
    });
    assert.equal(first.choices[0].message.content, 'echo(1): one');
    const second = await remembering.chat.completions.create({
      model: 'fake-model',
      messages: [{ role: 'user', content: 'two' }],
    });
    assert.equal(second.choices[0].message.content, 'echo(3): two');

    // Per-request headers work too, streaming included.
    const stream = await client().chat.completions.create(
      { model: 'fake-model', stream: true, messages: [{ role: 'user', content: 'three' }] },
      { headers: { 'X-Staple-Conversation': id } },
    );
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
    assert.equal(text, 'echo(5): three');
  });

  test('upstream 400 becomes BadRequestError', async () => {
    await assert.rejects(
      client().chat.completions.create({
        model: 'fake-model',
        messages: [{ role: 'user', content: 'FAULT:status=400' }],
      }),
      (error) => {
        assert.ok(error instanceof OpenAI.BadRequestError, error.constructor.name);
        assert.equal(error.status, 400);
        assert.equal(error.message.includes(API_KEY), false);
        return true;
      },
    );
  });

  test('upstream 503 becomes a server error', async () => {
    await assert.rejects(
      client().chat.completions.create({
        model: 'fake-model',
        messages: [{ role: 'user', content: 'FAULT:status=503' }],
      }),
      (error) => {
        assert.ok(error instanceof OpenAI.APIError, error.constructor.name);
        assert.ok(error instanceof OpenAI.InternalServerError, error.constructor.name);
        assert.equal(error.status, 503);
        return true;
      },
    );
  });

  test('a token limit refusal becomes RateLimitError', async () => {
    await assert.rejects(
      client().chat.completions.create({
        model: 'fake-model',
        max_completion_tokens: 2000000,
        messages: [{ role: 'user', content: 'too much' }],
      }),
      (error) => {
        assert.ok(error instanceof OpenAI.RateLimitError, error.constructor.name);
        assert.equal(error.status, 429);
        assert.equal(error.type, 'tokens');
        assert.equal(error.code, 'rate_limit_exceeded');
        assert.match(error.message, /Rate limit exceeded on tokens: 1000000 per 1 minute/);
        return true;
      },
    );
  });

  test('models are listed', async () => {
    const ids = [];
    for await (const model of client().models.list()) ids.push(model.id);
    assert.ok(ids.includes('fake-model'), ids.join(','));
  });

  // The calls Staple does not handle itself are passed through to the upstream with the
  // operator's key: the SDK works by changing only its base URL.
  test('models.retrieve and embeddings.create pass through', async () => {
    const model = await client().models.retrieve('gpt-4o-mini');
    assert.equal(model.id, 'gpt-4o-mini');
    await assert.rejects(client().models.retrieve('no-such-model'), OpenAI.NotFoundError);

    // The SDK asks for base64 and decodes it into numbers.
    const embedded = await client().embeddings.create({
      model: 'text-embedding-3-small',
      input: ['first text', 'second text'],
    });
    assert.equal(embedded.data.length, 2);
    assert.equal(embedded.data[0].embedding.length, 8);
    assert.ok(embedded.data[0].embedding.every((x) => typeof x === 'number' && x >= 0), 'numbers');
    assert.ok(embedded.usage.total_tokens > 0);

    // The upstream saw the operator's key, never the client's own.
    const log = await (await fetch(`${fakeURL}/_fake/requests`)).json();
    const forwarded = log.filter((r) => r.path.startsWith('/v1/embeddings'));
    assert.equal(forwarded.length, 1);
    assert.equal(forwarded[0].headers.authorization, `Bearer ${API_KEY}`);
  });
});

describe('openai npm package with a Staple client key', { skip: !STAPLE_BIN || !FAKE_OPENAI_BIN }, () => {
  const ADMIN_KEY = 'sdk-admin-key-0123456789-0123456789-abcdef';
  let dir;
  let fake;
  let staple;
  let root;
  let secret;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'staple-sdk-keys-'));
    const fakePort = await freePort();
    fake = start(FAKE_OPENAI_BIN, ['--host', '127.0.0.1', '--port', String(fakePort)], cleanEnv(),
                 dir, 'fake_openai');
    await waitForHttp(`http://127.0.0.1:${fakePort}/_fake/stats`, fake);
    const staplePort = await freePort();
    const env = {
      ...cleanEnv(),
      OPENAI_BASE_URL: `http://127.0.0.1:${fakePort}/v1`,
      OPENAI_API_KEY: API_KEY,
      STAPLE_UPSTREAM_RETRIES: '0',
      STAPLE_THREADS: '1',
      STAPLE_AUTH: 'keys',
      STAPLE_ADMIN_KEY: ADMIN_KEY,
    };
    staple = start(STAPLE_BIN, ['serve', '--host', '127.0.0.1', '--port', String(staplePort)], env,
                   dir, 'staple');
    root = `http://127.0.0.1:${staplePort}`;
    await waitForHttp(`${root}/healthz`, staple);
    const created = await fetch(`${root}/admin/keys`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${ADMIN_KEY}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: 'sdk' }),
    });
    assert.equal(created.status, 201);
    secret = (await created.json()).key;
    assert.match(secret, /^sk-staple-/);
  });

  after(() => {
    for (const child of [staple, fake]) {
      if (child && child.exitCode === null && child.pid) process.kill(child.pid, 'SIGTERM');
    }
    if (dir && process.env.STAPLE_KEEP_TEST_DIRS !== '1') {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  const client = (options = {}) =>
    new OpenAI({ apiKey: secret, baseURL: `${root}/v1`, maxRetries: 0, timeout: 10000, ...options });

  test('plain, streamed and remembered completions with the key', async () => {
    const plain = await client().chat.completions.create({
      model: 'fake-model',
      messages: [{ role: 'user', content: 'hello' }],
    });
    assert.equal(plain.choices[0].message.content, 'echo(1): hello');

    const stream = await client().chat.completions.create({
      model: 'fake-model',
      stream: true,
      messages: [{ role: 'user', content: 'streamed' }],
    });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
    assert.equal(text, 'echo(1): streamed');

    const remembering = client({ defaultHeaders: { 'X-Staple-Conversation': 'sdk-keyed' } });
    await remembering.chat.completions.create({
      model: 'fake-model',
      messages: [{ role: 'user', content: 'one' }],
    });
    const second = await remembering.chat.completions.create({
      model: 'fake-model',
      messages: [{ role: 'user', content: 'two' }],
    });
    assert.equal(second.choices[0].message.content, 'echo(3): two');
  });

  test('a wrong key becomes AuthenticationError', async () => {
    await assert.rejects(
      client({ apiKey: 'sk-staple-wrong' }).chat.completions.create({
        model: 'fake-model',
        messages: [{ role: 'user', content: 'hi' }],
      }),
      (error) => {
        assert.ok(error instanceof OpenAI.AuthenticationError, error.constructor.name);
        assert.equal(error.status, 401);
        assert.equal(error.code, 'invalid_api_key');
        assert.equal(error.message.includes('sk-staple-wrong'), false);
        return true;
      },
    );
  });
});

// Without an upstream key Staple answers 500 configuration_error with X-Should-Retry: false, so
// the SDK does not retry (and spend the client's request limits) for an error that cannot heal.
describe('openai npm package against a Staple without an upstream key', { skip: !STAPLE_BIN }, () => {
  let dir;
  let staple;
  let root;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'staple-sdk-nokey-'));
    const port = await freePort();
    staple = start(STAPLE_BIN, ['serve', '--host', '127.0.0.1', '--port', String(port)], cleanEnv(),
                   dir, 'staple');
    root = `http://127.0.0.1:${port}`;
    await waitForHttp(`${root}/healthz`, staple);
  });

  after(() => {
    if (staple && staple.exitCode === null && staple.pid) process.kill(staple.pid, 'SIGTERM');
    if (dir && process.env.STAPLE_KEEP_TEST_DIRS !== '1') rmSync(dir, { recursive: true, force: true });
  });

  test('the 500 is not retried', async () => {
    const client = new OpenAI({ apiKey: 'unused', baseURL: `${root}/v1`, maxRetries: 2,
                                timeout: 10000 });
    await assert.rejects(
      client.chat.completions.create({ model: 'gpt-4o-mini',
                                       messages: [{ role: 'user', content: 'hi' }] }),
      (err) => err instanceof OpenAI.InternalServerError && /OPENAI_API_KEY/.test(err.message));
    const metrics = await (await fetch(`${root}/metrics`)).text();
    assert.match(metrics,
                 /staple_http_requests_total\{route="\/v1\/chat\/completions",status="500"\} 1\n/);
  });
});
