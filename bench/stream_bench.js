#!/usr/bin/env node
// Opens N concurrent streaming POST requests against one URL, R rounds in a row, and prints the
// time to the first body byte and the total time per request (median and 99th percentile, ms).
// The first round is a warm-up and is not counted. Built-in modules only.
//
//   node bench/stream_bench.js --url http://127.0.0.1:5000/v1/chat/completions \
//       --body '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hi"}]}' \
//       [--streams 200] [--rounds 4] [--timeout-ms 30000]
//
// Output: one line "STREAM_RESULT ok=… failed=… ttfb_p50_ms=… ttfb_p90_ms=… ttfb_p99_ms=… total_p50_ms=…
// total_p99_ms=… status=<first unexpected status or 0>" (and the error of the first failure on
// stderr).
'use strict';
const http = require('http');

function parseArgs(argv) {
  const args = { streams: 200, rounds: 4, timeoutMs: 30000 };
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i];
    const value = argv[i + 1];
    if (key === '--url') args.url = value;
    else if (key === '--body') args.body = value;
    else if (key === '--streams') args.streams = Number(value);
    else if (key === '--rounds') args.rounds = Number(value);
    else if (key === '--timeout-ms') args.timeoutMs = Number(value);
    else throw new Error('unknown argument ' + key);
  }
  if (!args.url || !args.body) throw new Error('--url and --body are required');
  return args;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length) - 1;
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank))];
}

// One streaming request: resolves with {ttfb, total} in ms, or {error, status}.
function oneStream(agent, url, body, timeoutMs) {
  return new Promise((resolve) => {
    const started = process.hrtime.bigint();
    const ms = () => Number(process.hrtime.bigint() - started) / 1e6;
    let ttfb = null;
    let settled = false;
    const finish = (result) => {
      if (!settled) {
        settled = true;
        resolve(result);
      }
    };
    const request = http.request(url, {
      method: 'POST',
      agent,
      headers: {
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(body),
        Accept: 'text/event-stream',
      },
      timeout: timeoutMs,
    }, (response) => {
      if (response.statusCode !== 200) {
        response.resume();
        finish({ error: 'status ' + response.statusCode, status: response.statusCode });
        return;
      }
      response.on('data', () => {
        if (ttfb === null) ttfb = ms();
      });
      response.on('end', () => {
        if (ttfb === null) finish({ error: 'empty body', status: 0 });
        else finish({ ttfb, total: ms() });
      });
      response.on('error', (e) => finish({ error: e.message, status: 0 }));
    });
    request.on('timeout', () => request.destroy(new Error('timeout')));
    request.on('error', (e) => finish({ error: e.message, status: 0 }));
    request.end(body);
  });
}

async function main() {
  const args = parseArgs(process.argv);
  const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
  const ttfbs = [];
  const totals = [];
  let failed = 0;
  let firstError = null;
  let firstStatus = 0;
  for (let round = 0; round < args.rounds; ++round) {
    const jobs = [];
    for (let i = 0; i < args.streams; ++i) {
      jobs.push(oneStream(agent, args.url, args.body, args.timeoutMs));
    }
    const results = await Promise.all(jobs);
    if (round === 0 && args.rounds > 1) continue;  // warm-up: connections, caches
    for (const r of results) {
      if (r.error) {
        ++failed;
        if (firstError === null) firstError = r.error;
        if (!firstStatus && r.status) firstStatus = r.status;
      } else {
        ttfbs.push(r.ttfb);
        totals.push(r.total);
      }
    }
  }
  agent.destroy();
  ttfbs.sort((a, b) => a - b);
  totals.sort((a, b) => a - b);
  if (firstError !== null) console.error('first failure: ' + firstError);
  const f = (x) => (Number.isNaN(x) ? 'nan' : x.toFixed(2));
  console.log(`STREAM_RESULT ok=${ttfbs.length} failed=${failed} ` +
              `ttfb_p50_ms=${f(percentile(ttfbs, 50))} ttfb_p90_ms=${f(percentile(ttfbs, 90))} ` +
              `ttfb_p99_ms=${f(percentile(ttfbs, 99))} ` +
              `total_p50_ms=${f(percentile(totals, 50))} total_p99_ms=${f(percentile(totals, 99))} ` +
              `status=${firstStatus}`);
}

main().catch((e) => {
  console.error(e.message);
  process.exit(2);
});
