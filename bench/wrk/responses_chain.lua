-- POST /v1/responses in previous_response_id chains of BENCH_CHAIN (default 10) responses: each
-- request continues the last response this wrk thread received, and every BENCH_CHAIN answers a
-- thread starts a new chain, so the gateway reads a stored chain of up to BENCH_CHAIN responses
-- (plus a few: the thread's connections answer out of order) before calling the upstream.
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local chain = tonumber(os.getenv("BENCH_CHAIN") or "10")
local previous = nil
local answers = 0

function request()
  local body
  if previous then
    body = string.format(
      '{"model": "gpt-4o-mini", "input": "And then? Answer in one sentence.", ' ..
      '"previous_response_id": "%s"}', previous)
  else
    body = '{"model": "gpt-4o-mini", "input": "Hello, who are you? Answer in one sentence."}'
  end
  return wrk.format("POST", "/v1/responses", {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  if status ~= 200 then return end
  answers = answers + 1
  if answers % chain == 0 then
    previous = nil
  else
    previous = string.match(body, '^{"id":"(resp_[0-9a-f]+)"')
  end
end
