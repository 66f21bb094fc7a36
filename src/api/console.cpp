#include "api/console.h"

namespace staple::api {
namespace {

constexpr const char* kPage = R"PAGE(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>Staple console</title>
<style>
  :root { font-family: system-ui, sans-serif; color-scheme: light dark;
          --fg: #1d2330; --bg: #f4f5f7; --panel: #fff; --line: #dde0e6; --muted: #687082;
          --a: #2f6fed; --b: #e8912d; --c: #c23b3b; --head: #1d2330; }
  @media (prefers-color-scheme: dark) {
    :root { --fg: #e6e8ee; --bg: #15181e; --panel: #1f232b; --line: #343a46; --muted: #9aa3b5;
            --a: #6c9bff; --b: #f0a54a; --c: #f07070; --head: #0c0e12; }
  }
  body { margin: 0; color: var(--fg); background: var(--bg); }
  header { padding: 10px 20px; background: var(--head); color: #fff; display: flex; gap: 16px;
           align-items: center; flex-wrap: wrap; }
  header h1 { font-size: 18px; margin: 0; }
  header label { font-size: 13px; }
  #status { font-size: 13px; opacity: .85; }
  main { padding: 16px 20px; display: grid; gap: 16px; }
  section { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
  h2 { font-size: 16px; margin: 0 0 10px; }
  .charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 12px; }
  figure { margin: 0; }
  figcaption { font-size: 13px; color: var(--muted); margin-bottom: 4px; }
  svg { width: 100%; height: 120px; display: block; }
  svg .axis { stroke: var(--line); }
  svg text { fill: var(--muted); font-size: 10px; }
  .legend span { font-size: 12px; margin-right: 10px; }
  .s0 { stroke: var(--a); color: var(--a); } .s1 { stroke: var(--b); color: var(--b); }
  .s2 { stroke: var(--c); color: var(--c); }
  rect.s0 { fill: var(--a); }
  form { display: flex; gap: 8px; flex-wrap: wrap; align-items: center; margin-bottom: 8px; }
  input { font: inherit; padding: 4px 6px; }
  button { font: inherit; padding: 4px 12px; }
  table { border-collapse: collapse; width: 100%; font-size: 14px; }
  th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
  .msg { white-space: pre-wrap; margin: 4px 0; }
  .role { font-size: 12px; color: var(--muted); }
  .secret { font-family: monospace; background: var(--bg); padding: 6px; word-break: break-all; }
  .error { color: var(--c); }
  @media (max-width: 600px) { main { padding: 8px; } header { padding: 8px 10px; } }
</style>
</head>
<body>
<header>
  <h1>Staple console</h1>
  <label>admin key <input type="password" id="admin" autocomplete="off" placeholder="STAPLE_ADMIN_KEY"></label>
  <span id="status" role="status"></span>
</header>
<main>
  <section aria-labelledby="live-title">
    <h2 id="live-title">Last hour, per minute</h2>
    <div class="charts">
      <figure><figcaption>Requests</figcaption><svg id="chart-requests" role="img" aria-label="Requests per minute"></svg>
        <div class="legend"><span class="s0">■ requests</span><span class="s1">■ 4xx</span><span class="s2">■ 5xx</span></div></figure>
      <figure><figcaption>Latency (ms)</figcaption><svg id="chart-latency" role="img" aria-label="Latency percentiles"></svg>
        <div class="legend"><span class="s0">■ p50</span><span class="s1">■ p95</span><span class="s2">■ p99</span></div></figure>
      <figure><figcaption>Tokens</figcaption><svg id="chart-tokens" role="img" aria-label="Tokens per minute"></svg>
        <div class="legend"><span class="s0">■ prompt</span><span class="s1">■ completion</span></div></figure>
    </div>
  </section>
  <section aria-labelledby="conv-title">
    <h2 id="conv-title">Conversation</h2>
    <form id="conv-form">
      <label>id <input id="conv-id" required></label>
      <label>owner key id <input id="conv-owner" placeholder="none: made without keys"></label>
      <button>Show</button>
      <button type="button" id="conv-delete">Delete</button>
    </form>
    <div id="conv" aria-live="polite"></div>
  </section>
  <section aria-labelledby="keys-title">
    <h2 id="keys-title">Client keys</h2>
    <form id="key-form">
      <label>name <input id="key-name" required></label>
      <label>models <input id="key-models" placeholder="all; or a, b, c"></label>
      <button>Create key</button>
    </form>
    <div id="key-created" aria-live="polite"></div>
    <table><thead><tr><th>name</th><th>id</th><th>models</th><th>state</th><th></th></tr></thead>
      <tbody id="keys"></tbody></table>
    <div id="usage"></div>
  </section>
</main>
<script>
const $ = (id) => document.getElementById(id);
const adminBox = $('admin');
adminBox.value = sessionStorage.getItem('staple_admin_key') || '';
adminBox.addEventListener('change', () => {
  sessionStorage.setItem('staple_admin_key', adminBox.value.trim()); refresh();
});
function status(text, bad) { $('status').textContent = text; $('status').className = bad ? 'error' : ''; }
async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + adminBox.value.trim() };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error((data.error && (data.error.message || data.error)) || ('HTTP ' + res.status));
  return data;
}
const SVG = 'http://www.w3.org/2000/svg';
function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}
// A line per series over the points; the y axis starts at 0 and is labelled with its top.
function lineChart(svg, series) {
  svg.textContent = '';
  const w = svg.clientWidth || 300, h = svg.clientHeight || 120, left = 34, bottom = 14;
  const n = Math.max(1, ...series.map(s => s.length));
  const top = Math.max(1, ...series.flat().filter(v => v !== null));
  el('line', { x1: left, y1: h - bottom, x2: w, y2: h - bottom, class: 'axis' }, svg);
  el('line', { x1: left, y1: 4, x2: left, y2: h - bottom, class: 'axis' }, svg);
  el('text', { x: 2, y: 12 }, svg).textContent = top >= 1000 ? Math.round(top) : +top.toFixed(1);
  el('text', { x: 2, y: h - bottom }, svg).textContent = '0';
  el('text', { x: left, y: h - 2 }, svg).textContent = n > 1 ? (n - 1) + ' min ago' : '';
  el('text', { x: w - 24, y: h - 2 }, svg).textContent = 'now';
  series.forEach((values, i) => {
    const pts = values.map((v, j) => v === null ? null :
      [left + (n === 1 ? 0 : j * (w - left - 2) / (n - 1)), (h - bottom) - v / top * (h - bottom - 6)]);
    const d = pts.filter(Boolean).map((p, j) => (j ? 'L' : 'M') + p[0].toFixed(1) + ' ' + p[1].toFixed(1)).join(' ');
    if (d) el('path', { d, fill: 'none', 'stroke-width': 2, class: 's' + i }, svg);
    // The latest value as a dot, so that the first minute shows too.
    const last = pts.filter(Boolean).pop();
    if (last) el('circle', { cx: last[0], cy: last[1], r: 3, class: 's' + i, fill: 'currentColor' }, svg);
  });
}
async function loadStats() {
  const stats = await api('GET', '/admin/stats');
  const p = stats.points;
  lineChart($('chart-requests'), [p.map(x => x.requests), p.map(x => x.client_errors), p.map(x => x.server_errors)]);
  lineChart($('chart-latency'), [p.map(x => x.p50_ms), p.map(x => x.p95_ms), p.map(x => x.p99_ms)]);
  lineChart($('chart-tokens'), [p.map(x => x.prompt_tokens), p.map(x => x.completion_tokens)]);
  const now = p[p.length - 1];
  status(`this minute: ${now.requests} requests, ${now.server_errors} 5xx`);
}
function conversationPath() {
  const owner = $('conv-owner').value.trim();
  return '/admin/conversations/' + encodeURIComponent($('conv-id').value.trim()) +
         (owner ? '?owner=' + encodeURIComponent(owner) : '');
}
$('conv-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const out = $('conv');
  out.textContent = '';
  try {
    const page = await api('GET', conversationPath());
    if (!page.messages.length) out.textContent = 'No messages.';
    for (const m of page.messages) {
      const div = document.createElement('div');
      div.className = 'msg';
      const role = document.createElement('div');
      role.className = 'role';
      role.textContent = m.role + ' · ' + m.timestamp;
      div.append(role, document.createTextNode(m.content));
      out.appendChild(div);
    }
  } catch (err) { out.textContent = String(err.message); }
});
$('conv-delete').addEventListener('click', async () => {
  if (!$('conv-id').value.trim() || !confirm('Delete every message of this conversation?')) return;
  try {
    const done = await api('DELETE', conversationPath());
    $('conv').textContent = done.deleted + ' messages deleted.';
  } catch (err) { $('conv').textContent = String(err.message); }
});
async function loadKeys() {
  const list = await api('GET', '/admin/keys');
  const body = $('keys');
  body.textContent = '';
  for (const key of list.data) {
    const row = document.createElement('tr');
    for (const text of [key.name, key.id, key.models.length ? key.models.join(', ') : 'all',
                        key.revoked ? 'revoked' : 'active']) {
      const cell = document.createElement('td');
      cell.textContent = text;
      row.appendChild(cell);
    }
    const actions = document.createElement('td');
    const usage = document.createElement('button');
    usage.textContent = 'Usage';
    usage.addEventListener('click', () => showUsage(key.id, key.name));
    actions.appendChild(usage);
    if (!key.revoked) {
      const revoke = document.createElement('button');
      revoke.textContent = 'Revoke';
      revoke.addEventListener('click', async () => {
        if (!confirm('Revoke ' + key.name + '?')) return;
        try { await api('DELETE', '/admin/keys/' + encodeURIComponent(key.id)); await loadKeys(); }
        catch (err) { status(err.message, true); }
      });
      actions.appendChild(revoke);
    }
    row.appendChild(actions);
    body.appendChild(row);
  }
}
async function showUsage(id, name) {
  const key = await api('GET', '/admin/keys/' + encodeURIComponent(id));
  const box = $('usage');
  box.textContent = '';
  const title = document.createElement('h2');
  title.textContent = 'Usage of ' + name + ', requests per day';
  box.appendChild(title);
  const svg = el('svg', { id: 'chart-usage', role: 'img', 'aria-label': 'Requests per day' }, box);
  const days = key.usage;
  const w = svg.clientWidth || 300, h = 120, top = Math.max(1, ...days.map(d => d.requests));
  const bar = (w - 10) / Math.max(1, days.length);
  days.forEach((d, i) => {
    const height = d.requests / top * (h - 20);
    const r = el('rect', { x: 5 + i * bar, y: h - 14 - height, width: Math.max(1, bar - 2), height, class: 's0' }, svg);
    el('title', {}, r).textContent = d.day + ': ' + d.requests + ' requests, ' +
      (d.prompt_tokens + d.completion_tokens) + ' tokens';
  });
  el('text', { x: 5, y: 10 }, svg).textContent = top;
  if (!days.length) el('text', { x: 5, y: 60 }, svg).textContent = 'no use yet';
}
$('key-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const models = $('key-models').value.split(',').map(s => s.trim()).filter(Boolean);
  const body = { name: $('key-name').value.trim() };
  if (models.length) body.models = models;
  try {
    const created = await api('POST', '/admin/keys', body);
    const out = $('key-created');
    out.textContent = 'The key, shown this once: ';
    const secret = document.createElement('div');
    secret.className = 'secret';
    secret.id = 'new-secret';
    secret.textContent = created.key;
    out.appendChild(secret);
    $('key-form').reset();
    await loadKeys();
  } catch (err) { status(err.message, true); }
});
async function refresh() {
  if (!adminBox.value.trim()) { status('Type the admin key (STAPLE_ADMIN_KEY) to begin.'); return; }
  try { await loadStats(); await loadKeys(); } catch (err) { status(err.message, true); }
}
refresh();
setInterval(() => { if (adminBox.value.trim()) loadStats().catch(err => status(err.message, true)); }, 10000);
</script>
</body>
</html>
)PAGE";

}  // namespace

void RegisterConsole(http::Router& router) {
  router.Add("GET", "/console", "/console", [](http::Request&) -> net::awaitable<http::Response> {
    co_return http::HtmlPage(kPage);
  });
}

}  // namespace staple::api
