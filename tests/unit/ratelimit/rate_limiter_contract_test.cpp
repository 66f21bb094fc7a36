// The RateLimiter contract, run against every implementation: MemoryRateLimiter and
// RedisRateLimiter (against a throwaway redis-server). Everything goes through the coroutine
// interface, on io_contexts run by the test.

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "fake_clock.h"
#include "ratelimit/memory/memory_rate_limiter.h"
#include "ratelimit/redis/redis_rate_limiter.h"
#include "support/redis_server.h"

namespace staple::ratelimit {
namespace {

using testing::FakeClock;

// A multiple of 3600, so sliding windows of a minute or an hour start exactly on it.
constexpr double kT0 = 1'699'999'200;

enum class Backend { kMemory, kRedis };

RateLimitItem Item(const char* text) {
  auto items = ParseLimits(text);
  EXPECT_TRUE(items.ok()) << text;
  return items.ok() ? (*items)[0] : RateLimitItem{};
}

Check MakeCheck(const char* limit, std::string key) { return Check{Item(limit), std::move(key)}; }

// Runs one coroutine to completion on a fresh io_context of the calling thread.
template <typename T>
T RunOn(std::function<net::awaitable<T>()> make) {
  net::io_context io;
  std::optional<T> out;
  net::co_spawn(
      io,
      [&]() -> net::awaitable<void> {
        T value = co_await make();
        out.emplace(std::move(value));
      },
      [](std::exception_ptr e) {
        if (e) std::rethrow_exception(e);
      });
  io.run();
  return std::move(*out);
}

Result<Decision> AcquireOn(RateLimiter& limiter, std::vector<Check> checks, std::uint64_t cost) {
  return RunOn<Result<Decision>>([&]() -> net::awaitable<Result<Decision>> {
    std::vector<Check> copy = checks;
    Result<Decision> result = co_await limiter.Acquire(std::move(copy), cost);
    co_return result;
  });
}

Status RefundOn(RateLimiter& limiter, std::vector<Check> checks, std::uint64_t amount,
                double acquired_at) {
  return RunOn<Status>([&]() -> net::awaitable<Status> {
    std::vector<Check> copy = checks;
    Status result = co_await limiter.Refund(std::move(copy), amount, acquired_at);
    co_return result;
  });
}

Status ChargeOn(RateLimiter& limiter, std::vector<Check> checks, std::uint64_t amount) {
  return RunOn<Status>([&]() -> net::awaitable<Status> {
    std::vector<Check> copy = checks;
    Status result = co_await limiter.Charge(std::move(copy), amount);
    co_return result;
  });
}

Status PingOn(RateLimiter& limiter) {
  return RunOn<Status>([&]() -> net::awaitable<Status> {
    Status result = co_await limiter.Ping();
    co_return result;
  });
}

// One redis-server for the whole test program, started on first use.
::staple::testing::RedisServer& SharedRedis() {
  static ::staple::testing::RedisServer server;
  return server;
}

// Each limiter gets its own key prefix, so tests sharing the server never see each other's keys.
RedisOptions FreshRedisOptions(std::uint16_t port) {
  static std::atomic<int> counter{0};
  RedisOptions options;
  options.port = port;
  options.key_prefix = "test" + std::to_string(counter.fetch_add(1)) + ":";
  return options;
}

std::unique_ptr<RateLimiter> MakeLimiter(Backend backend, const Clock& clock, Strategy strategy) {
  if (backend == Backend::kMemory) return std::make_unique<MemoryRateLimiter>(clock, strategy);
  return std::make_unique<RedisRateLimiter>(clock, strategy,
                                            FreshRedisOptions(SharedRedis().port()));
}

const char* BackendName(Backend backend) {
  return backend == Backend::kMemory ? "Memory" : "Redis";
}

const char* StrategyTestName(Strategy strategy) {
  switch (strategy) {
    case Strategy::kFixedWindow:
      return "FixedWindow";
    case Strategy::kMovingWindow:
      return "MovingWindow";
    case Strategy::kSlidingWindowCounter:
      return "SlidingWindowCounter";
  }
  return "Unknown";
}

// Behaviour every implementation and every strategy shares.
class RateLimiterContractTest : public ::testing::TestWithParam<std::tuple<Backend, Strategy>> {
 protected:
  Decision Hit(const std::vector<Check>& checks, std::uint64_t cost = 1) {
    Result<Decision> result = AcquireOn(*limiter_, checks, cost);
    EXPECT_TRUE(result.ok()) << (result.ok() ? "" : result.error().message);
    return result.ok() ? *result : Decision{};
  }
  // Refunds an acquire made at `acquired_at` (default: now).
  void Give(const std::vector<Check>& checks, std::uint64_t amount,
            std::optional<double> acquired_at = std::nullopt) {
    Status status = RefundOn(*limiter_, checks, amount, acquired_at.value_or(clock_.Now()));
    EXPECT_TRUE(status.ok()) << (status.ok() ? "" : status.error().message);
  }
  void Charge(const std::vector<Check>& checks, std::uint64_t amount) {
    Status status = ChargeOn(*limiter_, checks, amount);
    EXPECT_TRUE(status.ok()) << (status.ok() ? "" : status.error().message);
  }

  FakeClock clock_{kT0 + 10};
  std::unique_ptr<RateLimiter> limiter_ =
      MakeLimiter(std::get<0>(GetParam()), clock_, std::get<1>(GetParam()));
};

INSTANTIATE_TEST_SUITE_P(
    AllLimiters, RateLimiterContractTest,
    ::testing::Combine(::testing::Values(Backend::kMemory, Backend::kRedis),
                       ::testing::Values(Strategy::kFixedWindow, Strategy::kMovingWindow,
                                         Strategy::kSlidingWindowCounter)),
    [](const ::testing::TestParamInfo<std::tuple<Backend, Strategy>>& param_info) {
      return std::string(BackendName(std::get<0>(param_info.param))) +
             StrategyTestName(std::get<1>(param_info.param));
    });

TEST_P(RateLimiterContractTest, EmptyChecksAllow) {
  const Decision d = Hit({});
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.retry_after, 0);
  EXPECT_TRUE(PingOn(*limiter_).ok());
}

TEST_P(RateLimiterContractTest, AdmitsTheAmountThenDenies) {
  const std::vector<Check> checks{MakeCheck("3/minute", "c")};
  for (std::uint64_t expected_remaining : {2u, 1u, 0u}) {
    const Decision d = Hit(checks);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.deciding, 0u);
    EXPECT_EQ(d.state.limit, 3u);
    EXPECT_EQ(d.state.remaining, expected_remaining);
    EXPECT_GT(d.state.reset_at, clock_.Now());
    EXPECT_EQ(d.retry_after, 0);
  }
  const Decision denied = Hit(checks);
  EXPECT_FALSE(denied.allowed);
  EXPECT_EQ(denied.state.remaining, 0u);
  EXPECT_GT(denied.retry_after, 0);
  EXPECT_LE(denied.retry_after, 60);
}

// retry_after is exact: just before it the same request is still denied, at it it succeeds.
TEST_P(RateLimiterContractTest, RetryAfterIsWhenARetrySucceeds) {
  const std::vector<Check> checks{MakeCheck("4/minute", "c")};
  for (double step : {0.0, 7.0, 11.5, 3.0}) {
    clock_.Advance(step);
    ASSERT_TRUE(Hit(checks).allowed);
  }
  for (int round = 0; round < 6; ++round) {
    clock_.Advance(0.75);
    Decision denied = Hit(checks);
    for (int i = 0; i < 4 && denied.allowed; ++i) denied = Hit(checks);
    ASSERT_FALSE(denied.allowed) << round;
    const double retry_at = clock_.Now() + denied.retry_after;
    clock_.Set(retry_at - 0.002);
    ASSERT_FALSE(Hit(checks).allowed) << round;
    clock_.Set(retry_at);
    ASSERT_TRUE(Hit(checks).allowed) << round;
  }
}

TEST_P(RateLimiterContractTest, AllOrNothingAcrossChecks) {
  const std::vector<Check> both{MakeCheck("3/minute", "global:c"),
                                MakeCheck("2/minute", "route:/openai-completion:c")};
  Decision d = Hit(both);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.deciding, 1u);
  EXPECT_EQ(d.state.remaining, 1u);
  d = Hit(both);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.deciding, 1u);
  EXPECT_EQ(d.state.remaining, 0u);

  d = Hit(both);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.deciding, 1u);
  EXPECT_EQ(d.state.limit, 2u);

  // The denial took nothing from the global limit: one request is still left there.
  const std::vector<Check> global{both[0]};
  d = Hit(global);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 0u);
  EXPECT_FALSE(Hit(global).allowed);
}

TEST_P(RateLimiterContractTest, TiesOnRemainingGoToTheEarliestReset) {
  const std::vector<Check> checks{MakeCheck("5/hour", "a"), MakeCheck("5/second", "a")};
  const Decision d = Hit(checks);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 4u);
  EXPECT_EQ(d.deciding, 1u);
  EXPECT_LE(d.state.reset_at, clock_.Now() + 1);
}

TEST_P(RateLimiterContractTest, DenialNamesFirstFailingCheckAndLongestWait) {
  const std::vector<Check> checks{MakeCheck("1/minute", "a"), MakeCheck("1/hour", "b")};
  ASSERT_TRUE(Hit(checks).allowed);
  clock_.Advance(1);
  const Decision d = Hit(checks);
  ASSERT_FALSE(d.allowed);
  EXPECT_EQ(d.deciding, 0u);
  EXPECT_EQ(d.state.limit, 1u);
  EXPECT_GT(d.retry_after, 60);
  EXPECT_LE(d.retry_after, 3600);
}

TEST_P(RateLimiterContractTest, CostAboveOne) {
  const std::vector<Check> checks{MakeCheck("10/minute", "tokens")};
  Decision d = Hit(checks, 4);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 6u);
  d = Hit(checks, 4);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 2u);
  d = Hit(checks, 4);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.state.remaining, 2u);  // nothing taken by the denial
  d = Hit(checks, 2);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 0u);

  d = Hit({MakeCheck("10/minute", "other")}, 11);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.state.remaining, 10u);
  EXPECT_EQ(d.retry_after, 60);
}

TEST_P(RateLimiterContractTest, ZeroCostPeeks) {
  const std::vector<Check> checks{MakeCheck("1/minute", "c")};
  EXPECT_TRUE(Hit(checks, 0).allowed);
  EXPECT_TRUE(Hit(checks, 1).allowed);
  const Decision d = Hit(checks, 0);
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 0u);
  EXPECT_FALSE(Hit(checks, 1).allowed);
}

TEST_P(RateLimiterContractTest, AmountZeroBlocksEverything) {
  const std::vector<Check> checks{MakeCheck("0/minute", "c")};
  for (std::uint64_t cost : {0u, 1u, 5u}) {
    const Decision d = Hit(checks, cost);
    EXPECT_FALSE(d.allowed) << cost;
    EXPECT_EQ(d.state.limit, 0u);
    EXPECT_EQ(d.state.remaining, 0u);
    EXPECT_EQ(d.retry_after, 60);
  }
}

TEST_P(RateLimiterContractTest, LimitSaturatesTo64Bits) {
  const Decision d = Hit({MakeCheck("99999999999999999999/day", "c")}, 5);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.limit, std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(d.state.remaining, std::numeric_limits<std::uint64_t>::max() - 5);
}

TEST_P(RateLimiterContractTest, ChecksWithTheSameKeyAreChargedEach) {
  const std::vector<Check> twice{MakeCheck("5/minute", "c"), MakeCheck("5/minute", "c")};
  Decision d = Hit(twice);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 3u);
  ASSERT_TRUE(Hit(twice).allowed);
  d = Hit(twice);  // 4 used: the first occurrence fits, the second does not
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.deciding, 1u);
  EXPECT_TRUE(Hit({twice[0]}).allowed);
}

TEST_P(RateLimiterContractTest, RefundGivesCapacityBack) {
  const std::vector<Check> checks{MakeCheck("3/minute", "c")};
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Hit(checks).allowed);
  ASSERT_FALSE(Hit(checks).allowed);
  Give(checks, 2);
  Decision d = Hit(checks);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 1u);
  ASSERT_TRUE(Hit(checks).allowed);
  EXPECT_FALSE(Hit(checks).allowed);

  // Never below zero: refunding more than was taken leaves a full limit, not more.
  Give(checks, 100);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Hit(checks).allowed);
  EXPECT_FALSE(Hit(checks).allowed);

  // Refunding a key never seen, or nothing, is harmless.
  Give({MakeCheck("3/minute", "stranger")}, 1);
  Give(checks, 0);
  Give({}, 1);
  EXPECT_TRUE(Hit({MakeCheck("3/minute", "stranger")}).allowed);
}

TEST_P(RateLimiterContractTest, ChargeConsumesEvenWithoutRoom) {
  const std::vector<Check> checks{MakeCheck("10/minute", "c")};
  ASSERT_TRUE(Hit(checks, 4).allowed);
  Charge(checks, 9);  // 13 of 10: over the limit, which only Charge can do
  Decision d = Hit(checks);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.state.remaining, 0u);
  EXPECT_GT(d.retry_after, 0);
  Give(checks, 4);  // 9 left in use
  d = Hit(checks);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 0u);
  EXPECT_FALSE(Hit(checks).allowed);

  // A key never seen is created by a charge; several checks are all charged; zero is harmless.
  const std::vector<Check> pair{MakeCheck("3/minute", "fresh"), MakeCheck("5/hour", "fresh")};
  Charge(pair, 3);
  Charge(pair, 0);
  Charge({}, 1);
  d = Hit({pair[1]}, 2);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 0u);
  EXPECT_FALSE(Hit({pair[0]}).allowed);

  // The window still ends: capacity returns in full.
  clock_.Advance(200);
  d = Hit(checks);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 9u);
}

// Replicas stamp operations with their own clocks, so an acquire stamped a little earlier can
// reach Redis after one that opened a new window; it is counted in that window, and its refund
// (with its Decision::at) must find it there.
TEST_P(RateLimiterContractTest, RefundFindsAnAcquireThatArrivedOutOfOrder) {
  const std::vector<Check> checks{MakeCheck("10/minute", "c")};
  clock_.Set(kT0 + 30);
  ASSERT_TRUE(Hit(checks, 2).allowed);
  clock_.Set(kT0 + 29);
  Decision late = Hit(checks, 5);
  ASSERT_TRUE(late.allowed);
  EXPECT_GE(late.at, kT0 + 29);
  Give(checks, 5, late.at);
  clock_.Set(kT0 + 31);
  EXPECT_EQ(Hit(checks, 0).state.remaining, 8u);
}

TEST_P(RateLimiterContractTest, WindowsEndAndCapacityReturns) {
  const std::vector<Check> checks{MakeCheck("2/minute", "c")};
  ASSERT_TRUE(Hit(checks).allowed);
  ASSERT_TRUE(Hit(checks).allowed);
  ASSERT_FALSE(Hit(checks).allowed);
  clock_.Advance(200);  // past every window, and past the sliding counter's next one
  const Decision d = Hit(checks);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 1u);
}

// Four threads, each with its own io_context, race for one limit: exactly the amount passes.
TEST_P(RateLimiterContractTest, ConcurrentAcquiresAdmitExactlyTheAmount) {
  const std::vector<Check> checks{MakeCheck("150/minute", "shared")};
  std::atomic<int> allowed{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 100; ++i) {
        Result<Decision> d = AcquireOn(*limiter_, checks, 1);
        if (!d.ok()) {
          failed.fetch_add(1);
        } else if (d->allowed) {
          allowed.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(allowed.load(), 150);
}

TEST_P(RateLimiterContractTest, ConcurrentMultiCheckAcquiresAreAtomic) {
  // Two threads ask for global + route, two for global only. If a denied global+route request
  // took from the global limit, fewer than 120 requests would pass in total.
  const Check global = MakeCheck("120/minute", "global:c");
  const Check route = MakeCheck("100/minute", "route:c");
  std::atomic<int> allowed_both{0};
  std::atomic<int> allowed_global{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const std::vector<Check> checks =
          t < 2 ? std::vector<Check>{global, route} : std::vector<Check>{global};
      std::atomic<int>& counter = t < 2 ? allowed_both : allowed_global;
      for (int i = 0; i < 100; ++i) {
        Result<Decision> d = AcquireOn(*limiter_, checks, 1);
        if (d.ok() && d->allowed) counter.fetch_add(1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(allowed_both.load() + allowed_global.load(), 120);
  EXPECT_LE(allowed_both.load(), 100);
  EXPECT_FALSE(Hit({global}).allowed);
}

// Strategy-specific sequences, with the values `limits` would give, for every implementation.
class StrategySequenceTest : public ::testing::TestWithParam<Backend> {
 protected:
  RateLimiter& Use(Strategy strategy) {
    limiter_ = MakeLimiter(GetParam(), clock_, strategy);
    return *limiter_;
  }
  Decision Hit(const std::vector<Check>& checks, std::uint64_t cost = 1) {
    Result<Decision> result = AcquireOn(*limiter_, checks, cost);
    EXPECT_TRUE(result.ok()) << (result.ok() ? "" : result.error().message);
    return result.ok() ? *result : Decision{};
  }

  FakeClock clock_{kT0};
  std::unique_ptr<RateLimiter> limiter_;
};

INSTANTIATE_TEST_SUITE_P(AllLimiters, StrategySequenceTest,
                         ::testing::Values(Backend::kMemory, Backend::kRedis),
                         [](const ::testing::TestParamInfo<Backend>& param_info) {
                           return std::string(BackendName(param_info.param));
                         });

TEST_P(StrategySequenceTest, FixedWindowStartsAtFirstHitAndLastsOnePeriod) {
  Use(Strategy::kFixedWindow);
  clock_.Set(kT0 + 10);
  const std::vector<Check> checks{MakeCheck("3/minute", "c")};
  for (int i = 0; i < 3; ++i) {
    const Decision d = Hit(checks);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.state.reset_at, kT0 + 70);
    clock_.Advance(5);
  }
  clock_.Set(kT0 + 40);
  Decision d = Hit(checks);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, 30);
  EXPECT_EQ(d.state.reset_at, kT0 + 70);

  clock_.Set(kT0 + 70);
  d = Hit(checks);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 2u);
  EXPECT_EQ(d.state.reset_at, kT0 + 130);
}

TEST_P(StrategySequenceTest, MovingWindowHitsLeaveOneByOne) {
  Use(Strategy::kMovingWindow);
  const std::vector<Check> checks{MakeCheck("3/minute", "c")};
  for (int i = 0; i < 3; ++i) {
    const Decision d = Hit(checks);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.state.reset_at, kT0 + 60);
    clock_.Advance(10);
  }
  clock_.Set(kT0 + 30);
  Decision d = Hit(checks);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, 30);
  EXPECT_EQ(d.state.reset_at, kT0 + 60);

  clock_.Set(kT0 + 60);
  d = Hit(checks);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 0u);
  EXPECT_EQ(d.state.reset_at, kT0 + 70);
  d = Hit(checks);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, 10);
}

TEST_P(StrategySequenceTest, MovingWindowLargeCostWaitsForEnoughHitsToLeave) {
  Use(Strategy::kMovingWindow);
  const std::vector<Check> checks{MakeCheck("5/minute", "c")};
  ASSERT_TRUE(Hit(checks, 1).allowed);
  clock_.Set(kT0 + 10);
  ASSERT_TRUE(Hit(checks, 2).allowed);
  clock_.Set(kT0 + 20);
  ASSERT_TRUE(Hit(checks, 2).allowed);
  clock_.Set(kT0 + 30);
  const Decision d = Hit(checks, 3);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, 40);
  clock_.Set(kT0 + 70);
  EXPECT_TRUE(Hit(checks, 3).allowed);
}

TEST_P(StrategySequenceTest, MovingWindowRefundDropsTheNewestHits) {
  RateLimiter& limiter = Use(Strategy::kMovingWindow);
  const std::vector<Check> checks{MakeCheck("2/minute", "c")};
  ASSERT_TRUE(Hit(checks).allowed);
  clock_.Set(kT0 + 10);
  ASSERT_TRUE(Hit(checks).allowed);
  ASSERT_TRUE(RefundOn(limiter, checks, 1, clock_.Now()).ok());
  clock_.Set(kT0 + 20);
  ASSERT_TRUE(Hit(checks).allowed);
  clock_.Set(kT0 + 30);
  Decision d = Hit(checks);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, 30);
  clock_.Set(kT0 + 60);
  d = Hit(checks);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.reset_at, kT0 + 80);
}

TEST_P(StrategySequenceTest, SlidingWindowCounterWeighsThePreviousWindow) {
  Use(Strategy::kSlidingWindowCounter);
  clock_.Set(kT0 + 30);
  const std::vector<Check> checks{MakeCheck("10/minute", "c")};
  for (int i = 0; i < 10; ++i) {
    const Decision d = Hit(checks);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.state.remaining, static_cast<std::uint64_t>(9 - i));
    EXPECT_EQ(d.state.reset_at, kT0 + 60);
  }
  Decision d = Hit(checks);
  EXPECT_FALSE(d.allowed);
  EXPECT_NEAR(d.retry_after, 30.001, 1e-6);

  clock_.Set(kT0 + 60);
  EXPECT_FALSE(Hit(checks).allowed);

  clock_.Set(kT0 + 60.5);
  d = Hit(checks);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 0u);
  EXPECT_EQ(d.state.reset_at, kT0 + 66);

  d = Hit(checks);
  EXPECT_FALSE(d.allowed);
  EXPECT_NEAR(d.retry_after, 5.501, 1e-6);
  clock_.Set(kT0 + 66.001);
  EXPECT_TRUE(Hit(checks).allowed);

  clock_.Set(kT0 + 180);
  d = Hit(checks);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 9u);
}

TEST_P(StrategySequenceTest, SlidingWindowCounterRefundDecrementsTheCurrentWindow) {
  RateLimiter& limiter = Use(Strategy::kSlidingWindowCounter);
  const std::vector<Check> checks{MakeCheck("2/minute", "c")};
  ASSERT_TRUE(Hit(checks).allowed);
  ASSERT_TRUE(Hit(checks).allowed);
  ASSERT_FALSE(Hit(checks).allowed);
  ASSERT_TRUE(RefundOn(limiter, checks, 1, clock_.Now()).ok());
  ASSERT_TRUE(Hit(checks).allowed);
  EXPECT_FALSE(Hit(checks).allowed);
}

// A refund that arrives after the window of its acquire ended gives nothing to the later window:
// otherwise a client whose reservation straddled a boundary could exceed the next window's limit.
TEST_P(StrategySequenceTest, FixedWindowRefundOfAnEndedWindowIsIgnored) {
  RateLimiter& limiter = Use(Strategy::kFixedWindow);
  const std::vector<Check> checks{MakeCheck("10/minute", "c")};
  Decision first = Hit(checks, 6);  // the window runs kT0 .. kT0 + 60
  ASSERT_TRUE(first.allowed);
  EXPECT_EQ(first.at, kT0);
  clock_.Set(kT0 + 30);
  ASSERT_TRUE(RefundOn(limiter, checks, 2, first.at).ok());  // same window: given back
  EXPECT_EQ(Hit(checks, 0).state.remaining, 6u);

  clock_.Set(kT0 + 61);
  ASSERT_TRUE(Hit(checks, 9).allowed);  // a new window
  ASSERT_TRUE(RefundOn(limiter, checks, 4, first.at).ok());
  Decision d = Hit(checks, 1);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 0u);
  EXPECT_FALSE(Hit(checks, 1).allowed);
}

TEST_P(StrategySequenceTest, SlidingWindowCounterRefundGoesToTheWindowThatCounted) {
  RateLimiter& limiter = Use(Strategy::kSlidingWindowCounter);
  const std::vector<Check> checks{MakeCheck("10/minute", "c")};
  clock_.Set(kT0 + 30);
  Decision first = Hit(checks, 8);
  ASSERT_TRUE(first.allowed);

  // Half-way through the next window the previous 8 weigh 4; refunding 4 of them leaves 2.
  clock_.Set(kT0 + 90);
  ASSERT_TRUE(RefundOn(limiter, checks, 4, first.at).ok());
  Decision d = Hit(checks, 0);
  EXPECT_EQ(d.state.remaining, 8u);

  // Two windows later the first acquire no longer counts anywhere: nothing to give back.
  Decision current = Hit(checks, 5);
  ASSERT_TRUE(current.allowed);
  clock_.Set(kT0 + 125);
  ASSERT_TRUE(Hit(checks, 1).allowed);
  ASSERT_TRUE(RefundOn(limiter, checks, 5, first.at).ok());
  d = Hit(checks, 0);
  // The previous window (kT0 + 60 .. 120) holds 5, weighted by 55/60 -> 4; the current one 1.
  EXPECT_EQ(d.state.remaining, 5u);
}

TEST_P(StrategySequenceTest, MovingWindowRefundTakesTheAcquiresOwnHit) {
  RateLimiter& limiter = Use(Strategy::kMovingWindow);
  const std::vector<Check> checks{MakeCheck("10/minute", "c")};
  Decision first = Hit(checks, 5);  // kT0
  ASSERT_TRUE(first.allowed);
  clock_.Set(kT0 + 20);
  ASSERT_TRUE(Hit(checks, 4).allowed);                       // kT0 + 20
  ASSERT_TRUE(RefundOn(limiter, checks, 3, first.at).ok());  // kT0's hit keeps 2

  // At kT0 + 60 the kT0 hit (now 2) leaves, the kT0 + 20 hit (4) stays.
  clock_.Set(kT0 + 60);
  Decision d = Hit(checks, 0);
  EXPECT_EQ(d.state.remaining, 6u);
  EXPECT_EQ(d.state.reset_at, kT0 + 80);

  // A refund for a hit that already left the window changes nothing.
  ASSERT_TRUE(RefundOn(limiter, checks, 2, first.at).ok());
  EXPECT_EQ(Hit(checks, 0).state.remaining, 6u);
}

// Both implementations decide identically, field for field, over a long pseudo-random sequence
// of multi-check acquires, refunds, charges and clock steps.
TEST(RateLimiterEquivalenceTest, RedisDecidesExactlyAsMemory) {
  for (Strategy strategy :
       {Strategy::kFixedWindow, Strategy::kMovingWindow, Strategy::kSlidingWindowCounter}) {
    FakeClock clock(kT0 + 7);
    MemoryRateLimiter memory(clock, strategy);
    RedisRateLimiter redis(clock, strategy, FreshRedisOptions(SharedRedis().port()));
    const std::vector<Check> pool{MakeCheck("5/minute", "a"), MakeCheck("3/10 seconds", "a"),
                                  MakeCheck("8/hour", "b"), MakeCheck("2/second", "c")};
    std::uint64_t seed = 12345;
    auto next = [&seed](std::uint64_t bound) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      return (seed >> 33) % bound;
    };
    int allowed = 0;
    int denied = 0;
    std::vector<double> acquired;  // times of allowed acquires
    for (int step = 0; step < 400; ++step) {
      clock.Advance(static_cast<double>(next(4000)) / 1000.0);
      std::vector<Check> checks;
      const std::uint64_t count = 1 + next(3);
      for (std::uint64_t i = 0; i < count; ++i) checks.push_back(pool[next(pool.size())]);
      const std::uint64_t cost = next(3);
      const std::uint64_t operation = next(10);
      if (operation == 0) {
        // Give back part of one of the recent acquires, often from a window that has moved on.
        const double at = acquired.empty()
                              ? clock.Now()
                              : acquired[acquired.size() - 1 -
                                         next(std::min<std::uint64_t>(acquired.size(), 20))];
        ASSERT_TRUE(RefundOn(redis, checks, cost, at).ok());
        memory.RefundNow(checks, cost, at);
        continue;
      }
      if (operation == 1) {
        ASSERT_TRUE(ChargeOn(redis, checks, cost + 1).ok());
        memory.ChargeNow(checks, cost + 1);
        continue;
      }
      const Decision expected = memory.AcquireNow(checks, cost);
      Result<Decision> got = AcquireOn(redis, checks, cost);
      ASSERT_TRUE(got.ok()) << got.error().message;
      SCOPED_TRACE(std::string(StrategyName(strategy)) + " step " + std::to_string(step));
      ASSERT_EQ(got->allowed, expected.allowed);
      ASSERT_EQ(got->deciding, expected.deciding);
      ASSERT_EQ(got->state.limit, expected.state.limit);
      ASSERT_EQ(got->state.remaining, expected.state.remaining);
      ASSERT_EQ(got->state.reset_at, expected.state.reset_at);
      ASSERT_EQ(got->retry_after, expected.retry_after);
      ++(expected.allowed ? allowed : denied);
      if (expected.allowed) acquired.push_back(expected.at);
      ASSERT_EQ(got->at, expected.at);
    }
    EXPECT_GT(allowed, 50) << StrategyName(strategy);
    EXPECT_GT(denied, 50) << StrategyName(strategy);
  }
}

}  // namespace
}  // namespace staple::ratelimit
