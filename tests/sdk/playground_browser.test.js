// The playground in a real browser: Debian's chromium driven by playwright-core, against the real
// binary serving with its built-in demo upstream (--demo). A message is sent and its answer
// streams in while Send is disabled; after a reload the conversation is read back from the store;
// the second message of a new conversation stays in it; the page works at phone width and in dark
// mode. Screenshots (desktop, phone, dark) go to $STAPLE_SCREENSHOTS (build/screenshots in ctest).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

import { STAPLE_BIN, cleanEnv, freePort, start, waitForHttp } from './harness.js';

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SHOTS = process.env.STAPLE_SCREENSHOTS || join(tmpdir(), 'staple-screenshots');

// `staple serve --demo` on a free port in a fresh directory (with `env`), and Chromium: what both
// pages are tested against. stop() ends both and removes the directory.
async function startDemo(prefix, env) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  mkdirSync(SHOTS, { recursive: true });
  const port = await freePort();
  const staple = start(STAPLE_BIN, ['serve', '--host', '127.0.0.1', '--port', String(port), '--demo'],
                       env, dir, 'staple');
  const root = `http://127.0.0.1:${port}`;
  const stop = async (browser) => {
    if (browser) await browser.close();
    if (staple.exitCode === null && staple.pid) process.kill(staple.pid, 'SIGTERM');
    if (process.env.STAPLE_KEEP_TEST_DIRS !== '1') rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitForHttp(`${root}/healthz`, staple);
  } catch (error) {
    await stop();
    throw error;
  }
  return { root, stop };
}

const launchChromium = () => chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });

describe('the playground in Chromium', { skip: !STAPLE_BIN }, () => {
  let server;
  let url;
  let browser;

  before(async () => {
    server = await startDemo('staple-browser-', cleanEnv());
    url = `${server.root}/`;
    browser = await launchChromium();
  });

  after(async () => {
    if (server) await server.stop(browser);
  });

  // The text of the assistant bubbles on the page.
  const answers = (page) => page.locator('.msg.assistant').allTextContents();

  test('a streamed answer, Send disabled meanwhile, the conversation after a reload', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    await page.goto(url);
    // The message box has a label and has the focus.
    const box = page.getByLabel('Message');
    await box.waitFor();
    assert.equal(await page.evaluate(() => document.activeElement.id), 'prompt');

    await box.fill('Hello from the browser');
    await box.press('Enter');
    const send = page.locator('#send');
    // The demo upstream streams in pieces 40 ms apart: Send is disabled until the answer is in.
    await page.waitForFunction(() => document.getElementById('send').disabled);
    await page.waitForFunction(() => !document.getElementById('send').disabled);
    assert.equal(await send.isDisabled(), false);
    assert.deepEqual(await answers(page), ['echo(1): Hello from the browser']);
    const conversation = await page.inputValue('#user');
    assert.match(conversation, /^[0-9a-f-]{36}$/);

    // A second message goes to the same conversation (its id existed before the first answer).
    await box.fill('Second message');
    await box.press('Enter');
    await page.waitForFunction(() => document.querySelectorAll('.msg.assistant').length === 2 &&
                                     !document.getElementById('send').disabled);
    assert.deepEqual(await answers(page),
                     ['echo(1): Hello from the browser', 'echo(3): Second message']);
    assert.equal(await page.inputValue('#user'), conversation);
    await page.screenshot({ path: join(SHOTS, 'playground-desktop.png') });

    // After a reload the page reads the conversation back from Staple's store.
    await page.reload();
    await page.waitForFunction(() => document.querySelectorAll('.msg').length === 4);
    assert.deepEqual(await answers(page),
                     ['echo(1): Hello from the browser', 'echo(3): Second message']);
    assert.equal(await page.locator('.broken').count(), 0);
    await context.close();
  });

  test('phone width and dark mode', async () => {
    const context = await browser.newContext({
      viewport: { width: 390, height: 740 }, isMobile: true, hasTouch: true, colorScheme: 'dark',
    });
    const page = await context.newPage();
    await page.goto(url);
    const box = page.getByLabel('Message');
    await box.fill('From a phone');
    await page.locator('#send').tap();
    await page.waitForFunction(() => document.querySelectorAll('.msg.assistant').length === 1 &&
                                     !document.getElementById('send').disabled);
    assert.deepEqual(await answers(page), ['echo(1): From a phone']);
    // The message box and Send are on screen, and the header leaves the conversation most of it.
    const form = await page.locator('form').boundingBox();
    assert.ok(form.y + form.height <= 740 + 1, `the form ends at ${form.y + form.height}`);
    const header = await page.locator('header').boundingBox();
    assert.ok(header.height < 740 / 4, `the header is ${header.height} px high`);
    // Dark mode: the page background is dark.
    const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const [r, g, b] = background.match(/\d+/g).map(Number);
    assert.ok(r + g + b < 150, `background ${background}`);
    await page.screenshot({ path: join(SHOTS, 'playground-phone-dark.png') });
    await context.close();
  });
});

describe('the operator console in Chromium', { skip: !STAPLE_BIN }, () => {
  const ADMIN_KEY = 'admin-key-for-the-browser-test-0123456789';
  let server;
  let root;
  let browser;
  let tenant;

  before(async () => {
    server = await startDemo('staple-console-',
                             { ...cleanEnv(), STAPLE_ADMIN_KEY: ADMIN_KEY, STAPLE_AUTH: 'keys' });
    root = server.root;
    // A tenant's key, some traffic to chart, and a conversation of that tenant to look up.
    const made = await fetch(`${root}/admin/keys`, {
      method: 'POST', headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${ADMIN_KEY}` },
      body: JSON.stringify({ name: 'tenant' }) });
    assert.equal(made.status, 201);
    tenant = await made.json();
    for (const prompt of ['one', 'two', 'three']) {
      const res = await fetch(`${root}/openai-completion`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${tenant.key}` },
        body: JSON.stringify({ prompt, user_id: 'console-conv' }) });
      assert.equal(res.status, 200);
    }
    browser = await launchChromium();
  });

  after(async () => {
    if (server) await server.stop(browser);
  });

  test('charts, a conversation, and a key created, charted and revoked', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.on('dialog', (dialog) => dialog.accept());
    await page.goto(`${root}/console`);
    await page.getByLabel('admin key').fill(ADMIN_KEY);
    await page.getByLabel('admin key').press('Tab');  // change event: the page loads its data
    // The last hour's charts are drawn, and this minute's requests are counted.
    await page.waitForSelector('#chart-requests circle');
    await page.waitForSelector('#chart-latency circle');
    // (The three turns, and the browser's own GET /favicon.ico, a 401 or 404.)
    const counted = (await page.textContent('#status')).match(/this minute: (\d+) requests, 0 5xx/);
    assert.ok(counted && Number(counted[1]) >= 3, await page.textContent('#status'));

    // A conversation by id.
    await page.fill('#conv-id', 'console-conv');
    await page.fill('#conv-owner', tenant.id);
    await page.click('#conv-form button:not([type])');
    await page.waitForFunction(() => document.querySelectorAll('#conv .msg').length === 6);
    assert.match(await page.textContent('#conv'), /echo\(5\): three/);

    // A key: created (its secret shown once), listed, its usage charted, revoked.
    await page.fill('#key-name', 'browser-made');
    await page.fill('#key-models', 'gpt-4o-mini');
    await page.click('#key-form button');
    const secret = await page.textContent('#new-secret');
    assert.match(secret, /^sk-staple-/);
    const row = page.locator('#keys tr', { hasText: 'browser-made' });
    await row.waitFor();
    assert.match(await row.textContent(), /gpt-4o-mini.*active/);
    await row.getByRole('button', { name: 'Usage' }).click();
    await page.waitForSelector('#chart-usage');
    await page.screenshot({ path: join(SHOTS, 'console-desktop.png'), fullPage: true });
    await row.getByRole('button', { name: 'Revoke' }).click();
    await page.waitForFunction(() => /browser-made.*revoked/.test(document.getElementById('keys').textContent));

    // The key really is revoked: Staple refuses it.
    const refused = await fetch(`${root}/v1/models`, { headers: { Authorization: `Bearer ${secret}` } });
    assert.equal(refused.status, 401);

    // Deleting the conversation from the console.
    await page.click('#conv-delete');
    await page.waitForFunction(() => /6 messages deleted/.test(document.getElementById('conv').textContent));
    await context.close();
  });
});
