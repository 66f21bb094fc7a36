#include "api/playground.h"

namespace staple::api {
namespace {

constexpr const char* kPage = R"PAGE(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>Staple playground</title>
<style>
  :root { font-family: system-ui, sans-serif; color-scheme: light dark;
          --fg: #1d2330; --bg: #f4f5f7; --panel: #fff; --line: #dde0e6; --head: #1d2330;
          --mine: #2f6fed; --err-bg: #fde8e8; --err-fg: #8a1c1c; --err-line: #f3b4b4; }
  @media (prefers-color-scheme: dark) {
    :root { --fg: #e6e8ee; --bg: #15181e; --panel: #1f232b; --line: #343a46; --head: #0c0e12;
            --mine: #3b6fd8; --err-bg: #3a1d1f; --err-fg: #f5b5b5; --err-line: #6b2f33; }
  }
  body { margin: 0; display: flex; flex-direction: column; height: 100vh; height: 100dvh;
         color: var(--fg); background: var(--bg); }
  header { padding: 12px 20px; background: var(--head); color: #fff; display: flex; gap: 16px;
           align-items: center; flex-wrap: wrap; }
  header h1 { font-size: 18px; margin: 0; }
  header label { font-size: 13px; opacity: .85; }
  header input[type=text] { width: 300px; font-family: monospace; }
  header input[type=password] { width: 200px; font-family: monospace; }
  #log { flex: 1; overflow-y: auto; padding: 20px; display: flex; flex-direction: column; gap: 10px; }
  .msg { max-width: 75%; padding: 10px 14px; border-radius: 10px; white-space: pre-wrap;
         line-height: 1.4; }
  .user { align-self: flex-end; background: var(--mine); color: #fff; }
  .assistant { align-self: flex-start; background: var(--panel); border: 1px solid var(--line); }
  .assistant.broken { opacity: .6; border-style: dashed; }
  .assistant.broken::after { content: "\A(broken off: not stored)"; font-size: 12px; font-style: italic; }
  .error { align-self: center; background: var(--err-bg); color: var(--err-fg);
           border: 1px solid var(--err-line); }
  form { display: flex; gap: 8px; padding: 12px 20px; background: var(--panel);
         border-top: 1px solid var(--line); }
  textarea { flex: 1; resize: none; height: 48px; font: inherit; padding: 8px; }
  button { padding: 0 18px; font: inherit; }
  button:disabled { opacity: .5; }
  .hidden-label { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
  :focus-visible { outline: 2px solid #7aa7ff; outline-offset: 2px; }
  @media (max-width: 600px) {
    header { padding: 6px 10px; gap: 6px 10px; }
    header h1 { font-size: 15px; }
    header input[type=text], header input[type=password] { width: 130px; }
    #log { padding: 10px; }
    .msg { max-width: 90%; }
    form { padding: 8px 10px; }
  }
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
<main id="log" aria-live="polite" aria-label="Conversation"></main>
<form id="form">
  <label for="prompt" class="hidden-label">Message</label>
  <textarea id="prompt" autofocus
    placeholder="Say something… (Enter sends, Shift+Enter for a new line)"></textarea>
  <button id="send">Send</button>
</form>
<script>
const log = document.getElementById('log');
const user = document.getElementById('user');
const prompt = document.getElementById('prompt');
const sendButton = document.getElementById('send');
const streamBox = document.getElementById('stream');
const keyBox = document.getElementById('key');
let busy = false;
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
  if (id) localStorage.setItem('staple_user_id', id); else localStorage.removeItem('staple_user_id');
}
// One request at a time: a second message before the first answer is stored could start another
// conversation or arrive out of order.
function setBusy(value) {
  busy = value;
  sendButton.disabled = value;
  sendButton.textContent = value ? 'Answering…' : 'Send';
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
function errorText(res, data) {
  let text = (data.error && data.error.message) || data.error || ('HTTP ' + res.status);
  if (data.message) text += ': ' + data.message;
  const retry = res.headers.get('Retry-After');
  if (res.status === 429 && retry) text += ' (try again in ' + retry + ' s)';
  return text;
}
async function send(text) {
  // A new conversation gets its id before the first message, so that every message of it goes to
  // the same conversation whatever the order of the answers.
  if (!user.value && self.crypto && crypto.randomUUID) remember(crypto.randomUUID());
  add('user', text);
  const body = { prompt: text, stream: streamBox.checked };
  if (user.value) body.user_id = user.value;
  const res = await fetch('/openai-completion', {
    method: 'POST', headers: authHeaders({ 'Content-Type': 'application/json' }),
    body: JSON.stringify(body) });
  const type = res.headers.get('Content-Type') || '';
  if (!res.ok || !type.startsWith('text/event-stream')) {
    const data = await res.json().catch(() => ({}));
    if (!res.ok) { add('error', errorText(res, data)); return; }
    remember(data.user_id);
    add('assistant', data.completion);
    return;
  }
  const bubble = add('assistant', '');
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let finished = false;
  try {
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
        if (obj.user_id) { remember(obj.user_id); bubble.textContent = obj.completion; finished = true; }
        if (obj.error) add('error', typeof obj.error === 'string' ? obj.error : obj.error.message);
        log.scrollTop = log.scrollHeight;
      }
    }
  } finally {
    // Only the final event says the turn was stored; anything else broke off.
    if (!finished) bubble.classList.add('broken');
  }
}
document.getElementById('form').addEventListener('submit', e => {
  e.preventDefault();
  const text = prompt.value.trim();
  if (!text || busy) return;
  prompt.value = '';
  setBusy(true);
  send(text).catch(err => add('error', String(err))).finally(() => { setBusy(false); prompt.focus(); });
});
prompt.addEventListener('keydown', e => {
  if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); document.getElementById('form').requestSubmit(); }
});
document.getElementById('new').addEventListener('click', () => {
  remember(''); log.textContent = ''; prompt.focus();
});
user.addEventListener('change', () => { remember(user.value.trim()); loadHistory(); });
loadHistory();
prompt.focus();
</script>
</body>
</html>
)PAGE";

}  // namespace

void RegisterPlayground(http::Router& router) {
  router.Add("GET", "/", "/", [](http::Request&) -> net::awaitable<http::Response> {
    co_return http::HtmlPage(kPage);
  });
}

}  // namespace staple::api
