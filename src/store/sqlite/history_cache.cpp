#include "store/sqlite/history_cache.h"

#include <algorithm>
#include <iterator>
#include <memory>
#include <utility>

namespace staple::store {

HistoryCache::HistoryCache(std::size_t max_rows_per_conversation, std::size_t max_bytes)
    : max_rows_(std::max<std::size_t>(1, max_rows_per_conversation)), max_bytes_(max_bytes) {}

namespace {

// What the allocator hands out for a string's text: nothing for a short string (kept inside the
// object), else its capacity and terminator rounded up to glibc's 16-byte chunks, plus the
// chunk's 8-byte header.
std::size_t HeapBytes(const std::string& text) {
  if (text.capacity() <= 15) return 0;
  return (text.capacity() + 1 + 8 + 15) / 16 * 16;
}

// An entry's bookkeeping besides its rows: the map node (key, Entry, hash, link) and the LRU list
// node (links and a second copy of the key), each with its chunk header.
constexpr std::size_t kEntryOverhead = 160;

}  // namespace

std::size_t HistoryCache::BytesOf(const HistoryMessage& message) {
  // The budget is memory, so the strings' allocations count rather than their lengths; each row is
  // one make_shared allocation (the row and its control block) and the entry's pointer to it.
  constexpr std::size_t kSharedRow = sizeof(std::shared_ptr<const HistoryMessage>) + 16 + 8;
  return sizeof(HistoryMessage) + kSharedRow + HeapBytes(message.role) + HeapBytes(message.content);
}

std::optional<std::int64_t> HistoryCache::OldestId(const std::string& user_id) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(user_id);
  if (it == entries_.end()) return std::nullopt;
  return it->second.rows.front()->id;
}

std::optional<History> HistoryCache::Get(const std::string& user_id, std::int64_t oldest_id,
                                         std::int64_t count, std::int64_t max_id,
                                         std::size_t max_messages) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(user_id);
  if (it == entries_.end()) return std::nullopt;
  Entry& entry = it->second;
  if (entry.rows.front()->id != oldest_id) return std::nullopt;  // replaced meanwhile
  if (static_cast<std::int64_t>(entry.rows.size()) != count || entry.rows.back()->id != max_id) {
    Drop(it);
    return std::nullopt;
  }
  std::size_t n = entry.rows.size();
  if (max_messages != 0 && max_messages <= n) {
    n = max_messages;
  } else if (!entry.complete) {
    return std::nullopt;  // older rows are asked for than the entry holds
  }
  lru_.splice(lru_.begin(), lru_, entry.lru);
  return History(entry.rows.end() - static_cast<std::ptrdiff_t>(n), entry.rows.end());
}

void HistoryCache::Put(const std::string& user_id, History newest, bool complete) {
  if (newest.empty()) return;
  std::lock_guard lock(mu_);
  if (auto it = entries_.find(user_id); it != entries_.end()) Drop(it);
  Entry entry;
  entry.rows = std::move(newest);
  entry.complete = complete;
  Trim(entry);
  entry.bytes = kEntryOverhead + 2 * HeapBytes(user_id);
  for (const auto& message : entry.rows) entry.bytes += BytesOf(*message);
  if (entry.bytes > max_bytes_) return;
  lru_.push_front(user_id);
  entry.lru = lru_.begin();
  bytes_ += entry.bytes;
  entries_.emplace(user_id, std::move(entry));
  EvictOverBudget();
}

void HistoryCache::Append(const std::string& user_id, std::vector<HistoryMessage> rows) {
  if (rows.empty()) return;
  std::lock_guard lock(mu_);
  auto it = entries_.find(user_id);
  if (it == entries_.end()) return;
  Entry& entry = it->second;
  if (rows.front().id <= entry.rows.back()->id) {
    // Already part of the entry (it was filled after this commit): the entry cannot tell.
    Drop(it);
    return;
  }
  for (auto& message : rows) {
    entry.bytes += BytesOf(message);
    bytes_ += BytesOf(message);
    entry.rows.push_back(std::make_shared<const HistoryMessage>(std::move(message)));
  }
  const std::size_t before = entry.bytes;
  Trim(entry);
  bytes_ -= before - entry.bytes;
  if (entry.bytes > max_bytes_) {
    Drop(it);
    return;
  }
  lru_.splice(lru_.begin(), lru_, entry.lru);
  EvictOverBudget();
}

std::size_t HistoryCache::bytes() {
  std::lock_guard lock(mu_);
  return bytes_;
}

void HistoryCache::Erase(const std::string& user_id) {
  std::lock_guard lock(mu_);
  if (auto it = entries_.find(user_id); it != entries_.end()) Drop(it);
}

void HistoryCache::Trim(Entry& entry) {
  if (entry.rows.size() <= max_rows_) return;
  const auto extra = static_cast<std::ptrdiff_t>(entry.rows.size() - max_rows_);
  for (auto it = entry.rows.begin(); it != entry.rows.begin() + extra; ++it) {
    entry.bytes -= std::min(entry.bytes, BytesOf(**it));
  }
  entry.rows.erase(entry.rows.begin(), entry.rows.begin() + extra);
  entry.complete = false;
}

void HistoryCache::Drop(Map::iterator it) {
  bytes_ -= std::min(bytes_, it->second.bytes);
  lru_.erase(it->second.lru);
  entries_.erase(it);
}

void HistoryCache::EvictOverBudget() {
  while (bytes_ > max_bytes_ && !lru_.empty()) {
    auto it = entries_.find(lru_.back());
    if (it == entries_.end()) {
      lru_.pop_back();
      continue;
    }
    Drop(it);
  }
}

}  // namespace staple::store
