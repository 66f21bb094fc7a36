#include <benchmark/benchmark.h>
#include <malloc.h>

#include <string>
#include <vector>

#include "api/admission.h"
#include "ratelimit/clock.h"
#include "ratelimit/limit.h"
#include "ratelimit/memory/memory_rate_limiter.h"

// Memory the in-process limiter holds per client, for STAPLE_LIMITER_MAX_CLIENTS: 100 000 distinct
// clients (IPv6 /64 networks, the longest key form) each make one request under the default limits
// (two global limits and the route limit of /openai-completion, so three entries per client).
// Counters: bytes_per_client and bytes_per_entry, from glibc's count of allocated bytes.
//
//   build/bench/staple_micro_bench --benchmark_filter=LimiterMemory
namespace staple::ratelimit {
namespace {

void BM_LimiterMemoryPerClient(benchmark::State& state) {
  const auto strategy = static_cast<Strategy>(state.range(0));
  constexpr int kClients = 100'000;
  const auto global = ParseLimits("200 per day;50 per hour").value();
  const auto route = ParseLimits("10 per minute").value();
  SystemClock clock;
  for (auto _ : state) {
    std::vector<Check> checks;
    const std::size_t before = mallinfo2().uordblks;
    auto limiter = std::make_unique<MemoryRateLimiter>(clock, strategy);
    for (int i = 0; i < kClients; ++i) {
      const std::string client = api::ClientKey(
          "2001:db8:" + std::to_string(i / 65536) + ":" + std::to_string(i % 65536) + "::1", 64);
      checks.clear();
      for (const auto& item : global) checks.push_back({item, "global:" + client});
      checks.push_back({route[0], "/openai-completion:" + client});
      limiter->AcquireNow(checks, 1);
    }
    const std::size_t after = mallinfo2().uordblks;
    const double bytes = static_cast<double>(after - before);
    state.counters["bytes_per_client"] = bytes / kClients;
    state.counters["bytes_per_entry"] = bytes / static_cast<double>(limiter->EntryCount());
    state.counters["MiB_per_100k_clients"] = bytes / (1024.0 * 1024.0);
  }
}
BENCHMARK(BM_LimiterMemoryPerClient)
    ->Arg(static_cast<int>(Strategy::kFixedWindow))
    ->Arg(static_cast<int>(Strategy::kMovingWindow))
    ->Arg(static_cast<int>(Strategy::kSlidingWindowCounter))
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace staple::ratelimit
