#!/usr/bin/env node
// A bounded mixed load against one Staple for a fixed time, sampling the process every few seconds,
// then a check that every acknowledged turn is stored. Built-in modules only; bench/run soak starts
// Staple and the fake upstream and calls it.
//
//   node bench/soak.js --url http://127.0.0.1:PORT --pid PID [--duration-s 600] [--sample-s 10]
//       [--warmup-s 60] [--concurrency 24] [--clients 5000] [--conversations 4000]
//
// The mix, per request: the seed endpoint (whole and streamed), /v1/chat/completions (whole and
// streamed, with X-Staple-Conversation), and upstream faults the fake upstream acts out (a 500, a
// stream cut after two events, an answer that is not JSON, a hang past the first-byte timeout).
// Each request comes from one of --clients addresses (X-Forwarded-For; Staple must trust
// 127.0.0.1) and continues one of --conversations conversations.
//
// Output (stdout): a Markdown table of the samples (RSS, open descriptors, requests and p99 latency
// of the interval's answered turns, faults left out), then summary lines: RSS spread after the warm-up, descriptor growth, turns
// acknowledged and lost, unexpected answers. Exit status 1 when a turn was lost or an answer was
// unexpected.
'use strict';
const fs = require('fs');
const http = require('http');

function parseArgs(argv) {
  const args = {
    durationS: 600, sampleS: 10, warmupS: 60, concurrency: 24, clients: 5000, conversations: 4000,
  };
  const names = {
    '--url': 'url', '--pid': 'pid', '--duration-s': 'durationS', '--sample-s': 'sampleS',
    '--warmup-s': 'warmupS', '--concurrency': 'concurrency', '--clients': 'clients',
    '--conversations': 'conversations',
  };
  for (let i = 2; i < argv.length; i += 2) {
    const name = names[argv[i]];
    if (!name) throw new Error('unknown argument ' + argv[i]);
    args[name] = name === 'url' ? argv[i + 1] : Number(argv[i + 1]);
  }
  if (!args.url || !args.pid) throw new Error('--url and --pid are required');
  return args;
}

const args = parseArgs(process.argv);
const agent = new http.Agent({ keepAlive: true, maxSockets: args.concurrency * 2 });
const target = new URL(args.url);

function rssKib(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+)/m.exec(status);
  return match ? Number(match[1]) : 0;
}
function openFds(pid) { return fs.readdirSync(`/proc/${pid}/fd`).length; }

function percentile(values, p) {
  if (values.length === 0) return 0;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

// One HTTP exchange: resolves {status, body, error}.
function exchange(method, path, body, headers) {
  return new Promise((resolve) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = http.request({
      agent, host: target.hostname, port: target.port, method, path,
      headers: Object.assign(data ? { 'Content-Type': 'application/json',
        'Content-Length': data.length } : {}, headers),
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
      res.on('error', (e) => resolve({ status: res.statusCode, error: String(e) }));
    });
    req.setTimeout(30000, () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ status: 0, error: String(e) }));
    if (data) req.write(data);
    req.end();
  });
}

function sseData(body) {
  return body.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6));
}

// What each kind sends and how its answer is judged: 'stored' (a turn Staple acknowledged),
// 'expected' (a fault answered as it should be), or 'unexpected'.
const kinds = [
  { name: 'seed', weight: 28, run: async (conv, prompt, xff) => {
    const r = await exchange('POST', '/openai-completion', { prompt, user_id: conv }, xff);
    return r.status === 200 && JSON.parse(r.body).completion !== undefined ? 'stored' : 'unexpected';
  } },
  { name: 'seed-stream', weight: 10, run: async (conv, prompt, xff) => {
    const r = await exchange('POST', '/openai-completion', { prompt, user_id: conv, stream: true }, xff);
    const data = r.status === 200 ? sseData(r.body) : [];
    return data[data.length - 1] === '[DONE]' ? 'stored' : 'unexpected';
  } },
  { name: 'v1', weight: 25, run: async (conv, prompt, xff) => {
    const r = await exchange('POST', '/v1/chat/completions',
      { model: 'gpt-4o-mini', messages: [{ role: 'user', content: prompt }] },
      Object.assign({ 'X-Staple-Conversation': conv }, xff));
    return r.status === 200 && JSON.parse(r.body).choices ? 'stored' : 'unexpected';
  } },
  { name: 'v1-stream', weight: 20, run: async (conv, prompt, xff) => {
    const r = await exchange('POST', '/v1/chat/completions',
      { model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: prompt }] },
      Object.assign({ 'X-Staple-Conversation': conv }, xff));
    const data = r.status === 200 ? sseData(r.body) : [];
    return data[data.length - 1] === '[DONE]' ? 'stored' : 'unexpected';
  } },
  { name: 'fault-500', weight: 7, run: async (conv, prompt, xff) => {
    const r = await exchange('POST', '/v1/chat/completions',
      { model: 'gpt-4o-mini', messages: [{ role: 'user', content: prompt + ' FAULT:status=500' }] },
      Object.assign({ 'X-Staple-Conversation': conv }, xff));
    return r.status === 500 ? 'expected' : 'unexpected';
  } },
  { name: 'fault-stream-cut', weight: 6, run: async (conv, prompt, xff) => {
    const r = await exchange('POST', '/v1/chat/completions',
      { model: 'gpt-4o-mini', stream: true,
        messages: [{ role: 'user', content: prompt + ' and more words FAULT:stream-drop-after=2' }] },
      Object.assign({ 'X-Staple-Conversation': conv }, xff));
    const data = r.status === 200 ? sseData(r.body) : [];
    const last = data.length ? data[data.length - 1] : '';
    return last.includes('"error"') ? 'expected' : 'unexpected';
  } },
  { name: 'fault-not-json', weight: 3, run: async (conv, prompt, xff) => {
    const r = await exchange('POST', '/openai-completion',
      { prompt: prompt + ' FAULT:invalid-json', user_id: conv }, xff);
    return r.status === 500 ? 'expected' : 'unexpected';
  } },
  { name: 'fault-hang', weight: 1, run: async (conv, prompt, xff) => {
    const r = await exchange('POST', '/v1/chat/completions',
      { model: 'gpt-4o-mini', messages: [{ role: 'user', content: prompt + ' FAULT:hang' }] },
      Object.assign({ 'X-Staple-Conversation': conv }, xff));
    return r.status === 504 ? 'expected' : 'unexpected';
  } },
];
const totalWeight = kinds.reduce((s, k) => s + k.weight, 0);
function pickKind() {
  let x = Math.random() * totalWeight;
  for (const k of kinds) { x -= k.weight; if (x < 0) return k; }
  return kinds[0];
}

const acknowledged = new Map();  // conversation -> prompts Staple answered as stored
let sequence = 0;
let interval = { latencies: [], requests: 0 };
const totals = { requests: 0, stored: 0, expected: 0, unexpected: 0 };
const unexpectedByKind = {};
const started = Date.now();
const endAt = started + args.durationS * 1000;

async function worker() {
  while (Date.now() < endAt) {
    const kind = pickKind();
    const conv = `soak-${Math.floor(Math.random() * args.conversations)}`;
    const client = Math.floor(Math.random() * args.clients);
    const xff = { 'X-Forwarded-For': `10.${(client >> 16) & 255}.${(client >> 8) & 255}.${client & 255}` };
    const prompt = `soak turn ${++sequence}`;
    const t0 = process.hrtime.bigint();
    let verdict;
    try { verdict = await kind.run(conv, prompt, xff); } catch (e) { verdict = 'unexpected'; }
    // Faults (a hang waits for the timeout) stay out of the latency figures.
    if (!kind.name.startsWith('fault')) {
      interval.latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    interval.requests++;
    totals.requests++;
    totals[verdict]++;
    if (verdict === 'unexpected') unexpectedByKind[kind.name] = (unexpectedByKind[kind.name] || 0) + 1;
    if (verdict === 'stored') {
      if (!acknowledged.has(conv)) acknowledged.set(conv, []);
      acknowledged.get(conv).push(prompt);
    }
  }
}

const samples = [];
function sample() {
  const elapsed = Math.round((Date.now() - started) / 1000);
  samples.push({
    t: elapsed, rss: rssKib(args.pid), fds: openFds(args.pid), requests: interval.requests,
    p99: percentile(interval.latencies, 99),
  });
  interval = { latencies: [], requests: 0 };
}

async function storedPrompts(conv) {
  const prompts = new Set();
  let after = 0;
  for (;;) {
    const r = await exchange('GET', `/users/${conv}/messages?limit=1000&after=${after}`,
      undefined, { 'X-Forwarded-For': '10.255.255.254' });
    if (r.status !== 200) throw new Error(`GET messages of ${conv}: ${r.status} ${r.body}`);
    const page = JSON.parse(r.body);
    for (const m of page.messages) if (m.role === 'user') prompts.add(m.content);
    if (!page.has_more) return prompts;
    after = page.next_after;
  }
}

async function main() {
  const base = { t: 0, rss: rssKib(args.pid), fds: openFds(args.pid), requests: 0, p99: 0 };
  const timer = setInterval(sample, args.sampleS * 1000);
  await Promise.all(Array.from({ length: args.concurrency }, worker));
  clearInterval(timer);

  let lost = 0;
  let checked = 0;
  for (const [conv, prompts] of acknowledged) {
    const stored = await storedPrompts(conv);
    for (const p of prompts) { checked++; if (!stored.has(p)) lost++; }
  }
  agent.destroy();

  console.log('| t s | RSS MiB | open fds | requests | p99 ms |');
  console.log('|---:|---:|---:|---:|---:|');
  const mib = (kib) => (kib / 1024).toFixed(1);
  console.log(`| 0 (before) | ${mib(base.rss)} | ${base.fds} | | |`);
  for (const s of samples) {
    console.log(`| ${s.t} | ${mib(s.rss)} | ${s.fds} | ${s.requests} | ${s.p99.toFixed(1)} |`);
  }
  const warm = samples.filter((s) => s.t > args.warmupS);
  const rss = warm.map((s) => s.rss);
  const fds = warm.map((s) => s.fds);
  console.log('');
  if (warm.length > 0) {
    const lo = Math.min(...rss);
    const hi = Math.max(...rss);
    console.log(`- RSS after the ${args.warmupS} s warm-up: ${mib(lo)}–${mib(hi)} MiB ` +
      `(spread ${(100 * (hi - lo) / lo).toFixed(1)} %)`);
    console.log(`- open descriptors after the warm-up: ${Math.min(...fds)}–${Math.max(...fds)} ` +
      `(first ${fds[0]}, last ${fds[fds.length - 1]})`);
  }
  console.log(`- requests: ${totals.requests} (${(totals.requests / args.durationS).toFixed(0)}/s); ` +
    `stored turns acknowledged: ${totals.stored}; faults answered as expected: ${totals.expected}; ` +
    `unexpected answers: ${totals.unexpected}` +
    (totals.unexpected ? ` ${JSON.stringify(unexpectedByKind)}` : ''));
  console.log(`- acknowledged turns checked in the store: ${checked}; lost: ${lost}`);
  process.exitCode = lost > 0 || totals.unexpected > 0 ? 1 : 0;
}

main().catch((e) => { console.error(e); process.exitCode = 2; });
