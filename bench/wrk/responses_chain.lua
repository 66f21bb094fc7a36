-- POST /v1/responses in previous_response_id chains of at most BENCH_CHAIN (default 10)
-- responses: each request continues the last response this wrk thread received, unless that one
-- ended a chain. A response's depth travels in its metadata (the gateway returns it in the
-- answer), so chains stay short although a thread's connections answer out of order, and the
-- gateway reads a stored chain of up to BENCH_CHAIN - 1 responses before calling the upstream.
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local chain = tonumber(os.getenv("BENCH_CHAIN") or "10")
local previous = nil
local previous_depth = 0

function request()
  local body
  if previous then
    body = string.format(
      '{"model": "gpt-4o-mini", "input": "And then? Answer in one sentence.", ' ..
      '"previous_response_id": "%s", "metadata": {"depth": "%d"}}', previous, previous_depth + 1)
  else
    body = '{"model": "gpt-4o-mini", "input": "Hello, who are you? Answer in one sentence.", ' ..
      '"metadata": {"depth": "1"}}'
  end
  return wrk.format("POST", "/v1/responses", {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  if status ~= 200 then return end
  local id = string.match(body, '^{"id":"(resp_[0-9a-f]+)"')
  local depth = tonumber(string.match(body, '"metadata":{"depth":"(%d+)"}') or chain)
  if id and depth < chain then
    previous, previous_depth = id, depth
  else
    previous, previous_depth = nil, 0
  end
end
