#include <benchmark/benchmark.h>

#include <cmath>
#include <string>
#include <vector>

#include "ratelimit/clock.h"
#include "ratelimit/limit.h"
#include "ratelimit/memory/memory_rate_limiter.h"

namespace staple::ratelimit {
namespace {

void BM_ParseLimits(benchmark::State& state) {
  for (auto _ : state) {
    auto items = ParseLimits("200 per day;50 per hour");
    benchmark::DoNotOptimize(items);
  }
}
BENCHMARK(BM_ParseLimits);

// System time in steps of 10 ms, so the moving window's log coalesces hits the way a busy
// gateway's would instead of growing by one entry per benchmark iteration.
class CoarseClock final : public Clock {
 public:
  double Now() const override { return std::floor(system_.Now() * 100) / 100; }

 private:
  SystemClock system_;
};

// One request = three checks (two global limits and a route limit) for one of 1000 clients.
// range(0): the strategy; range(1): 1 = the seed's amounts (after the first 10 requests per
// client almost every call is a denial), 0 = amounts high enough that every call is admitted.
void BM_AcquireNow(benchmark::State& state) {
  CoarseClock clock;
  const auto strategy = static_cast<Strategy>(state.range(0));
  MemoryRateLimiter limiter(clock, strategy);
  auto global =
      ParseLimits(state.range(1) ? "200 per day;50 per hour" : "20000000 per day;5000000 per hour");
  auto route = ParseLimits(state.range(1) ? "10 per minute" : "1000000 per minute");
  constexpr int kClients = 1000;
  std::vector<std::vector<Check>> requests(kClients);
  for (int c = 0; c < kClients; ++c) {
    const std::string client = "203.0.113." + std::to_string(c);
    requests[static_cast<std::size_t>(c)] = {
        Check{(*global)[0], "global:" + client}, Check{(*global)[1], "global:" + client},
        Check{(*route)[0], "route:/openai-completion:" + client}};
  }
  std::size_t next = 0;
  for (auto _ : state) {
    Decision d = limiter.AcquireNow(requests[next], 1);
    benchmark::DoNotOptimize(d);
    next = next + 1 == kClients ? 0 : next + 1;
  }
  state.SetLabel(std::string(StrategyName(strategy)) +
                 (state.range(1) ? " seed limits" : " admitting"));
}
BENCHMARK(BM_AcquireNow)
    ->ArgsProduct({{static_cast<int>(Strategy::kFixedWindow),
                    static_cast<int>(Strategy::kMovingWindow),
                    static_cast<int>(Strategy::kSlidingWindowCounter)},
                   {0, 1}});

}  // namespace
}  // namespace staple::ratelimit
