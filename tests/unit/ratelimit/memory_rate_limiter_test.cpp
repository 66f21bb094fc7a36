#include "ratelimit/memory/memory_rate_limiter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <exception>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fake_clock.h"

namespace staple::ratelimit {
namespace {

using testing::FakeClock;

// A multiple of 3600, so sliding windows of a minute or an hour start exactly on it.
constexpr double kT0 = 1'699'999'200;

RateLimitItem Item(const char* text) {
  auto items = ParseLimits(text);
  EXPECT_TRUE(items.ok()) << text;
  return items.ok() ? (*items)[0] : RateLimitItem{};
}

Check MakeCheck(const char* limit, std::string key) { return Check{Item(limit), std::move(key)}; }

std::string Name(const ::testing::TestParamInfo<Strategy>& info) {
  switch (info.param) {
    case Strategy::kFixedWindow:
      return "FixedWindow";
    case Strategy::kMovingWindow:
      return "MovingWindow";
    case Strategy::kSlidingWindowCounter:
      return "SlidingWindowCounter";
  }
  return "Unknown";
}

// Behaviour every strategy shares.
class MemoryRateLimiterTest : public ::testing::TestWithParam<Strategy> {
 protected:
  Decision Hit(const std::vector<Check>& checks, std::uint64_t cost = 1) {
    return limiter_.AcquireNow(checks, cost);
  }

  FakeClock clock_{kT0 + 10};
  MemoryRateLimiter limiter_{clock_, GetParam()};
};

INSTANTIATE_TEST_SUITE_P(AllStrategies, MemoryRateLimiterTest,
                         ::testing::Values(Strategy::kFixedWindow, Strategy::kMovingWindow,
                                           Strategy::kSlidingWindowCounter),
                         Name);

TEST_P(MemoryRateLimiterTest, EmptyChecksAllow) {
  const Decision d = Hit({});
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.retry_after, 0);
}

TEST_P(MemoryRateLimiterTest, AdmitsTheAmountThenDenies) {
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
TEST_P(MemoryRateLimiterTest, RetryAfterIsWhenARetrySucceeds) {
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

TEST_P(MemoryRateLimiterTest, AllOrNothingAcrossChecks) {
  const std::vector<Check> both{MakeCheck("3/minute", "global:c"),
                                MakeCheck("2/minute", "route:/openai-completion:c")};
  Decision d = Hit(both);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.deciding, 1u);  // the route has the least left
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

TEST_P(MemoryRateLimiterTest, TiesOnRemainingGoToTheEarliestReset) {
  const std::vector<Check> checks{MakeCheck("5/hour", "a"), MakeCheck("5/second", "a")};
  const Decision d = Hit(checks);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 4u);
  EXPECT_EQ(d.deciding, 1u);
  EXPECT_LE(d.state.reset_at, clock_.Now() + 1);
}

TEST_P(MemoryRateLimiterTest, DenialNamesFirstFailingCheckAndLongestWait) {
  const std::vector<Check> checks{MakeCheck("1/minute", "a"), MakeCheck("1/hour", "b")};
  ASSERT_TRUE(Hit(checks).allowed);
  clock_.Advance(1);
  const Decision d = Hit(checks);
  ASSERT_FALSE(d.allowed);
  EXPECT_EQ(d.deciding, 0u);
  EXPECT_EQ(d.state.limit, 1u);
  // The hour limit is the one that really decides when a retry can pass.
  EXPECT_GT(d.retry_after, 60);
  EXPECT_LE(d.retry_after, 3600);
}

TEST_P(MemoryRateLimiterTest, CostAboveOne) {
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

  // A cost above the amount can never pass; retry_after is one period.
  d = Hit({MakeCheck("10/minute", "other")}, 11);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.state.remaining, 10u);
  EXPECT_EQ(d.retry_after, 60);
}

TEST_P(MemoryRateLimiterTest, ZeroCostPeeks) {
  const std::vector<Check> checks{MakeCheck("1/minute", "c")};
  EXPECT_TRUE(Hit(checks, 0).allowed);
  EXPECT_EQ(limiter_.EntryCount(), 0u);
  EXPECT_TRUE(Hit(checks, 1).allowed);
  const Decision d = Hit(checks, 0);
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 0u);
}

TEST_P(MemoryRateLimiterTest, AmountZeroBlocksEverything) {
  const std::vector<Check> checks{MakeCheck("0/minute", "c")};
  for (std::uint64_t cost : {0u, 1u, 5u}) {
    const Decision d = Hit(checks, cost);
    EXPECT_FALSE(d.allowed) << cost;
    EXPECT_EQ(d.state.limit, 0u);
    EXPECT_EQ(d.state.remaining, 0u);
    EXPECT_EQ(d.retry_after, 60);
  }
  EXPECT_EQ(limiter_.EntryCount(), 0u);
}

TEST_P(MemoryRateLimiterTest, LimitSaturatesTo64Bits) {
  const Decision d = Hit({MakeCheck("99999999999999999999/day", "c")}, 5);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.limit, std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(d.state.remaining, std::numeric_limits<std::uint64_t>::max() - 5);
}

TEST_P(MemoryRateLimiterTest, ChecksWithTheSameKeyAreChargedEach) {
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

TEST_P(MemoryRateLimiterTest, RefundGivesCapacityBack) {
  const std::vector<Check> checks{MakeCheck("3/minute", "c")};
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Hit(checks).allowed);
  ASSERT_FALSE(Hit(checks).allowed);
  limiter_.RefundNow(checks, 2, clock_.Now());
  Decision d = Hit(checks);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 1u);
  ASSERT_TRUE(Hit(checks).allowed);
  EXPECT_FALSE(Hit(checks).allowed);

  // Never below zero: refunding more than was taken leaves a full limit, not more.
  limiter_.RefundNow(checks, 100, clock_.Now());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Hit(checks).allowed);
  EXPECT_FALSE(Hit(checks).allowed);

  // Refunding a key never seen stores nothing.
  const std::size_t entries = limiter_.EntryCount();
  limiter_.RefundNow({MakeCheck("3/minute", "stranger")}, 1, clock_.Now());
  EXPECT_EQ(limiter_.EntryCount(), entries);
}

TEST_P(MemoryRateLimiterTest, ExpiredEntriesAreReclaimed) {
  constexpr int kClients = 10000;
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(Hit({MakeCheck("5/minute", "client:" + std::to_string(i))}).allowed);
  }
  EXPECT_EQ(limiter_.EntryCount(), static_cast<std::size_t>(kClients));

  // Past every period (and, for the sliding counter, past the window after it).
  clock_.Advance(200);
  const std::vector<Check> one{MakeCheck("1000/minute", "late")};
  for (std::size_t i = 0; i < MemoryRateLimiter::kShardCount; ++i) ASSERT_TRUE(Hit(one).allowed);
  EXPECT_LE(limiter_.EntryCount(), 1u);
}

TEST_P(MemoryRateLimiterTest, LiveEntriesSurviveSweeps) {
  constexpr int kClients = 1000;
  auto check = [](int i) { return std::vector<Check>{MakeCheck("1/minute", std::to_string(i))}; };
  for (int i = 0; i < kClients; ++i) ASSERT_TRUE(Hit(check(i)).allowed);
  clock_.Advance(30);
  EXPECT_EQ(limiter_.Sweep(), 0u);
  for (int i = 0; i < kClients; ++i) ASSERT_FALSE(Hit(check(i)).allowed) << i;
  EXPECT_EQ(limiter_.EntryCount(), static_cast<std::size_t>(kClients));

  clock_.Advance(200);
  EXPECT_EQ(limiter_.Sweep(), static_cast<std::size_t>(kClients));
  EXPECT_EQ(limiter_.EntryCount(), 0u);
}

TEST_P(MemoryRateLimiterTest, MemoryFollowsActiveClientsNotAllClients) {
  // 100 new clients a second for 10 minutes: 60000 clients, of whom at most ~2 minutes' worth
  // can still count against a limit.
  std::size_t peak = 0;
  int client = 0;
  std::vector<Check> checks{MakeCheck("1/minute", "")};
  for (int second = 0; second < 600; ++second) {
    for (int i = 0; i < 100; ++i) {
      checks[0].key = "client:" + std::to_string(client++);
      ASSERT_TRUE(Hit(checks).allowed);
    }
    peak = std::max(peak, limiter_.EntryCount());
    clock_.Advance(1);
  }
  EXPECT_LT(peak, 15000u);
}

TEST_P(MemoryRateLimiterTest, ConcurrentHitsAdmitExactlyTheAmount) {
  const std::vector<Check> checks{MakeCheck("1000/minute", "shared")};
  std::atomic<int> allowed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        if (limiter_.AcquireNow(checks, 1).allowed) allowed.fetch_add(1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(allowed.load(), 1000);
}

TEST_P(MemoryRateLimiterTest, ConcurrentMultiCheckAcquiresAreAtomic) {
  // Two threads ask for global + route, two for global only. If a denied global+route request
  // took from the global limit, fewer than 600 requests would pass in total.
  const Check global = MakeCheck("600/minute", "global:c");
  const Check route = MakeCheck("500/minute", "route:c");
  std::atomic<int> allowed_both{0};
  std::atomic<int> allowed_global{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const std::vector<Check> checks =
          t < 2 ? std::vector<Check>{global, route} : std::vector<Check>{global};
      std::atomic<int>& counter = t < 2 ? allowed_both : allowed_global;
      for (int i = 0; i < 1000; ++i) {
        if (limiter_.AcquireNow(checks, 1).allowed) counter.fetch_add(1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(allowed_both.load() + allowed_global.load(), 600);
  EXPECT_LE(allowed_both.load(), 500);
  EXPECT_FALSE(Hit({global}).allowed);
}

TEST_P(MemoryRateLimiterTest, CoroutineInterface) {
  net::io_context io;
  std::optional<Result<Decision>> first;
  std::optional<Result<Decision>> second;
  std::optional<Status> refunded;
  std::optional<Status> ping;
  net::co_spawn(
      io,
      [&]() -> net::awaitable<void> {
        std::vector<Check> checks{MakeCheck("1/minute", "c")};
        first = co_await limiter_.Acquire(checks, 1);
        const double acquired_at = (*first)->at;
        refunded = co_await limiter_.Refund(checks, 1, acquired_at);
        second = co_await limiter_.Acquire(checks, 1);
        ping = co_await limiter_.Ping();
      },
      [](std::exception_ptr e) {
        if (e) std::rethrow_exception(e);
      });
  io.run();
  ASSERT_TRUE(first && first->ok() && second && second->ok());
  EXPECT_TRUE((*first)->allowed);
  EXPECT_TRUE((*second)->allowed);  // the refund made room again
  EXPECT_TRUE(refunded && refunded->ok());
  EXPECT_TRUE(ping && ping->ok());
}

// Strategy-specific sequences, with the values `limits` would give.

TEST(FixedWindowTest, WindowStartsAtFirstHitAndLastsOnePeriod) {
  FakeClock clock(kT0 + 10);
  MemoryRateLimiter limiter(clock, Strategy::kFixedWindow);
  const std::vector<Check> checks{MakeCheck("3/minute", "c")};
  for (int i = 0; i < 3; ++i) {
    const Decision d = limiter.AcquireNow(checks, 1);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.state.reset_at, kT0 + 70);  // not clock-aligned: first hit + 60
    clock.Advance(5);
  }
  clock.Set(kT0 + 40);
  Decision d = limiter.AcquireNow(checks, 1);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, 30);
  EXPECT_EQ(d.state.reset_at, kT0 + 70);

  clock.Set(kT0 + 70);  // the window ends; the next hit opens a new one
  d = limiter.AcquireNow(checks, 1);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 2u);
  EXPECT_EQ(d.state.reset_at, kT0 + 130);
}

TEST(MovingWindowTest, HitsLeaveOneByOne) {
  FakeClock clock(kT0);
  MemoryRateLimiter limiter(clock, Strategy::kMovingWindow);
  const std::vector<Check> checks{MakeCheck("3/minute", "c")};
  for (int i = 0; i < 3; ++i) {
    const Decision d = limiter.AcquireNow(checks, 1);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.state.reset_at, kT0 + 60);  // the oldest hit leaves at kT0 + 60
    clock.Advance(10);
  }
  clock.Set(kT0 + 30);
  Decision d = limiter.AcquireNow(checks, 1);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, 30);
  EXPECT_EQ(d.state.reset_at, kT0 + 60);

  clock.Set(kT0 + 60);
  d = limiter.AcquireNow(checks, 1);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 0u);
  EXPECT_EQ(d.state.reset_at, kT0 + 70);
  d = limiter.AcquireNow(checks, 1);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, 10);
}

TEST(MovingWindowTest, LargeCostWaitsForEnoughHitsToLeave) {
  FakeClock clock(kT0);
  MemoryRateLimiter limiter(clock, Strategy::kMovingWindow);
  const std::vector<Check> checks{MakeCheck("5/minute", "c")};
  ASSERT_TRUE(limiter.AcquireNow(checks, 1).allowed);  // kT0
  clock.Set(kT0 + 10);
  ASSERT_TRUE(limiter.AcquireNow(checks, 2).allowed);
  clock.Set(kT0 + 20);
  ASSERT_TRUE(limiter.AcquireNow(checks, 2).allowed);
  clock.Set(kT0 + 30);
  // Cost 3 needs three units gone: the hit of kT0 (1) and the one of kT0 + 10 (2).
  const Decision d = limiter.AcquireNow(checks, 3);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, 40);
  clock.Set(kT0 + 70);
  EXPECT_TRUE(limiter.AcquireNow(checks, 3).allowed);
}

TEST(MovingWindowTest, RefundDropsTheNewestHits) {
  FakeClock clock(kT0);
  MemoryRateLimiter limiter(clock, Strategy::kMovingWindow);
  const std::vector<Check> checks{MakeCheck("2/minute", "c")};
  ASSERT_TRUE(limiter.AcquireNow(checks, 1).allowed);  // kT0
  clock.Set(kT0 + 10);
  ASSERT_TRUE(limiter.AcquireNow(checks, 1).allowed);  // kT0 + 10, refunded below
  limiter.RefundNow(checks, 1, clock.Now());
  clock.Set(kT0 + 20);
  ASSERT_TRUE(limiter.AcquireNow(checks, 1).allowed);  // kT0 + 20
  clock.Set(kT0 + 30);
  Decision d = limiter.AcquireNow(checks, 1);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, 30);  // the kT0 hit is the oldest still held
  clock.Set(kT0 + 60);
  d = limiter.AcquireNow(checks, 1);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.reset_at, kT0 + 80);
}

TEST(SlidingWindowCounterTest, WeighsThePreviousWindow) {
  FakeClock clock(kT0 + 30);
  MemoryRateLimiter limiter(clock, Strategy::kSlidingWindowCounter);
  const std::vector<Check> checks{MakeCheck("10/minute", "c")};
  for (int i = 0; i < 10; ++i) {
    const Decision d = limiter.AcquireNow(checks, 1);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.state.remaining, static_cast<std::uint64_t>(9 - i));
    EXPECT_EQ(d.state.reset_at, kT0 + 60);  // windows are aligned on the clock
  }
  Decision d = limiter.AcquireNow(checks, 1);
  EXPECT_FALSE(d.allowed);
  // Next window: floor(10 * (60 - t) / 60) + 1 <= 10 once t > 0.
  EXPECT_NEAR(d.retry_after, 30.001, 1e-6);

  clock.Set(kT0 + 60);  // exactly at the boundary the previous window still weighs 10
  EXPECT_FALSE(limiter.AcquireNow(checks, 1).allowed);

  clock.Set(kT0 + 60.5);  // floor(10 * 59.5 / 60) = 9
  d = limiter.AcquireNow(checks, 1);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 0u);
  // `limits`: the weighted previous count drops by one in fmod(59.5, 60 / 10) = 5.5 s.
  EXPECT_EQ(d.state.reset_at, kT0 + 66);

  d = limiter.AcquireNow(checks, 1);
  EXPECT_FALSE(d.allowed);
  // floor(10 * (60 - t) / 60) <= 8 once t > 6.
  EXPECT_NEAR(d.retry_after, 5.501, 1e-6);
  clock.Set(kT0 + 66.001);
  EXPECT_TRUE(limiter.AcquireNow(checks, 1).allowed);

  // Two windows later nothing weighs any more.
  clock.Set(kT0 + 180);
  d = limiter.AcquireNow(checks, 1);
  ASSERT_TRUE(d.allowed);
  EXPECT_EQ(d.state.remaining, 9u);
}

TEST(SlidingWindowCounterTest, RefundDecrementsTheCurrentWindow) {
  FakeClock clock(kT0);
  MemoryRateLimiter limiter(clock, Strategy::kSlidingWindowCounter);
  const std::vector<Check> checks{MakeCheck("2/minute", "c")};
  ASSERT_TRUE(limiter.AcquireNow(checks, 1).allowed);
  ASSERT_TRUE(limiter.AcquireNow(checks, 1).allowed);
  ASSERT_FALSE(limiter.AcquireNow(checks, 1).allowed);
  limiter.RefundNow(checks, 1, clock.Now());
  ASSERT_TRUE(limiter.AcquireNow(checks, 1).allowed);
  EXPECT_FALSE(limiter.AcquireNow(checks, 1).allowed);
}

}  // namespace
}  // namespace staple::ratelimit
