#pragma once

#include <string>

#include "ratelimit/rate_limiter.h"

namespace staple::ratelimit {

// The Lua sources the Redis limiter runs: one Acquire, Refund and Charge script per strategy, each
// a direct transcription of MemoryRateLimiter's arithmetic (memory_rate_limiter.cpp, class
// Window) so that both limiters decide identically.
//
// Calling convention of all scripts: KEYS[i] is check i's storage key; ARGV[1] = now (Unix
// seconds, the limiter's clock), ARGV[2] = cost (Acquire) or amount (Refund, Charge), then three
// values per check: ARGV[3i] = limit (the amount clamped to 2^53), ARGV[3i+1] = period in seconds,
// ARGV[3i+2] = units charged to the same key by earlier checks of this call. Numbers are decimal
// text that round-trips doubles exactly. Refund takes one more, last argument: the time of the
// Acquire it gives back (Decision::at).
//
// Acquire returns {0, deciding (0-based), retry_after, used, reset_at} when denied and
// {1, 0, "0", used_1, reset_at_1, ..., used_n, reset_at_n, at} when allowed (at: Decision::at);
// `used` is an integer, reset_at and retry_after are text ("%.17g"). Refund and Charge return 1.
std::string AcquireScript(Strategy strategy);
std::string RefundScript(Strategy strategy);
std::string ChargeScript(Strategy strategy);

}  // namespace staple::ratelimit
