-- POST /openai-completion for an existing conversation: every request names one of BENCH_POOL
-- user ids ("bench-user-<n>", n from 1), chosen at random, so the gateway reads that user's stored
-- history before calling the upstream.
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local pool = tonumber(os.getenv("BENCH_POOL") or "1000")
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
end

function request()
  local body = string.format(
    '{"prompt": "What did I ask you before? Answer in one sentence.", "user_id": "bench-user-%d"}',
    math.random(pool))
  return wrk.format("POST", "/openai-completion", {["Content-Type"] = "application/json"}, body)
end
