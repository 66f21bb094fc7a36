#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/net.h"
#include "common/result.h"
#include "ratelimit/limit.h"

namespace staple::ratelimit {

enum class Strategy { kFixedWindow, kMovingWindow, kSlidingWindowCounter };

// "fixed-window" (default), "moving-window", "sliding-window-counter" (underscores accepted).
Result<Strategy> ParseStrategy(std::string_view text);
const char* StrategyName(Strategy s);

// One limit to enforce for one client in one scope. `key` names scope and client, e.g.
// "global:203.0.113.9" or "route:/openai-completion:203.0.113.9"; the storage adds the item's
// Key().
struct Check {
  RateLimitItem item;
  std::string key;
};

// The state of one check after a decision, for the X-RateLimit-* headers.
struct LimitState {
  std::uint64_t limit = 0;      // the item's amount, saturated to 64 bits
  std::uint64_t remaining = 0;  // what is left in the current window after this decision
  double reset_at = 0;          // Unix time (seconds) at which the window frees capacity
};

struct Decision {
  bool allowed = true;
  // When denied: the first check that had no room. When allowed: the check with the least
  // remaining capacity (ties: the earliest reset), which the headers report. Index into checks.
  std::size_t deciding = 0;
  LimitState state;        // of `deciding`
  double retry_after = 0;  // seconds until a retry can succeed; 0 when allowed
  // The limiter clock (Unix seconds) when it decided; when allowed, the latest time at which a
  // check counted the charge (later than the clock when it had stepped back). See Refund.
  double at = 0;
};

// Enforces limits. All methods are thread-safe and may be awaited from any I/O thread.
class RateLimiter {
 public:
  virtual ~RateLimiter() = default;

  // All or nothing: when every check has room for `cost`, consumes `cost` from each and allows;
  // otherwise consumes nothing and denies. An empty `checks` allows. Errors: kUnavailable when the
  // limiter's storage cannot be reached (the caller applies the fail-open/closed policy).
  virtual net::awaitable<Result<Decision>> Acquire(std::vector<Check> checks,
                                                   std::uint64_t cost) = 0;

  // Gives back `amount` of an earlier Acquire on the same checks, decided at `acquired_at` (its
  // Decision::at): token reconciliation when the real usage was lower than reserved. The units
  // come back to the window that counted them; when that window has ended, nothing happens (a
  // later window never receives capacity it did not count). Never drives a counter below zero.
  virtual net::awaitable<Status> Refund(std::vector<Check> checks, std::uint64_t amount,
                                        double acquired_at) = 0;

  // Consumes `amount` from each check whether or not there is room (token reconciliation when the
  // real usage was higher than reserved): usage may exceed the limit, and later Acquires then wait
  // until the window has freed enough. Counts as a hit at the current time, as Acquire would.
  virtual net::awaitable<Status> Charge(std::vector<Check> checks, std::uint64_t amount) = 0;

  // Whether the storage answers (for /readyz).
  virtual net::awaitable<Status> Ping() = 0;
};

}  // namespace staple::ratelimit
