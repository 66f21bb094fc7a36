-- POST a fixed JSON body. Environment: BENCH_BODY (the body), BENCH_PATH (the path).
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/"
wrk.body = os.getenv("BENCH_BODY") or "{}"
wrk.headers["Content-Type"] = "application/json"
-- BENCH_AUTH: a client key sent as Authorization: Bearer (STAPLE_AUTH=keys).
if os.getenv("BENCH_AUTH") and os.getenv("BENCH_AUTH") ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_AUTH")
end
