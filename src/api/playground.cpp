#include "api/playground.h"

namespace staple::api {
namespace {

constexpr const char* kPage = R"PAGE(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Staple playground</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2330; background: #f4f5f7; }
  body { margin: 0; display: flex; flex-direction: column; height: 100vh; }
  header { padding: 12px 20px; background: #1d2330; color: #fff; display: flex; gap: 16px;
           align-items: center; flex-wrap: wrap; }
  header h1 { font-size: 18px; margin: 0; }
  header label { font-size: 13px; opacity: .85; }
  header input[type=text] { width: 300px; font-family: monospace; }
  header input[type=password] { width: 200px; font-family: monospace; }
  #log { flex: 1; overflow-y: auto; padding: 20px; display: flex; flex-direction: column; gap: 10px; }
  .msg { max-width: 75%; padding: 10px 14px; border-radius: 10px; white-space: pre-wrap;
         line-height: 1.4; }
  .user { align-self: flex-end; background: #2f6fed; color: #fff; }
  .assistant { align-self: flex-start; background: #fff; border: 1px solid #dde0e6; }
  .error { align-self: center; background: #fde8e8; color: #8a1c1c; border: 1px solid #f3b4b4; }
  form { display: flex; gap: 8px; padding: 12px 20px; background: #fff; border-top: 1px solid #dde0e6; }
  textarea { flex: 1; resize: none; height: 48px; font: inherit; padding: 8px; }
  button { padding: 0 18px; font: inherit; }
</style>
</head>
<body>
<header>
  <h1>Staple playground</h1>
  <label>user_id <input type="text" id="user" placeholder="new conversation"></label>
  <label>key <input type="password" id="key" placeholder="client key, when required"
    autocomplete="off"></label>
  <label><input type="checkbox" id="stream" checked> stream</label>
  <button type="button" id="new">New conversation</button>
</header>
<div id="log" aria-live="polite"></div>
<form id="form">
  <textarea id="prompt" placeholder="Say something… (Enter sends, Shift+Enter for a new line)"></textarea>
  <button id="send">Send</button>
</form>
<script>
const log = document.getElementById('log');
const user = document.getElementById('user');
const prompt = document.getElementById('prompt');
const streamBox = document.getElementById('stream');
const keyBox = document.getElementById('key');
user.value = localStorage.getItem('staple_user_id') || '';
// A client key (STAPLE_AUTH=keys) is kept for this browser tab only.
keyBox.value = sessionStorage.getItem('staple_key') || '';
keyBox.addEventListener('change', () => {
  sessionStorage.setItem('staple_key', keyBox.value.trim()); loadHistory();
});
function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  if (keyBox.value.trim()) headers['Authorization'] = 'Bearer ' + keyBox.value.trim();
  return headers;
}

function add(role, text) {
  const div = document.createElement('div');
  div.className = 'msg ' + role;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
  return div;
}
function remember(id) {
  user.value = id;
  localStorage.setItem('staple_user_id', id);
}
async function loadHistory() {
  log.textContent = '';
  if (!user.value) return;
  const res = await fetch('/users/' + encodeURIComponent(user.value) + '/messages?limit=1000',
                          { headers: authHeaders() });
  if (!res.ok) return;
  const page = await res.json();
  for (const m of page.messages) add(m.role, m.content);
}
async function send(text) {
  add('user', text);
  const body = { prompt: text, stream: streamBox.checked };
  if (user.value) body.user_id = user.value;
  const res = await fetch('/openai-completion', {
    method: 'POST', headers: authHeaders({ 'Content-Type': 'application/json' }),
    body: JSON.stringify(body) });
  const type = res.headers.get('Content-Type') || '';
  if (!res.ok || !type.startsWith('text/event-stream')) {
    const data = await res.json().catch(() => ({ error: 'HTTP ' + res.status }));
    if (!res.ok) { add('error', (data.error || 'error') + (data.message ? ': ' + data.message : '')); return; }
    remember(data.user_id);
    add('assistant', data.completion);
    return;
  }
  const bubble = add('assistant', '');
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split('\n').filter(l => l.startsWith('data:')).map(l => l.slice(5).trim()).join('\n');
      if (!data || data === '[DONE]') continue;
      const obj = JSON.parse(data);
      if (obj.delta !== undefined) bubble.textContent += obj.delta;
      if (obj.user_id) { remember(obj.user_id); bubble.textContent = obj.completion; }
      if (obj.error) add('error', typeof obj.error === 'string' ? obj.error : obj.error.message);
      log.scrollTop = log.scrollHeight;
    }
  }
}
document.getElementById('form').addEventListener('submit', e => {
  e.preventDefault();
  const text = prompt.value.trim();
  if (!text) return;
  prompt.value = '';
  send(text).catch(err => add('error', String(err)));
});
prompt.addEventListener('keydown', e => {
  if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); document.getElementById('form').requestSubmit(); }
});
document.getElementById('new').addEventListener('click', () => {
  remember(''); localStorage.removeItem('staple_user_id'); log.textContent = '';
});
user.addEventListener('change', () => { remember(user.value.trim()); loadHistory(); });
loadHistory();
</script>
</body>
</html>
)PAGE";

}  // namespace

void RegisterPlayground(http::Router& router) {
  router.Add("GET", "/", "/", [](http::Request&) -> net::awaitable<http::Response> {
    http::Response response;
    response.headers.Add("Content-Type", "text/html; charset=utf-8");
    response.headers.Add("Cache-Control", "no-cache");
    response.body = kPage;
    co_return response;
  });
}

}  // namespace staple::api
