// What only the Redis limiter has: replicas sharing one Redis, outages, deadlines, script
// reloading, key expiry, the URL's database and credentials. Each test starts its own
// redis-server.

#include "ratelimit/redis/redis_rate_limiter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fake_clock.h"
#include "support/redis_server.h"

namespace staple::ratelimit {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;
using testing::FakeClock;

constexpr double kT0 = 1'699'999'200;

Check MakeCheck(const char* limit, std::string key) {
  auto items = ParseLimits(limit);
  EXPECT_TRUE(items.ok()) << limit;
  return Check{items.ok() ? (*items)[0] : RateLimitItem{}, std::move(key)};
}

Result<Decision> AcquireOnce(RateLimiter& limiter, std::vector<Check> checks) {
  net::io_context io;
  std::optional<Result<Decision>> out;
  net::co_spawn(
      io,
      [&]() -> net::awaitable<void> {
        std::vector<Check> copy = checks;
        Result<Decision> result = co_await limiter.Acquire(std::move(copy), 1);
        out.emplace(std::move(result));
      },
      [](std::exception_ptr e) {
        if (e) std::rethrow_exception(e);
      });
  io.run();
  return std::move(*out);
}

Status PingOnce(RateLimiter& limiter) {
  net::io_context io;
  std::optional<Status> out;
  net::co_spawn(
      io,
      [&]() -> net::awaitable<void> {
        Status result = co_await limiter.Ping();
        out.emplace(std::move(result));
      },
      [](std::exception_ptr e) {
        if (e) std::rethrow_exception(e);
      });
  io.run();
  return std::move(*out);
}

RedisOptions OptionsFor(const ::staple::testing::RedisServer& server) {
  RedisOptions options;
  options.port = server.port();
  options.timeout = milliseconds(300);
  options.backoff_initial = milliseconds(20);
  options.backoff_max = milliseconds(200);
  return options;
}

// A bound on calls that must fail fast rather than hang: far above the deadlines of OptionsFor,
// so that a slow (sanitized) build never trips it, and far below forever.
constexpr auto kNoHang = std::chrono::seconds(5);

// The options of a limiter that tries to reconnect on every call after a failure (no backoff),
// so a test sees every call after an outage reach for the server without waiting for time to
// pass.
RedisOptions NoBackoffOptionsFor(const ::staple::testing::RedisServer& server) {
  RedisOptions options = OptionsFor(server);
  options.backoff_initial = milliseconds(0);
  options.backoff_max = milliseconds(0);
  return options;
}

// Calls Acquire until one succeeds; false when none did within 30 s. For limiters without
// backoff (NoBackoffOptionsFor), where every call tries to reconnect.
bool EventuallyAcquires(RateLimiter& limiter, const std::vector<Check>& checks) {
  const auto deadline = steady_clock::now() + std::chrono::seconds(30);
  while (steady_clock::now() < deadline) {
    Result<Decision> d = AcquireOnce(limiter, checks);
    if (d.ok() && d->allowed) return true;
  }
  return false;
}

// Two replicas (two limiters, each on its own thread and io_context, each with its own
// connection) share one Redis: 30 concurrent requests against 10 per minute admit exactly 10.
TEST(RedisRateLimiterTest, ReplicasSharingRedisAdmitExactly) {
  ::staple::testing::RedisServer server;
  SystemClock clock;
  for (Strategy strategy :
       {Strategy::kFixedWindow, Strategy::kMovingWindow, Strategy::kSlidingWindowCounter}) {
    RedisRateLimiter first(clock, strategy, OptionsFor(server));
    RedisRateLimiter second(clock, strategy, OptionsFor(server));
    const std::vector<Check> checks{MakeCheck("10/minute", "route:/openai-completion:10.0.0.1")};
    std::atomic<int> allowed{0};
    std::atomic<int> denied{0};
    std::atomic<int> failed{0};
    auto replica = [&](RedisRateLimiter& limiter) {
      net::io_context io;
      for (int i = 0; i < 15; ++i) {
        net::co_spawn(
            io,
            [&]() -> net::awaitable<void> {
              std::vector<Check> copy = checks;
              Result<Decision> d = co_await limiter.Acquire(std::move(copy), 1);
              if (!d.ok()) {
                failed.fetch_add(1);
              } else if (d->allowed) {
                allowed.fetch_add(1);
              } else {
                denied.fetch_add(1);
              }
            },
            [](std::exception_ptr e) {
              if (e) std::rethrow_exception(e);
            });
      }
      io.run();
    };
    std::thread a([&] { replica(first); });
    std::thread b([&] { replica(second); });
    a.join();
    b.join();
    SCOPED_TRACE(StrategyName(strategy));
    EXPECT_EQ(failed.load(), 0);
    EXPECT_EQ(allowed.load(), 10);
    EXPECT_EQ(denied.load(), 20);
    // Both replicas now see the same exhausted limit.
    Result<Decision> one = AcquireOnce(first, checks);
    Result<Decision> two = AcquireOnce(second, checks);
    ASSERT_TRUE(one.ok() && two.ok());
    EXPECT_FALSE(one->allowed);
    EXPECT_FALSE(two->allowed);
    server.Query("FLUSHALL");
  }
}

// Redis goes away: calls fail with kUnavailable, never hang, both while the limiter waits out
// its backoff and when it tries to reconnect; Redis comes back on the same port: later calls
// reconnect and succeed.
TEST(RedisRateLimiterTest, OutageFailsFastAndReconnects) {
  ::staple::testing::RedisServer server;
  FakeClock clock(kT0);
  // `backing_off` waits a minute after a failure before it tries again, so its calls fail
  // without reaching for the server; `retrying` tries to reconnect on every call.
  RedisOptions backoff_options = OptionsFor(server);
  backoff_options.backoff_initial = std::chrono::minutes(1);
  backoff_options.backoff_max = std::chrono::minutes(1);
  RedisRateLimiter backing_off(clock, Strategy::kFixedWindow, backoff_options);
  RedisRateLimiter retrying(clock, Strategy::kFixedWindow, NoBackoffOptionsFor(server));
  const std::vector<Check> checks{MakeCheck("100/minute", "c")};
  for (RedisRateLimiter* limiter : {&backing_off, &retrying}) {
    ASSERT_TRUE(AcquireOnce(*limiter, checks).ok());
    ASSERT_TRUE(PingOnce(*limiter).ok());
  }

  server.Stop();
  for (RedisRateLimiter* limiter : {&backing_off, &retrying}) {
    for (int i = 0; i < 5; ++i) {
      const auto start = steady_clock::now();
      Result<Decision> d = AcquireOnce(*limiter, checks);
      const auto took = steady_clock::now() - start;
      ASSERT_FALSE(d.ok());
      EXPECT_EQ(d.error().kind, ErrorKind::kUnavailable);
      EXPECT_LT(took, kNoHang) << d.error().message;
      EXPECT_FALSE(PingOnce(*limiter).ok());
    }
  }

  server.Start();
  EXPECT_TRUE(EventuallyAcquires(retrying, checks));
  EXPECT_TRUE(PingOnce(retrying).ok());
}

// A server that stops answering (SIGSTOP) trips the deadline: kUnavailable "rate limit storage
// timed out" after about the timeout, then recovery once it answers again.
TEST(RedisRateLimiterTest, StalledServerTimesOut) {
  ::staple::testing::RedisServer server;
  FakeClock clock(kT0);
  const RedisOptions options = NoBackoffOptionsFor(server);
  RedisRateLimiter limiter(clock, Strategy::kMovingWindow, options);
  const std::vector<Check> checks{MakeCheck("100/minute", "c")};
  ASSERT_TRUE(AcquireOnce(limiter, checks).ok());

  server.Pause();
  const auto start = steady_clock::now();
  Result<Decision> d = AcquireOnce(limiter, checks);
  const auto took = steady_clock::now() - start;
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().kind, ErrorKind::kUnavailable);
  EXPECT_EQ(d.error().message, "rate limit storage timed out");
  EXPECT_GE(took, options.timeout - milliseconds(20));
  EXPECT_LT(took, kNoHang);

  server.Resume();
  EXPECT_TRUE(EventuallyAcquires(limiter, checks));
}

// SCRIPT FLUSH (or a Redis restart) makes EVALSHA answer NOSCRIPT: the call still succeeds
// through EVAL, and counting goes on.
TEST(RedisRateLimiterTest, ReloadsScriptsAfterNoscript) {
  ::staple::testing::RedisServer server;
  FakeClock clock(kT0);
  RedisRateLimiter limiter(clock, Strategy::kSlidingWindowCounter, OptionsFor(server));
  const std::vector<Check> checks{MakeCheck("5/minute", "c")};
  for (int round = 0; round < 3; ++round) {
    // Two calls: the first runs EVAL and loads the script, the second uses EVALSHA.
    for (int i = 0; i < 2; ++i) {
      Result<Decision> d = AcquireOnce(limiter, checks);
      ASSERT_TRUE(d.ok()) << d.error().message;
      EXPECT_TRUE(d->allowed);
    }
    ASSERT_EQ(server.Query("SCRIPT FLUSH").rfind("+OK", 0), 0u);
    clock.Advance(200);
  }
}

// Keys carry a TTL, so Redis reclaims idle clients' counters on its own.
TEST(RedisRateLimiterTest, KeysExpire) {
  ::staple::testing::RedisServer server;
  FakeClock clock(kT0);
  for (Strategy strategy :
       {Strategy::kFixedWindow, Strategy::kMovingWindow, Strategy::kSlidingWindowCounter}) {
    RedisRateLimiter limiter(clock, strategy, OptionsFor(server));
    ASSERT_TRUE(AcquireOnce(limiter, {MakeCheck("5/minute", "c")}).ok());
  }
  const std::string keys = server.Query("KEYS *");
  EXPECT_NE(keys.find("staple:rl:fw:c/5/1/minute"), std::string::npos) << keys;
  EXPECT_NE(keys.find("staple:rl:mw:c/5/1/minute"), std::string::npos) << keys;
  EXPECT_NE(keys.find("staple:rl:sw:c/5/1/minute"), std::string::npos) << keys;
  for (const char* key : {"staple:rl:fw:c/5/1/minute", "staple:rl:mw:c/5/1/minute",
                          "staple:rl:mw:c/5/1/minute#n", "staple:rl:sw:c/5/1/minute"}) {
    const std::string ttl = server.Query(std::string("PTTL ") + key);
    ASSERT_EQ(ttl.rfind(':', 0), 0u) << key << ": " << ttl;
    const long long ms = std::stoll(ttl.substr(1));
    EXPECT_GT(ms, 0) << key;
    // At most two periods (the sliding counter's weight) plus the one second margin.
    EXPECT_LE(ms, 121'000) << key;
  }
  // A denied or zero-cost call stores nothing.
  RedisRateLimiter limiter(clock, Strategy::kSlidingWindowCounter, OptionsFor(server));
  ASSERT_TRUE(AcquireOnce(limiter, {MakeCheck("0/minute", "nobody")}).ok());
  EXPECT_EQ(server.Query("EXISTS staple:rl:sw:nobody/0/1/minute"), ":0\r\n");
}

TEST(RedisRateLimiterTest, SelectsTheDatabaseOfTheUrl) {
  ::staple::testing::RedisServer server;
  FakeClock clock(kT0);
  auto options = ParseRedisUrl(server.url() + "/3");
  ASSERT_TRUE(options.ok());
  RedisRateLimiter limiter(clock, Strategy::kFixedWindow, *options);
  ASSERT_TRUE(AcquireOnce(limiter, {MakeCheck("5/minute", "db")}).ok());
  EXPECT_EQ(server.Query("EXISTS staple:rl:fw:db/5/1/minute"), ":0\r\n");
  EXPECT_NE(server.Query("INFO keyspace").find("db3:keys=1"), std::string::npos);
}

// A server that requires a password: the URL's credentials are sent with AUTH on every new
// connection; a wrong or missing password makes the limiter unavailable with Redis' reason, and
// the password never appears in an error.
TEST(RedisRateLimiterTest, AuthenticatesWithTheCredentialsOfTheUrl) {
  ::staple::testing::RedisServer server;  // its own: the password is changed
  ASSERT_EQ(server.Query("CONFIG SET requirepass s3cret@x"), "+OK\r\n");
  FakeClock clock(kT0);
  const std::string address = "127.0.0.1:" + std::to_string(server.port());

  for (const std::string& url :
       {"redis://:s3cret%40x@" + address + "/2", "redis://default:s3cret%40x@" + address}) {
    auto options = ParseRedisUrl(url);
    ASSERT_TRUE(options.ok()) << options.error().message;
    RedisRateLimiter limiter(clock, Strategy::kFixedWindow, *options);
    Result<Decision> d = AcquireOnce(limiter, {MakeCheck("5/minute", "auth")});
    ASSERT_TRUE(d.ok()) << url << ": " << d.error().message;
    EXPECT_TRUE(d->allowed);
    EXPECT_TRUE(PingOnce(limiter).ok());
  }

  auto wrong = ParseRedisUrl("redis://:hunter2@" + address);
  ASSERT_TRUE(wrong.ok());
  RedisRateLimiter refused(clock, Strategy::kFixedWindow, *wrong);
  Result<Decision> d = AcquireOnce(refused, {MakeCheck("5/minute", "auth")});
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().kind, ErrorKind::kUnavailable);
  EXPECT_NE(d.error().message.find("WRONGPASS"), std::string::npos) << d.error().message;
  EXPECT_EQ(d.error().message.find("hunter2"), std::string::npos) << d.error().message;

  RedisOptions none;
  none.port = server.port();
  RedisRateLimiter anonymous(clock, Strategy::kFixedWindow, none);
  Result<Decision> denied = AcquireOnce(anonymous, {MakeCheck("5/minute", "auth")});
  ASSERT_FALSE(denied.ok());
  EXPECT_NE(denied.error().message.find("NOAUTH"), std::string::npos) << denied.error().message;
}

TEST(RedisRateLimiterTest, NothingListensMeansUnavailableNotAHang) {
  FakeClock clock(kT0);
  RedisOptions options;
  options.port = ::staple::testing::FreePort();
  options.timeout = milliseconds(300);
  RedisRateLimiter limiter(clock, Strategy::kFixedWindow, options);
  const auto start = steady_clock::now();
  Result<Decision> d = AcquireOnce(limiter, {MakeCheck("5/minute", "c")});
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().kind, ErrorKind::kUnavailable);
  EXPECT_LT(steady_clock::now() - start, kNoHang);
  EXPECT_FALSE(PingOnce(limiter).ok());
}

}  // namespace
}  // namespace staple::ratelimit
