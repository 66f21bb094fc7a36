-- Shared by every wrk script of bench/run: prints one machine-readable line at the end of a run.
-- Latencies are in microseconds; "status" counts responses with a status of 400 or more (wrk's own
-- "Non-2xx or 3xx" number), "socket" the connect/read/write errors, "timeout" the requests wrk gave
-- up on (--timeout).

function done(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "BENCH_RESULT requests=%d seconds=%.3f rps=%.1f p50_us=%d p99_us=%d max_us=%d " ..
    "status=%d socket=%d timeout=%d\n",
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write, e.timeout))
end
