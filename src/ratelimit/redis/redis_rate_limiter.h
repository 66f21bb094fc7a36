#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/net.h"
#include "common/result.h"
#include "ratelimit/clock.h"
#include "ratelimit/rate_limiter.h"
#include "ratelimit/redis_url.h"

namespace staple::ratelimit {

struct RedisReply;
class RedisConnection;

// Where the Redis limiter connects (the RedisAddress part, which a URL names) and how patient
// it is.
struct RedisOptions : RedisAddress {
  // Deadline of every command, from the moment the limiter's thread sends it. A command that
  // misses it fails with kUnavailable "rate limit storage timed out" and the connection is
  // dropped (a stalled server is treated like a lost one).
  std::chrono::milliseconds timeout{500};
  // After a failed connection attempt or a lost connection, calls fail fast with kUnavailable
  // until this much time passed; the wait doubles per failure up to backoff_max and resets once
  // a connection succeeds.
  std::chrono::milliseconds backoff_initial{50};
  std::chrono::milliseconds backoff_max{2000};
  // Prepended to every key. Replicas that must share limits use the same prefix.
  std::string key_prefix = "staple:rl:";
};

// ParseRedisAddress (see redis_url.h) into the connection fields of RedisOptions; the other
// fields keep their defaults.
Result<RedisOptions> ParseRedisUrl(std::string_view url);

// The shared limiter (STAPLE_RATELIMIT_STORAGE=redis://...): counters live in Redis, so N
// replicas using the same Redis and key prefix enforce one exact limit.
//
// Semantics: exactly MemoryRateLimiter's (see memory_rate_limiter.h) for every strategy: the same
// admission, all-or-nothing, duplicate-check, refund, charge, reset_at and retry_after rules. Each
// Acquire, Refund or Charge is one Lua script (one per strategy), so it is atomic with respect to
// every other operation of every replica. Differences, all outside realistic use:
// - Lua numbers are doubles: amounts and costs above 2^53 are clamped to 2^53 inside the
//   script (the reported limit/remaining still use the 64-bit saturated amount).
// - Keys that no longer hold a counting hit are reclaimed by Redis through a TTL instead of a
//   sweep; the TTL is measured by Redis' own clock (see Time below) with a one second margin.
//
// Time: the limiter reads its injected Clock once per operation and passes the value to the
// script as an argument; Redis' TIME is not used. So tests with a fake clock run against a real
// Redis, and replicas agree on windows as long as their clocks agree (NTP-synchronised hosts
// differ by milliseconds, which only moves window edges by that much). An operation that
// reaches Redis after a later-stamped one from another replica is handled as a clock that
// stepped back, as MemoryRateLimiter handles it.
//
// Scripts: loaded with SCRIPT LOAD and run with EVALSHA; until the SHA1 is known, and whenever
// Redis answers NOSCRIPT (a restart or SCRIPT FLUSH), the call runs the script with EVAL and
// reloads it in the background.
//
// Connection and threads: one connection (hiredis async, non-blocking) owned by a thread of the
// limiter's own, which runs the adapter between hiredis and Asio. Callers on any I/O thread post
// a command to that thread and are resumed on their own executor with the reply; commands from
// all callers are pipelined on the one connection, which is what Redis serves best. No caller
// thread ever blocks. The connection is made lazily on the first call and again on a later call
// after a loss (with backoff, see RedisOptions). Host names are resolved on the limiter's
// thread.
//
// Errors: every method fails with kUnavailable when Redis cannot be reached, times out, or
// answers with an error.
//
// Thread-safety: every method may be called from any thread. The limiter must outlive every
// call (destroy it after the coroutines using it have finished).
class RedisRateLimiter final : public RateLimiter {
 public:
  // `clock` must outlive the limiter. Starts the limiter's thread; does not connect yet.
  RedisRateLimiter(const Clock& clock, Strategy strategy, RedisOptions options);
  ~RedisRateLimiter() override;
  RedisRateLimiter(const RedisRateLimiter&) = delete;
  RedisRateLimiter& operator=(const RedisRateLimiter&) = delete;

  Strategy strategy() const { return strategy_; }

  net::awaitable<Result<Decision>> Acquire(std::vector<Check> checks, std::uint64_t cost) override;
  net::awaitable<Status> Refund(std::vector<Check> checks, std::uint64_t amount,
                                double acquired_at) override;
  net::awaitable<Status> Charge(std::vector<Check> checks, std::uint64_t amount) override;
  // PING.
  net::awaitable<Status> Ping() override;

 private:
  enum ScriptId { kAcquireScript = 0, kRefundScript = 1, kChargeScript = 2, kScriptCount = 3 };

  // Sends one command on the limiter's thread and resumes the caller with the reply.
  net::awaitable<Result<RedisReply>> Command(std::vector<std::string> argv);
  // EVALSHA, or EVAL plus a background SCRIPT LOAD when the SHA1 is unknown or was forgotten.
  net::awaitable<Result<RedisReply>> RunScript(ScriptId id, std::vector<std::string> keys,
                                               std::vector<std::string> args);
  // Refund or Charge: runs script `id` over the checks with `amount` (and, for Refund, the time
  // of the Acquire given back); a reply of 1 is success.
  net::awaitable<Status> Adjust(ScriptId id, std::vector<Check> checks, std::uint64_t amount,
                                std::optional<double> acquired_at);
  std::string StorageKey(const Check& check) const;

  // Constant after construction.
  const Clock& clock_;
  const Strategy strategy_;
  const RedisOptions options_;
  const std::string scripts_[kScriptCount];
  // Owned by the limiter's thread: the connection is used only there.
  net::io_context io_;
  std::unique_ptr<RedisConnection> connection_;
  // The SHA1s reported by SCRIPT LOAD (empty until known); guarded by sha_mutex_.
  struct ShaCache;
  std::unique_ptr<ShaCache> shas_;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_;
  std::thread thread_;
};

}  // namespace staple::ratelimit
