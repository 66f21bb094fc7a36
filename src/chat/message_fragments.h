#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "store/conversation_store.h"

namespace staple::chat {

// The serialized form ({"role":"...","content":"..."}) of stored messages, by row id, for the
// upstream request bodies of the seed endpoint. A continued conversation sends its whole history
// again with every prompt, and serializing it (nlohmann checks every byte's UTF-8) was half of
// the CPU time of such a request; a stored row never changes and its id is never reused, so its
// serialization can be kept. Bounded by `max_bytes` of serialized text; beyond it the entries not
// used for longest go first, as the second-chance (clock) approximation of least recently used
// finds them (the budget counts each entry's allocations, see CostOf). Thread-safe.
class MessageFragments {
 public:
  explicit MessageFragments(std::size_t max_bytes);
  MessageFragments(const MessageFragments&) = delete;
  MessageFragments& operator=(const MessageFragments&) = delete;

  // Appends the serialized messages of `messages` (joined by ',') to `out`, serializing only those
  // not kept yet.
  void Append(std::string& out, const store::History& messages, std::size_t first);

  // The serialized form of one message (not kept).
  static std::string Serialize(std::string_view role, std::string_view content);

  // Memory held, as the budget counts it: each kept fragment's CostOf.
  std::size_t bytes() const;

  // Whether the serialized form of the message with row id `id` is kept.
  bool Holds(std::int64_t id) const;

  // What keeping `json` costs: its allocation and the entry's map and list nodes.
  static std::size_t CostOf(const std::string& json);

 private:
  struct Entry {
    std::string json;
    std::list<std::int64_t>::iterator place;  // in order_
    bool used = false;                        // served since EvictOverBudget last passed it
  };

  // Drops entries until the budget holds. Called with mu_ held.
  void EvictOverBudget();

  const std::size_t max_bytes_;
  mutable std::mutex mu_;
  // Guarded by mu_.
  std::unordered_map<std::int64_t, Entry> entries_;
  std::list<std::int64_t> order_;  // most recently added or given a second chance first
  std::size_t bytes_ = 0;
};

}  // namespace staple::chat
