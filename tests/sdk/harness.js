// Starts tools/fake_openai and Staple in front of it on free ports of 127.0.0.1, for the SDK tests
// (responses_sdk.test.js, agents_sdk.test.js). STAPLE_BIN and FAKE_OPENAI_BIN name the binaries;
// the test directory is kept when STAPLE_KEEP_TEST_DIRS=1.

import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const STAPLE_BIN = process.env.STAPLE_BIN;
export const FAKE_OPENAI_BIN = process.env.FAKE_OPENAI_BIN;
export const HAVE_BINARIES = Boolean(STAPLE_BIN && FAKE_OPENAI_BIN);
export const UPSTREAM_KEY = 'sk-sdk-test-SECRET-0123456789';
export const MODEL = 'fake-model';

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export async function waitForHttp(url, child, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${url}: process exited with ${child.exitCode}`);
    try {
      const response = await fetch(url);
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`${url} did not answer within ${timeoutMs} ms`);
}

// A child process whose output goes to files in `dir`.
export function start(executable, args, env, dir, name) {
  const out = openSync(join(dir, `${name}.stdout.log`), 'w');
  const err = openSync(join(dir, `${name}.stderr.log`), 'w');
  return spawn(executable, args, { cwd: dir, env, stdio: ['ignore', out, err] });
}

// The environment without the variables that would configure Staple or route through a proxy.
export function cleanEnv() {
  const env = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (/^(OPENAI_|STAPLE_)/.test(name) || /_proxy$/i.test(name)) continue;
    env[name] = value;
  }
  return env;
}

// Staple (no client authentication: it listens on loopback) in front of fake_openai.
export class Stack {
  async start(prefix) {
    this.dir = mkdtempSync(join(tmpdir(), prefix));
    const fakePort = await freePort();
    this.fake = start(FAKE_OPENAI_BIN, ['--host', '127.0.0.1', '--port', String(fakePort)],
                      cleanEnv(), this.dir, 'fake_openai');
    this.fakeRoot = `http://127.0.0.1:${fakePort}`;
    await waitForHttp(`${this.fakeRoot}/_fake/stats`, this.fake);

    const staplePort = await freePort();
    const env = {
      ...cleanEnv(),
      OPENAI_BASE_URL: `${this.fakeRoot}/v1`,
      OPENAI_API_KEY: UPSTREAM_KEY,
      STAPLE_UPSTREAM_RETRIES: '0',
      STAPLE_THREADS: '1',
      // A test file sends more requests than the default 50 per hour of one client.
      STAPLE_DEFAULT_LIMITS: '100000 per hour',
    };
    this.staple = start(STAPLE_BIN, ['serve', '--host', '127.0.0.1', '--port', String(staplePort)],
                        env, this.dir, 'staple');
    await waitForHttp(`http://127.0.0.1:${staplePort}/healthz`, this.staple);
    this.baseURL = `http://127.0.0.1:${staplePort}/v1`;
    return this;
  }

  stop() {
    for (const child of [this.staple, this.fake]) {
      if (child && child.exitCode === null && child.pid) process.kill(child.pid, 'SIGTERM');
    }
    if (this.dir && process.env.STAPLE_KEEP_TEST_DIRS !== '1') {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }

  // The parsed bodies of the chat requests the upstream received, oldest first.
  async chatBodies() {
    const response = await fetch(`${this.fakeRoot}/_fake/requests`);
    if (!response.ok) throw new Error(`GET /_fake/requests: ${response.status}`);
    const requests = await response.json();
    return requests
      .filter((r) => r.method === 'POST' && r.path.split('?')[0] === '/v1/chat/completions')
      .map((r) => JSON.parse(r.body));
  }

  // The body of the last chat request the upstream received.
  async lastChatBody() {
    const bodies = await this.chatBodies();
    if (bodies.length === 0) throw new Error('the upstream received no chat request');
    return bodies[bodies.length - 1];
  }

  // The `messages` of the last chat request the upstream received.
  async lastChatMessages() {
    return (await this.lastChatBody()).messages;
  }

  async clearRequests() {
    const response = await fetch(`${this.fakeRoot}/_fake/requests`, { method: 'DELETE' });
    if (!response.ok) throw new Error(`DELETE /_fake/requests: ${response.status}`);
  }
}

// The text of a chat message: its string content, or the texts of its content parts.
export function messageText(message) {
  if (typeof message.content === 'string') return message.content;
  if (Array.isArray(message.content)) {
    return message.content.map((part) => part.text ?? '').join('');
  }
  return '';
}

// Chat messages as [role, text] pairs, for comparing with what a test expects.
export function roleTexts(messages) {
  return messages.map((message) => [message.role, messageText(message)]);
}
