#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "chat/responses.h"

namespace staple::chat {

// The chains of stored responses that this process recently answered, in memory: what continuing
// one (previous_response_id) needs — ConversationStore::ResponseChain's window as ContextItems —
// without a database read and without reading the items' JSON again.
//
// Why: a chained POST /v1/responses spent about a third of its CPU reading its chain (a read
// transaction, the chain's index seeks, each item's JSON). A client usually continues the response
// it was just given, from the same replica, so the chain is the one this process just built.
//
// Contract:
// - An entry is put only after its response committed, and only when nothing was forgotten
//   between the caller's generation() read (taken before it read the chain the entry extends, from
//   here or the store) and the Put.
// - Stored responses and items never change; they only disappear by a delete. Every delete that
//   removes any increments the store's state epoch (ConversationStore::StateEpoch) in its own
//   transaction. A delete made through this process calls Forget() at once. A delete made by
//   another process sharing the database is seen through the epoch: the cache is only used while
//   its last epoch check started less than `check_interval` ago (Check), and a changed epoch
//   forgets every entry. So a chain deleted elsewhere may still be continued here for at most
//   `check_interval` after the delete, like a revoked key (keys/keys.h).
// - Entries are keyed by owner and response id: an owner never sees another's.
// - Memory: entries count their ContextItems' allocations and bookkeeping; past `max_bytes` the
//   least recently used go. An entry over an eighth of the budget is not kept.
//
// Threads: every member may be called from any thread.
class ChainCache {
 public:
  using Chain = std::shared_ptr<const responses::StoredContext>;
  using Clock = std::function<std::chrono::steady_clock::time_point()>;

  explicit ChainCache(
      std::size_t max_bytes, std::chrono::milliseconds check_interval = std::chrono::seconds(1),
      Clock now = [] { return std::chrono::steady_clock::now(); });

  ChainCache(const ChainCache&) = delete;
  ChainCache& operator=(const ChainCache&) = delete;

  // Whether the entries may be used now.
  enum class Freshness {
    kFresh,     // yes
    kCheckNow,  // not until the caller has read StateEpoch and passed it to EpochRead
    kChecking,  // not now: another caller is checking (read the store instead)
  };
  Freshness Check();
  // The result of the StateEpoch read that Check asked for (an error forgets every entry, and the
  // next Check asks again).
  void EpochRead(std::optional<std::int64_t> epoch);

  // Incremented by every Forget (and every changed epoch).
  std::uint64_t generation() const;

  // The chain that ends with response `id` of `owner`, or null.
  Chain Find(const std::string& owner, const std::string& id);
  // Keeps `chain` as the chain that ends with response `id` of `owner`, unless entries were
  // forgotten since `generation` was read, or no epoch was read yet.
  void Put(const std::string& owner, const std::string& id, std::uint64_t generation, Chain chain);
  // Forgets every entry (this process deleted stored state).
  void Forget();

  std::size_t bytes() const;
  std::uint64_t hits() const { return hits_.load(std::memory_order_relaxed); }
  std::uint64_t misses() const { return misses_.load(std::memory_order_relaxed); }

 private:
  struct Entry {
    Chain chain;
    std::size_t bytes = 0;
    std::list<std::string>::iterator lru;
  };

  static std::string Key(const std::string& owner, const std::string& id);
  static std::size_t BytesOf(const std::string& key, const responses::StoredContext& chain);
  void ForgetLocked();

  // Constant after construction.
  const std::size_t max_bytes_;
  const std::chrono::milliseconds check_interval_;
  const Clock now_;

  // Guarded by mutex_.
  mutable std::mutex mutex_;
  std::unordered_map<std::string, Entry> entries_;
  std::list<std::string> lru_;  // most recently used first
  std::size_t bytes_ = 0;
  std::uint64_t generation_ = 0;
  std::optional<std::int64_t> epoch_;  // the last epoch read; none before the first
  std::chrono::steady_clock::time_point checked_at_{};  // when the last good check started
  bool checking_ = false;
  std::chrono::steady_clock::time_point check_started_{};

  // Counters, read without the lock.
  std::atomic<std::uint64_t> hits_{0};
  std::atomic<std::uint64_t> misses_{0};
};

}  // namespace staple::chat
