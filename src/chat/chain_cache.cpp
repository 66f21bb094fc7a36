#include "chat/chain_cache.h"

#include <utility>

namespace staple::chat {
namespace {

// libstdc++ keeps strings of up to 15 characters inside the object.
constexpr std::size_t kInlineChars = 15;
// An unordered_map node and a list node with their allocator headers, and the entry's control
// block (make_shared) beyond the StoredContext itself.
constexpr std::size_t kEntryOverhead = 160;

std::size_t HeapBytes(const std::string& text) {
  return text.capacity() > kInlineChars ? text.capacity() + 1 : 0;
}

}  // namespace

ChainCache::ChainCache(std::size_t max_bytes, std::chrono::milliseconds check_interval, Clock now)
    : max_bytes_(max_bytes), check_interval_(check_interval), now_(std::move(now)) {}

ChainCache::Freshness ChainCache::Check() {
  const auto now = now_();
  std::lock_guard lock(mutex_);
  if (epoch_ && now - checked_at_ < check_interval_) return Freshness::kFresh;
  if (checking_) return Freshness::kChecking;
  checking_ = true;
  check_started_ = now;
  return Freshness::kCheckNow;
}

void ChainCache::EpochRead(std::optional<std::int64_t> epoch) {
  std::lock_guard lock(mutex_);
  checking_ = false;
  // A failed read, the first read (entries may predate it: Put refuses them, but say so once
  // more) and a changed epoch all start over.
  if (!epoch || !epoch_ || *epoch != *epoch_) ForgetLocked();
  epoch_ = epoch;
  if (epoch) checked_at_ = check_started_;
}

std::uint64_t ChainCache::generation() const {
  std::lock_guard lock(mutex_);
  return generation_;
}

ChainCache::Chain ChainCache::Find(const std::string& owner, const std::string& id) {
  const std::string key = Key(owner, id);
  std::lock_guard lock(mutex_);
  auto found = entries_.find(key);
  if (found == entries_.end()) {
    misses_.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  hits_.fetch_add(1, std::memory_order_relaxed);
  lru_.splice(lru_.begin(), lru_, found->second.lru);
  return found->second.chain;
}

void ChainCache::Put(const std::string& owner, const std::string& id, std::uint64_t generation,
                     Chain chain) {
  if (!chain) return;
  std::string key = Key(owner, id);
  const std::size_t bytes = BytesOf(key, *chain);
  if (bytes > max_bytes_ / 8) return;
  std::lock_guard lock(mutex_);
  if (generation != generation_ || !epoch_) return;
  if (auto old = entries_.find(key); old != entries_.end()) {
    // Response ids are new for every response: only a repeated Put lands here.
    bytes_ -= old->second.bytes;
    lru_.erase(old->second.lru);
    entries_.erase(old);
  }
  while (bytes_ + bytes > max_bytes_ && !lru_.empty()) {
    auto oldest = entries_.find(lru_.back());
    bytes_ -= oldest->second.bytes;
    entries_.erase(oldest);
    lru_.pop_back();
  }
  lru_.push_front(key);
  entries_.emplace(std::move(key), Entry{std::move(chain), bytes, lru_.begin()});
  bytes_ += bytes;
}

void ChainCache::Forget() {
  std::lock_guard lock(mutex_);
  ForgetLocked();
}

std::size_t ChainCache::bytes() const {
  std::lock_guard lock(mutex_);
  return bytes_;
}

void ChainCache::ForgetLocked() {
  ++generation_;
  entries_.clear();
  lru_.clear();
  bytes_ = 0;
}

std::string ChainCache::Key(const std::string& owner, const std::string& id) {
  // The owner's length first: no two (owner, id) pairs make the same key.
  std::string key = std::to_string(owner.size());
  key += ':';
  key += owner;
  key += id;
  return key;
}

std::size_t ChainCache::BytesOf(const std::string& key, const responses::StoredContext& chain) {
  // The key is held twice: in the map and in the LRU list.
  std::size_t bytes = kEntryOverhead + sizeof(responses::StoredContext) + 2 * HeapBytes(key) +
                      chain.items.capacity() * sizeof(responses::ContextItem);
  for (const responses::ContextItem& item : chain.items) {
    bytes += HeapBytes(item.role) + HeapBytes(item.chat_json);
  }
  return bytes;
}

}  // namespace staple::chat
