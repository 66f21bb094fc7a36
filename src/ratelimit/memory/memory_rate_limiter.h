#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "common/net.h"
#include "common/result.h"
#include "ratelimit/clock.h"
#include "ratelimit/rate_limiter.h"

namespace staple::ratelimit {

// The in-process limiter (STAPLE_RATELIMIT_STORAGE=memory://, the default): counters live in this
// process only, so each replica enforces its own limits.
//
// Strategies follow the `limits` library's in-memory storage:
// - Fixed window: a key's window starts at its first hit and lasts one period; it admits while
//   hits in the window + cost <= amount. reset_at = window start + period.
// - Moving window: a log of hit times; admits while hits in the last period + cost <= amount.
//   reset_at = oldest hit still in the window + period.
// - Sliding window counter (`limits` 4.1+): windows aligned on multiples of the period since the
//   epoch; weighted = floor(previous * (period - elapsed_in_current) / period) + current, and it
//   admits while weighted + cost <= amount. reset_at is `limits`' estimate: the earlier of the
//   moment the weighted previous count next drops by one and the end of the current window.
//
// Where Staple differs, and why:
// - All or nothing (the RateLimiter contract): a denied Acquire consumes nothing. `limits`' fixed
//   window counts denied hits too, and Flask-Limiter hits limits one by one, so a request denied
//   by its second limit has already used the first; here a client that is over one limit does not
//   also drain the others.
// - A hit belongs to the moving window during [t, t + period); `limits` still counts it at exactly
//   t + period. So reset_at is an instant at which capacity really is free again. reset_at is
//   not truncated to whole seconds (the HTTP layer rounds).
// - The moving-window log stores (time, count) pairs instead of one entry per unit, so a cost of
//   thousands of tokens is one entry.
// - retry_after is the longest wait among all checks that lack room (the header contract: a retry
//   before then cannot succeed), not only the first failing check's; absent other traffic a
//   retry at now + retry_after succeeds. (The sliding window counter floors its weighted count and
//   admits only strictly after the exact boundary, so its retry_after is 1 ms past it.)
// - A check that can never admit `cost` (amount 0, or cost > amount) reports retry_after = its
//   period: a finite Retry-After, and retrying sooner gains nothing.
// - When no hit is held for a key, reset_at is now (as `limits` reports for an empty key).
// - Two checks with the same key and item in one Acquire are the same counter and are charged
//   once per check, as Flask-Limiter charges them; each must have room for all of its charges.
// - Refund takes the units back from the window that counted them at `acquired_at`: the fixed
//   window only while that window lasts; the sliding window counter from the current or the
//   previous window's count (not below 0); the moving window from the oldest hit recorded at or
//   after `acquired_at` while it is still in the window. Units whose window has ended are not
//   given back to a later window (that would let a client exceed the later window's limit).
// - Charge consumes like an admitted Acquire, with no room check; a check listed twice is charged
//   twice.
//
// Memory: entries are keyed by a 128-bit keyed hash (SipHash, random key per limiter) of
// check.key + "/" + item.Key(), in kShardCount shards. An entry whose hits have all expired is
// reclaimed by a sweep of its shard; each operation offers one shard
// (round robin per thread) a sweep when the clock passed that shard's earliest expiry and its last
// sweep is at least a second old, and a shard that doubled in size since its last sweep is swept at
// once. So memory follows the clients active within the longest period, not every client ever
// seen.
//
// Cap: with `max_entries` > 0, each shard keeps at most max_entries / kShardCount entries (rounded
// up). An operation that leaves a shard over its cap first sweeps the shard's expired entries; if
// it is still over, it forgets the least recently seen eighth of the shard (seen = looked at by any
// operation, denied ones included), counting them in Evictions(). Such a client starts again with
// an empty counter, so a client that many new clients push out gets a fresh allowance; but a
// client that keeps sending (the one a limit matters for) stays recently seen and keeps its count,
// and refusing new clients instead would let anyone with enough addresses lock every newcomer
// out. The cap bounds memory to about max_entries x the entry size (see bench/micro).
//
// Thread-safety: every method may be called from any thread. A multi-check operation locks the
// shards it touches in ascending order, so it is atomic with respect to every other operation.
// The clock is read once per operation, with those locks held.
class MemoryRateLimiter final : public RateLimiter {
 public:
  static constexpr std::size_t kShardCount = 64;

  // `clock` must outlive the limiter. `max_entries`: the cap (0 = none), see above.
  MemoryRateLimiter(const Clock& clock, Strategy strategy, std::size_t max_entries = 0);
  ~MemoryRateLimiter() override;
  MemoryRateLimiter(const MemoryRateLimiter&) = delete;
  MemoryRateLimiter& operator=(const MemoryRateLimiter&) = delete;

  Strategy strategy() const { return strategy_; }

  // The synchronous core of Acquire (same contract, never fails). Does not block on I/O; holds
  // shard locks for a few hash lookups.
  Decision AcquireNow(const std::vector<Check>& checks, std::uint64_t cost);

  // The synchronous core of Refund (same contract, never fails).
  void RefundNow(const std::vector<Check>& checks, std::uint64_t amount, double acquired_at);

  // The synchronous core of Charge (same contract, never fails).
  void ChargeNow(const std::vector<Check>& checks, std::uint64_t amount);

  // Number of stored keys, expired ones not yet reclaimed included.
  std::size_t EntryCount() const;

  // Entries forgotten at the cap while their window still counted, since construction.
  std::uint64_t Evictions() const { return evictions_.load(std::memory_order_relaxed); }

  // Reclaims every expired entry now, in all shards; returns how many were removed. Operations do
  // this incrementally on their own; a caller may also run it from a timer.
  std::size_t Sweep();

  // RateLimiter: complete immediately with the synchronous result.
  net::awaitable<Result<Decision>> Acquire(std::vector<Check> checks, std::uint64_t cost) override;
  net::awaitable<Status> Refund(std::vector<Check> checks, std::uint64_t amount,
                                double acquired_at) override;
  net::awaitable<Status> Charge(std::vector<Check> checks, std::uint64_t amount) override;
  net::awaitable<Status> Ping() override;

 private:
  struct Shard;

  // RefundNow (charge = false) or ChargeNow (charge = true).
  void AdjustNow(const std::vector<Check>& checks, std::uint64_t amount, bool charge,
                 double acquired_at);
  // Offers one shard a sweep when it is due; called with no shard lock held.
  void MaybeSweepOne(double now);
  // Brings a shard back under its cap (see above); requires the shard's lock.
  void EnforceCap(Shard& shard, double now);

  // Constant after construction.
  const Clock& clock_;
  const Strategy strategy_;
  const std::size_t shard_cap_;     // 0 = no cap
  std::uint64_t hash_key_[2] = {};  // random: the key of the entries' SipHash (set once)
  // Updated by any thread, without a lock.
  std::atomic<std::uint64_t> evictions_{0};
  std::atomic<double> last_eviction_warning_{-std::numeric_limits<double>::infinity()};
  // Each shard guards its own entries with its own mutex.
  std::unique_ptr<Shard[]> shards_;
};

}  // namespace staple::ratelimit
