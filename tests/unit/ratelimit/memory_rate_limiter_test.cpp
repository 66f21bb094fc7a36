#include "ratelimit/memory/memory_rate_limiter.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
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

// What only the in-memory limiter has: its entries (what is stored, and that expired ones are
// reclaimed) and its synchronous AcquireNow/RefundNow. Everything a RateLimiter promises, whatever
// its storage, is in rate_limiter_contract_test.cpp, which runs it against this limiter too.
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

// STAPLE_LIMITER_MAX_CLIENTS: a flood of new clients cannot grow the table past its cap.
TEST_P(MemoryRateLimiterTest, TheTableStaysWithinItsCap) {
  constexpr std::size_t kCap = 640;  // 10 per shard
  MemoryRateLimiter capped(clock_, GetParam(), kCap);
  for (int i = 0; i < 20'000; ++i) {
    clock_.Advance(0.001);
    ASSERT_TRUE(capped.AcquireNow({MakeCheck("5/day", "client-" + std::to_string(i))}, 1).allowed);
    ASSERT_LE(capped.EntryCount(), kCap) << "after client " << i;
  }
  EXPECT_GE(capped.Evictions(), 20'000u - kCap);
}

// Expired entries make room before any live one is forgotten.
TEST_P(MemoryRateLimiterTest, ExpiredEntriesGoBeforeLiveOnes) {
  constexpr std::size_t kCap = 640;
  MemoryRateLimiter capped(clock_, GetParam(), kCap);
  // 64 new clients a round (1 a shard on average; 10 in one shard has odds of about 1e-8), 768 in
  // all: more than the cap.
  for (int round = 0; round < 12; ++round) {
    for (int i = 0; i < 64; ++i) {
      const std::string key = "r" + std::to_string(round) + "-" + std::to_string(i);
      ASSERT_TRUE(capped.AcquireNow({MakeCheck("5/second", key)}, 1).allowed);
    }
    clock_.Advance(3);  // every window of this round has ended
  }
  EXPECT_EQ(capped.Evictions(), 0u);
}

// The client a limit matters for keeps sending, so it stays recently seen: new clients push out
// the idle entries, not its count.
TEST_P(MemoryRateLimiterTest, AClientThatKeepsSendingKeepsItsCount) {
  constexpr std::size_t kCap = 640;
  MemoryRateLimiter capped(clock_, GetParam(), kCap);
  ASSERT_TRUE(capped.AcquireNow({MakeCheck("1/day", "busy")}, 1).allowed);
  int fresh = 0;
  // 32 new clients a round: the busy client's shard (10 entries) would need 9 of them in one round
  // to push it out (odds of about 1e-8 a round).
  for (int round = 0; round < 200; ++round) {
    for (int i = 0; i < 32; ++i) {
      clock_.Advance(0.001);
      capped.AcquireNow({MakeCheck("1/day", "new-" + std::to_string(fresh++))}, 1);
    }
    clock_.Advance(0.001);
    EXPECT_FALSE(capped.AcquireNow({MakeCheck("1/day", "busy")}, 1).allowed)
        << "round " << round << ": the busy client's count was forgotten";
  }
  EXPECT_GT(capped.Evictions(), 0u);
}

TEST_P(MemoryRateLimiterTest, NoCapByDefault) {
  for (int i = 0; i < 5'000; ++i) {
    ASSERT_TRUE(Hit({MakeCheck("5/day", "client-" + std::to_string(i))}).allowed);
  }
  EXPECT_EQ(limiter_.EntryCount(), 5'000u);
  EXPECT_EQ(limiter_.Evictions(), 0u);
}

// A zero-cost peek and a denial store nothing, so they cannot grow the table.
TEST_P(MemoryRateLimiterTest, PeeksAndDenialsStoreNothing) {
  EXPECT_TRUE(Hit({MakeCheck("1/minute", "peek")}, 0).allowed);
  EXPECT_EQ(limiter_.EntryCount(), 0u);
  for (std::uint64_t cost : {0u, 1u, 5u}) {
    EXPECT_FALSE(Hit({MakeCheck("0/minute", "blocked")}, cost).allowed) << cost;
  }
  EXPECT_EQ(limiter_.EntryCount(), 0u);
  EXPECT_TRUE(Hit({MakeCheck("1/minute", "peek")}, 1).allowed);
  EXPECT_EQ(limiter_.EntryCount(), 1u);
}

// Refunding a key never seen creates no entry for it.
TEST_P(MemoryRateLimiterTest, RefundOfAnUnknownKeyStoresNothing) {
  ASSERT_TRUE(Hit({MakeCheck("3/minute", "c")}).allowed);
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

}  // namespace
}  // namespace staple::ratelimit
