#include "ratelimit/memory/memory_rate_limiter.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <charconv>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>

#include "observe/log.h"

namespace staple::ratelimit {

namespace {

constexpr std::uint64_t kMaxU64 = std::numeric_limits<std::uint64_t>::max();
constexpr double kNever = -std::numeric_limits<double>::infinity();

// A shard is swept on time at most this often (seconds of the limiter's clock).
constexpr double kMinSweepInterval = 1.0;
// A shard is swept at once when it grew to twice its size after the last sweep, and at least this.
constexpr std::size_t kGrowthSweepMinSize = 256;
// See Window::RetryAfter.
constexpr double kSlidingBoundaryStep = 0.001;
// Seconds (of the limiter's clock) between two warnings that the cap forgot clients.
constexpr double kEvictionWarningInterval = 60.0;

std::uint64_t SaturateAmount(Amount amount) {
  return amount > kMaxU64 ? kMaxU64 : static_cast<std::uint64_t>(amount);
}

// `units` of cost recorded at time `at` in a moving-window log.
struct Hit {
  double at;
  std::uint64_t units;
};

// A moving window's hits, oldest first, starting at `head` (dropping from the front is an index
// increment; the vector is compacted once the dead prefix dominates).
struct MovingLog {
  std::vector<Hit> hits;
  std::size_t head = 0;
};

// The stored state of one key. Which fields matter depends on the strategy; one type keeps the
// map simple and costs a few unused words.
struct Entry {
  // From this instant on the entry holds no hit that counts, and a sweep may remove it.
  double expires_at = kNever;
  // The last operation that looked at the entry: the cap forgets the least recently seen first.
  double last_seen = kNever;
  // Sliding window: index of the current window. (A fixed window starts at expires_at - period:
  // not stored.)
  std::int64_t window = 0;
  // Fixed window: units in the window. Sliding: units in the current window. Moving: units in
  // the log.
  std::uint64_t count = 0;
  // Sliding window: units in the previous window.
  std::uint64_t previous = 0;
  // Moving window only, created by its first hit: a pointer keeps the other strategies' entries
  // (most of them: fixed window is the default) at 80 bytes of map node.
  std::unique_ptr<MovingLog> log;
};

const Entry kEmptyEntry{};

// The strategy arithmetic on one entry. Every function assumes Advance() ran at `now` first.
class Window {
 public:
  Window(Strategy strategy, double now, double period)
      : strategy_(strategy), now_(now), period_(period) {}

  // Brings the entry to `now`: ends an expired fixed window, rolls sliding windows, drops log
  // hits that left the moving window.
  void Advance(Entry& e) const {
    switch (strategy_) {
      case Strategy::kFixedWindow:
        if (now_ >= e.expires_at) e.count = 0;
        break;
      case Strategy::kMovingWindow: {
        if (!e.log) break;
        MovingLog& log = *e.log;
        while (log.head < log.hits.size() && log.hits[log.head].at + period_ <= now_) {
          e.count -= log.hits[log.head].units;
          ++log.head;
        }
        if (log.head == log.hits.size()) {
          log.hits.clear();
          log.head = 0;
        } else if (log.head >= 16 && log.head * 2 >= log.hits.size()) {
          log.hits.erase(log.hits.begin(),
                         log.hits.begin() + static_cast<std::ptrdiff_t>(log.head));
          log.head = 0;
        }
        break;
      }
      case Strategy::kSlidingWindowCounter: {
        // A clock that stepped back stays in the stored window rather than rewinding it.
        const std::int64_t index = WindowIndex();
        if (index == e.window + 1) {
          e.previous = e.count;
          e.count = 0;
          e.window = index;
        } else if (index > e.window + 1) {
          e.previous = 0;
          e.count = 0;
          e.window = index;
        }
        break;
      }
    }
  }

  // Units currently counted against the limit.
  std::uint64_t Used(const Entry& e) const {
    if (strategy_ != Strategy::kSlidingWindowCounter) return e.count;
    return WeightedPrevious(e) + e.count;
  }

  // When the entry next frees capacity (see the header); `now` when it holds nothing.
  double ResetAt(const Entry& e) const {
    switch (strategy_) {
      case Strategy::kFixedWindow:
        return now_ < e.expires_at ? e.expires_at : now_;
      case Strategy::kMovingWindow:
        return e.count > 0 && e.log ? e.log->hits[e.log->head].at + period_ : now_;
      case Strategy::kSlidingWindowCounter: {
        const double left = period_ - Elapsed(e);
        double reset = std::numeric_limits<double>::infinity();
        if (e.previous > 0) {
          reset = now_ + std::fmod(left, period_ / static_cast<double>(e.previous));
        }
        if (e.count > 0) reset = std::min(reset, now_ + left);
        return std::isinf(reset) ? now_ : reset;
      }
    }
    return now_;
  }

  // Seconds until `need` units fit under `limit`, for an entry where they do not fit now.
  double RetryAfter(const Entry& e, std::uint64_t limit, std::uint64_t need) const {
    if (limit == 0 || need > limit) return period_;
    const std::uint64_t room = limit - need;  // what may stay in use when the retry comes
    double wait = 0;
    switch (strategy_) {
      case Strategy::kFixedWindow:
        wait = e.expires_at - now_;
        break;
      case Strategy::kMovingWindow: {
        // Oldest hits leave first; wait for the one whose departure brings usage down to `room`.
        const std::uint64_t excess = e.count - room;
        std::uint64_t freed = 0;
        const std::size_t size = e.log ? e.log->hits.size() : 0;
        for (std::size_t i = e.log ? e.log->head : 0; i < size; ++i) {
          freed += e.log->hits[i].units;
          if (freed >= excess) {
            wait = e.log->hits[i].at + period_ - now_;
            break;
          }
        }
        break;
      }
      case Strategy::kSlidingWindowCounter: {
        const double elapsed = Elapsed(e);
        const double p = period_;
        if (e.count <= room) {
          // Within this window: wait until floor(previous * (p - t) / p) <= room - count, i.e.
          // previous * (p - t) / p < room - count + 1.
          if (e.previous == 0) return 0;
          const double allowed = static_cast<double>(room - e.count) + 1;
          wait = p - allowed * p / static_cast<double>(e.previous) - elapsed;
        } else {
          // This window's hits alone are too many: wait for the next window, where they become
          // the previous count and decay the same way.
          const double allowed = static_cast<double>(room) + 1;
          wait = (p - elapsed) + std::max(0.0, p - allowed * p / static_cast<double>(e.count));
        }
        // The floored count admits only strictly after that boundary: report the first
        // millisecond past it, so that a retry at now + retry_after succeeds.
        wait += kSlidingBoundaryStep;
        break;
      }
    }
    return std::max(0.0, wait);
  }

  // Charges `units`; returns the time the charge counts at: `now`, or later when the clock stepped
  // back (or, on Redis, another replica's later-stamped operation arrived first) and the units
  // went into the window or log position that operation had opened.
  double Consume(Entry& e, std::uint64_t units) const {
    switch (strategy_) {
      case Strategy::kFixedWindow:
        if (now_ >= e.expires_at) e.expires_at = now_ + period_;
        e.count += units;
        // Later than now only when the clock stepped back behind the window's start.
        return now_ + period_ < e.expires_at ? e.expires_at - period_ : now_;
      case Strategy::kMovingWindow: {
        // A clock that stepped back records at the newest time so the log stays ordered.
        if (!e.log) e.log = std::make_unique<MovingLog>();
        MovingLog& log = *e.log;
        const double at = log.hits.size() > log.head ? std::max(now_, log.hits.back().at) : now_;
        if (log.hits.size() > log.head && log.hits.back().at == at) {
          log.hits.back().units += units;
        } else {
          log.hits.push_back(Hit{at, units});
        }
        e.count += units;
        e.expires_at = at + period_;
        return at;
      }
      case Strategy::kSlidingWindowCounter:
        e.count += units;
        // The current window's hits weigh on the next window too.
        e.expires_at = static_cast<double>(e.window + 2) * period_;
        return std::max(now_, static_cast<double>(e.window) * period_);
    }
    return now_;
  }

  // Gives back `units` charged at `acquired_at`, from the window that counted them; nothing when
  // that window has ended (its hits no longer count anyway).
  void GiveBack(Entry& e, std::uint64_t units, double acquired_at) const {
    switch (strategy_) {
      case Strategy::kFixedWindow:
        // acquired_at < window start, compared as Consume computed it.
        if (now_ >= e.expires_at || acquired_at + period_ < e.expires_at) return;
        e.count -= std::min(e.count, units);
        return;
      case Strategy::kSlidingWindowCounter: {
        const auto index = static_cast<std::int64_t>(std::floor(acquired_at / period_));
        if (index == e.window) {
          e.count -= std::min(e.count, units);
        } else if (index == e.window - 1) {
          e.previous -= std::min(e.previous, units);
        }
        return;
      }
      case Strategy::kMovingWindow:
        break;
    }
    if (acquired_at + period_ <= now_ || !e.log) return;
    // The acquire's units are in the oldest hit recorded at or after it (a clock that stepped back
    // records at the newest time); later hits follow when that one holds fewer.
    MovingLog& log = *e.log;
    std::size_t i = log.head;
    while (i < log.hits.size() && log.hits[i].at < acquired_at) ++i;
    std::size_t kept = i;
    for (; i < log.hits.size(); ++i) {
      const std::uint64_t taken = std::min(log.hits[i].units, units);
      log.hits[i].units -= taken;
      e.count -= taken;
      units -= taken;
      if (log.hits[i].units > 0) log.hits[kept++] = log.hits[i];
    }
    log.hits.resize(kept);
    if (log.hits.size() == log.head) {
      log.hits.clear();
      log.head = 0;
    }
  }

 private:
  std::int64_t WindowIndex() const { return static_cast<std::int64_t>(std::floor(now_ / period_)); }

  // Seconds since the start of the entry's current sliding window, within [0, period].
  double Elapsed(const Entry& e) const {
    return std::clamp(now_ - static_cast<double>(e.window) * period_, 0.0, period_);
  }

  std::uint64_t WeightedPrevious(const Entry& e) const {
    if (e.previous == 0) return 0;
    const double weighted =
        std::floor(static_cast<double>(e.previous) * (period_ - Elapsed(e)) / period_);
    if (weighted >= static_cast<double>(e.previous)) return e.previous;
    return weighted <= 0 ? 0 : static_cast<std::uint64_t>(weighted);
  }

  Strategy strategy_;
  double now_;
  double period_;
};

// An entry's key: a 128-bit SipHash of its text under the limiter's random key. Fixed size, so
// the map node holds it inline (a key's text, 30-40 bytes, would be a heap block of its own);
// keyed and 128 bits wide, so two clients sharing a counter by a collision is out of reach even
// for someone who chooses key texts (about n^2 / 2^129 for n keys).
struct KeyDigest {
  std::uint64_t lo = 0;
  std::uint64_t hi = 0;
  bool operator==(const KeyDigest&) const = default;
};

struct DigestHash {
  std::size_t operator()(const KeyDigest& key) const noexcept {
    return static_cast<std::size_t>(key.lo);
  }
};

using EntryMap = std::unordered_map<KeyDigest, Entry, DigestHash>;

// SipHash-2-4 with a 128-bit output (Aumasson and Bernstein), of `text` under key (k0, k1).
class SipHash128 {
 public:
  static KeyDigest Of(std::string_view text, std::uint64_t k0, std::uint64_t k1) {
    SipHash128 h(k0, k1);
    const std::size_t blocks = text.size() / 8;
    for (std::size_t i = 0; i < blocks; ++i) h.Absorb(Load(text.data() + 8 * i, 8));
    std::uint64_t last = static_cast<std::uint64_t>(text.size() & 0xff) << 56;
    last |= Load(text.data() + 8 * blocks, text.size() % 8);
    h.Absorb(last);
    h.v2_ ^= 0xee;
    h.Rounds(4);
    KeyDigest digest;
    digest.lo = h.v0_ ^ h.v1_ ^ h.v2_ ^ h.v3_;
    h.v1_ ^= 0xdd;
    h.Rounds(4);
    digest.hi = h.v0_ ^ h.v1_ ^ h.v2_ ^ h.v3_;
    return digest;
  }

 private:
  SipHash128(std::uint64_t k0, std::uint64_t k1)
      : v0_(k0 ^ 0x736f6d6570736575ull),
        v1_(k1 ^ 0x646f72616e646f6dull ^ 0xee),
        v2_(k0 ^ 0x6c7967656e657261ull),
        v3_(k1 ^ 0x7465646279746573ull) {}

  // `n` (at most 8) bytes, little endian.
  static std::uint64_t Load(const char* p, std::size_t n) {
    std::uint64_t value = 0;
    for (std::size_t i = 0; i < n; ++i) {
      value |= static_cast<std::uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
    }
    return value;
  }

  void Absorb(std::uint64_t m) {
    v3_ ^= m;
    Rounds(2);
    v0_ ^= m;
  }

  void Rounds(int n) {
    for (int i = 0; i < n; ++i) {
      v0_ += v1_;
      v1_ = std::rotl(v1_, 13);
      v1_ ^= v0_;
      v0_ = std::rotl(v0_, 32);
      v2_ += v3_;
      v3_ = std::rotl(v3_, 16);
      v3_ ^= v2_;
      v0_ += v3_;
      v3_ = std::rotl(v3_, 21);
      v3_ ^= v0_;
      v2_ += v1_;
      v1_ = std::rotl(v1_, 17);
      v1_ ^= v2_;
      v2_ = std::rotl(v2_, 32);
    }
  }

  std::uint64_t v0_, v1_, v2_, v3_;
};

// The high half picks the shard, the low half the bucket inside the shard's map.
std::size_t ShardOf(const KeyDigest& key) {
  return static_cast<std::size_t>(key.hi % MemoryRateLimiter::kShardCount);
}

void AppendUnsigned(std::string& out, std::uint64_t value) {
  char buffer[24];
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value);
  out.append(buffer, end);
}

// check.key + "/" + item.Key(), written into a reused buffer.
void BuildKey(const Check& check, std::string& out) {
  out.clear();
  out.append(check.key);
  out.push_back('/');
  if (check.item.amount <= kMaxU64) {
    AppendUnsigned(out, static_cast<std::uint64_t>(check.item.amount));
  } else {
    out.append(AmountToString(check.item.amount));
  }
  out.push_back('/');
  AppendUnsigned(out, static_cast<std::uint64_t>(check.item.multiples));
  out.push_back('/');
  out.append(GranularityName(check.item.granularity));
}

// Per-thread buffers for one operation, reused so the hot path does not allocate once warm.
struct Scratch {
  std::string text;  // a key's text, before hashing
  std::vector<KeyDigest> keys;
  std::vector<std::size_t> shard_of;
  std::vector<std::size_t> shards;  // sorted, unique: the lock order
  std::vector<Entry*> entries;
  std::vector<std::uint64_t> charged_before;  // units of earlier checks on the same key
  std::vector<LimitState> states;

  void Prepare(const std::vector<Check>& checks, std::uint64_t k0, std::uint64_t k1) {
    const std::size_t n = checks.size();
    keys.resize(n);
    shard_of.resize(n);
    entries.assign(n, nullptr);
    charged_before.assign(n, 0);
    states.resize(n);
    shards.clear();
    for (std::size_t i = 0; i < n; ++i) {
      BuildKey(checks[i], text);
      keys[i] = SipHash128::Of(text, k0, k1);
      shard_of[i] = ShardOf(keys[i]);
      shards.push_back(shard_of[i]);
    }
    std::sort(shards.begin(), shards.end());
    shards.erase(std::unique(shards.begin(), shards.end()), shards.end());
  }
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

}  // namespace

struct alignas(64) MemoryRateLimiter::Shard {
  std::mutex mutex;
  // Guarded by mutex.
  EntryMap entries;
  double earliest_expiry = std::numeric_limits<double>::infinity();  // a lower bound
  double last_sweep = kNever;
  std::size_t size_after_sweep = 0;
  // When a time-based sweep is next due: written under mutex, read without it as a hint.
  std::atomic<double> next_sweep_at{std::numeric_limits<double>::infinity()};

  void NoteExpiry(double expires_at) {
    if (expires_at < earliest_expiry) {
      earliest_expiry = expires_at;
      next_sweep_at.store(std::max(earliest_expiry, last_sweep + kMinSweepInterval),
                          std::memory_order_relaxed);
    }
  }

  // Removes expired entries; requires mutex. Returns how many were removed.
  std::size_t SweepLocked(double now) {
    const std::size_t before = entries.size();
    earliest_expiry = std::numeric_limits<double>::infinity();
    for (auto it = entries.begin(); it != entries.end();) {
      if (it->second.expires_at <= now) {
        it = entries.erase(it);
      } else {
        earliest_expiry = std::min(earliest_expiry, it->second.expires_at);
        ++it;
      }
    }
    last_sweep = now;
    size_after_sweep = entries.size();
    next_sweep_at.store(std::max(earliest_expiry, now + kMinSweepInterval),
                        std::memory_order_relaxed);
    return before - entries.size();
  }
};

namespace {

// Locks a sorted list of shards in order and unlocks them all on scope exit.
template <typename Shards>
class ShardLocks {
 public:
  ShardLocks(Shards& shards, const std::vector<std::size_t>& order)
      : shards_(shards), order_(order) {
    for (std::size_t index : order_) shards_[index].mutex.lock();
  }
  ~ShardLocks() {
    for (auto it = order_.rbegin(); it != order_.rend(); ++it) shards_[*it].mutex.unlock();
  }
  ShardLocks(const ShardLocks&) = delete;
  ShardLocks& operator=(const ShardLocks&) = delete;

 private:
  Shards& shards_;
  const std::vector<std::size_t>& order_;
};

}  // namespace

MemoryRateLimiter::MemoryRateLimiter(const Clock& clock, Strategy strategy, std::size_t max_entries)
    : clock_(clock),
      strategy_(strategy),
      shard_cap_(max_entries == 0 ? 0 : (max_entries + kShardCount - 1) / kShardCount),
      shards_(std::make_unique<Shard[]>(kShardCount)) {
  std::random_device random;
  for (auto& word : hash_key_) {
    word = (static_cast<std::uint64_t>(random()) << 32) ^ static_cast<std::uint64_t>(random());
  }
}

void MemoryRateLimiter::EnforceCap(Shard& shard, double now) {
  if (shard_cap_ == 0 || shard.entries.size() <= shard_cap_) return;
  shard.SweepLocked(now);
  if (shard.entries.size() <= shard_cap_) return;
  // Forget the least recently seen eighth at once, so that a stream of new clients pays for this
  // scan once per cap/8 insertions rather than at each.
  const std::size_t excess = shard.entries.size() - shard_cap_;
  const std::size_t drop = std::min(shard.entries.size(), std::max(excess, shard_cap_ / 8));
  std::vector<double> seen;
  seen.reserve(shard.entries.size());
  for (const auto& [key, entry] : shard.entries) seen.push_back(entry.last_seen);
  std::nth_element(seen.begin(), seen.begin() + static_cast<std::ptrdiff_t>(drop - 1), seen.end());
  const double threshold = seen[drop - 1];
  std::size_t dropped = 0;
  for (auto it = shard.entries.begin(); it != shard.entries.end() && dropped < drop;) {
    if (it->second.last_seen <= threshold) {
      it = shard.entries.erase(it);
      ++dropped;
    } else {
      ++it;
    }
  }
  shard.size_after_sweep = shard.entries.size();
  evictions_.fetch_add(dropped, std::memory_order_relaxed);
  // One warning a minute at most: under a flood of new clients this runs continuously.
  double last = last_eviction_warning_.load(std::memory_order_relaxed);
  if (now - last >= kEvictionWarningInterval &&
      last_eviction_warning_.compare_exchange_strong(last, now, std::memory_order_relaxed)) {
    observe::Warn("rate limiter is full: forgetting the least recently seen clients",
                  {{"evicted_total", static_cast<std::int64_t>(Evictions())},
                   {"max_entries", static_cast<std::int64_t>(shard_cap_ * kShardCount)}});
  }
}

MemoryRateLimiter::~MemoryRateLimiter() = default;

Decision MemoryRateLimiter::AcquireNow(const std::vector<Check>& checks, std::uint64_t cost) {
  Decision decision;
  if (checks.empty()) {
    decision.at = clock_.Now();
    return decision;
  }
  Scratch& scratch = ThreadScratch();
  scratch.Prepare(checks, hash_key_[0], hash_key_[1]);
  const std::size_t n = checks.size();

  // A check listed twice (same key, same item) is one counter charged twice: each occurrence
  // must find room for what the earlier ones take.
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      if (scratch.shard_of[j] == scratch.shard_of[i] && scratch.keys[j] == scratch.keys[i]) {
        scratch.charged_before[i] += cost;
      }
    }
  }

  double now = 0;
  {
    ShardLocks locks(shards_, scratch.shards);
    now = clock_.Now();

    // Phase 1: look at every check without changing what it counts.
    for (std::size_t i = 0; i < n; ++i) {
      Shard& shard = shards_[scratch.shard_of[i]];
      const Window window(strategy_, now, static_cast<double>(checks[i].item.PeriodSeconds()));
      auto found = shard.entries.find(scratch.keys[i]);
      if (found != shard.entries.end()) {
        scratch.entries[i] = &found->second;
        found->second.last_seen = now;
        window.Advance(found->second);
      }
      const Entry& entry = scratch.entries[i] ? *scratch.entries[i] : kEmptyEntry;
      const std::uint64_t limit = SaturateAmount(checks[i].item.amount);
      const std::uint64_t used = window.Used(entry);
      const std::uint64_t before = scratch.charged_before[i];
      const bool fits =
          limit > 0 && before <= limit && cost <= limit - before && used <= limit - before - cost;
      if (fits) continue;
      const std::uint64_t need = before > kMaxU64 - cost ? kMaxU64 : before + cost;
      const double retry = window.RetryAfter(entry, limit, need);
      if (decision.allowed) {
        decision.allowed = false;
        decision.deciding = i;
        decision.state.limit = limit;
        decision.state.remaining = used < limit ? limit - used : 0;
        decision.state.reset_at = window.ResetAt(entry);
      }
      decision.retry_after = std::max(decision.retry_after, retry);
    }

    // Phase 2: every check has room, so charge each and report the tightest.
    decision.at = now;
    if (decision.allowed) {
      for (std::size_t i = 0; i < n; ++i) {
        Shard& shard = shards_[scratch.shard_of[i]];
        const Window window(strategy_, now, static_cast<double>(checks[i].item.PeriodSeconds()));
        if (cost > 0) {
          if (scratch.entries[i] == nullptr) {
            // Map references stay valid across rehashing, so earlier pointers remain usable.
            auto [it, inserted] = shard.entries.try_emplace(scratch.keys[i]);
            scratch.entries[i] = &it->second;
            it->second.last_seen = now;
            if (inserted) window.Advance(it->second);
          }
          decision.at = std::max(decision.at, window.Consume(*scratch.entries[i], cost));
          shard.NoteExpiry(scratch.entries[i]->expires_at);
        }
      }
      for (std::size_t i = 0; i < n; ++i) {
        const Window window(strategy_, now, static_cast<double>(checks[i].item.PeriodSeconds()));
        const Entry& entry = scratch.entries[i] ? *scratch.entries[i] : kEmptyEntry;
        const std::uint64_t limit = SaturateAmount(checks[i].item.amount);
        const std::uint64_t used = window.Used(entry);
        scratch.states[i] =
            LimitState{limit, used < limit ? limit - used : 0, window.ResetAt(entry)};
        const LimitState& best = scratch.states[decision.deciding];
        const LimitState& candidate = scratch.states[i];
        if (i == 0 || candidate.remaining < best.remaining ||
            (candidate.remaining == best.remaining && candidate.reset_at < best.reset_at)) {
          decision.deciding = i;
        }
      }
      decision.state = scratch.states[decision.deciding];
      decision.retry_after = 0;

      // A shard that doubled since its last sweep is swept now, keeping growth amortized O(1).
      for (std::size_t index : scratch.shards) {
        Shard& shard = shards_[index];
        if (shard.entries.size() >= std::max(kGrowthSweepMinSize, 2 * shard.size_after_sweep)) {
          shard.SweepLocked(now);
        }
        // Last: the decision above already read every entry this operation touched.
        EnforceCap(shard, now);
      }
    }
  }
  MaybeSweepOne(now);
  return decision;
}

void MemoryRateLimiter::RefundNow(const std::vector<Check>& checks, std::uint64_t amount,
                                  double acquired_at) {
  AdjustNow(checks, amount, /*charge=*/false, acquired_at);
}

void MemoryRateLimiter::ChargeNow(const std::vector<Check>& checks, std::uint64_t amount) {
  AdjustNow(checks, amount, /*charge=*/true, 0);
}

void MemoryRateLimiter::AdjustNow(const std::vector<Check>& checks, std::uint64_t amount,
                                  bool charge, double acquired_at) {
  if (checks.empty() || amount == 0) return;
  Scratch& scratch = ThreadScratch();
  scratch.Prepare(checks, hash_key_[0], hash_key_[1]);
  double now = 0;
  {
    ShardLocks locks(shards_, scratch.shards);
    now = clock_.Now();
    for (std::size_t i = 0; i < checks.size(); ++i) {
      Shard& shard = shards_[scratch.shard_of[i]];
      const Window window(strategy_, now, static_cast<double>(checks[i].item.PeriodSeconds()));
      if (charge) {
        auto [it, inserted] = shard.entries.try_emplace(scratch.keys[i]);
        it->second.last_seen = now;
        window.Advance(it->second);
        window.Consume(it->second, amount);
        shard.NoteExpiry(it->second.expires_at);
        continue;
      }
      // A refund never creates an entry.
      auto found = shard.entries.find(scratch.keys[i]);
      if (found == shard.entries.end()) continue;
      found->second.last_seen = now;
      window.Advance(found->second);
      window.GiveBack(found->second, amount, acquired_at);
    }
    if (charge) {
      for (std::size_t index : scratch.shards) EnforceCap(shards_[index], now);
    }
  }
  MaybeSweepOne(now);
}

std::size_t MemoryRateLimiter::EntryCount() const {
  std::size_t total = 0;
  for (std::size_t i = 0; i < kShardCount; ++i) {
    std::lock_guard lock(shards_[i].mutex);
    total += shards_[i].entries.size();
  }
  return total;
}

std::size_t MemoryRateLimiter::Sweep() {
  std::size_t removed = 0;
  for (std::size_t i = 0; i < kShardCount; ++i) {
    std::lock_guard lock(shards_[i].mutex);
    removed += shards_[i].SweepLocked(clock_.Now());
  }
  return removed;
}

void MemoryRateLimiter::MaybeSweepOne(double now) {
  // Round robin per thread: no shared counter to contend on, and every thread visits every shard.
  thread_local std::size_t cursor = 0;
  Shard& shard = shards_[cursor++ % kShardCount];
  if (now < shard.next_sweep_at.load(std::memory_order_relaxed)) return;
  std::lock_guard lock(shard.mutex);
  if (now >= shard.next_sweep_at.load(std::memory_order_relaxed)) shard.SweepLocked(now);
}

net::awaitable<Result<Decision>> MemoryRateLimiter::Acquire(std::vector<Check> checks,
                                                            std::uint64_t cost) {
  co_return AcquireNow(checks, cost);
}

net::awaitable<Status> MemoryRateLimiter::Refund(std::vector<Check> checks, std::uint64_t amount,
                                                 double acquired_at) {
  RefundNow(checks, amount, acquired_at);
  co_return Ok();
}

net::awaitable<Status> MemoryRateLimiter::Charge(std::vector<Check> checks, std::uint64_t amount) {
  ChargeNow(checks, amount);
  co_return Ok();
}

net::awaitable<Status> MemoryRateLimiter::Ping() { co_return Ok(); }

}  // namespace staple::ratelimit
