#include "chat/message_fragments.h"

#include <nlohmann/json.hpp>

namespace staple::chat {

MessageFragments::MessageFragments(std::size_t max_bytes) : max_bytes_(max_bytes) {}

std::string MessageFragments::Serialize(std::string_view role, std::string_view content) {
  nlohmann::json message = nlohmann::json::object();
  message["role"] = role;
  message["content"] = content;
  return message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void MessageFragments::Append(std::string& out, const store::History& messages, std::size_t first) {
  std::lock_guard lock(mu_);
  for (std::size_t i = first; i < messages.size(); ++i) {
    const store::HistoryMessage& message = *messages[i];
    if (i > first) out += ',';
    auto found = entries_.find(message.id);
    if (found != entries_.end()) {
      // Only marked: moving it to the front on every hit touched two more list nodes (cold memory
      // once many conversations are cached) for each message of the history.
      found->second.used = true;
      out += found->second.json;
      continue;
    }
    std::string json = Serialize(message.role, message.content);
    out += json;
    json.shrink_to_fit();
    if (CostOf(json) > max_bytes_) continue;
    bytes_ += CostOf(json);
    order_.push_front(message.id);
    entries_.emplace(message.id, Entry{std::move(json), order_.begin(), false});
    EvictOverBudget();
  }
}

void MessageFragments::EvictOverBudget() {
  // Second chance: from the oldest end, an entry used since it was last looked at here goes back
  // to the front unmarked, and the first unmarked one is dropped. Each pass over an entry clears
  // its mark, so this ends; a full cycle costs one step per entry.
  while (bytes_ > max_bytes_) {
    auto oldest = entries_.find(order_.back());
    if (oldest->second.used) {
      oldest->second.used = false;
      order_.splice(order_.begin(), order_, oldest->second.place);
      continue;
    }
    bytes_ -= CostOf(oldest->second.json);
    entries_.erase(oldest);
    order_.pop_back();
  }
}

bool MessageFragments::Holds(std::int64_t id) const {
  std::lock_guard lock(mu_);
  return entries_.count(id) != 0;
}

std::size_t MessageFragments::CostOf(const std::string& json) {
  // glibc chunks: 16-byte granularity plus an 8-byte header. The map node holds the id, the
  // string object, the list iterator, the cached hash and a link (about 80 bytes); the list node
  // two links and the id (32); plus a bucket pointer.
  constexpr std::size_t kNodes = 80 + 8 + 32 + 8 + 8;
  // Kept strings are shrunk to fit, so their size is their capacity.
  const std::size_t text = json.size() <= 15 ? 0 : (json.size() + 1 + 8 + 15) / 16 * 16;
  return kNodes + text;
}

std::size_t MessageFragments::bytes() const {
  std::lock_guard lock(mu_);
  return bytes_;
}

}  // namespace staple::chat
