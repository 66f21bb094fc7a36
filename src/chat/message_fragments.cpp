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

void MessageFragments::Append(std::string& out, const std::vector<store::StoredMessage>& messages,
                              std::size_t first) {
  std::lock_guard lock(mu_);
  for (std::size_t i = first; i < messages.size(); ++i) {
    const auto& message = messages[i];
    if (i > first) out += ',';
    auto found = entries_.find(message.id);
    if (found != entries_.end()) {
      lru_.splice(lru_.begin(), lru_, found->second.lru);
      out += found->second.json;
      continue;
    }
    std::string json = Serialize(message.role, message.content);
    out += json;
    if (json.size() > max_bytes_) continue;
    bytes_ += json.size();
    lru_.push_front(message.id);
    entries_.emplace(message.id, Entry{std::move(json), lru_.begin()});
    while (bytes_ > max_bytes_) {
      auto oldest = entries_.find(lru_.back());
      bytes_ -= oldest->second.json.size();
      entries_.erase(oldest);
      lru_.pop_back();
    }
  }
}

std::size_t MessageFragments::bytes() const {
  std::lock_guard lock(mu_);
  return bytes_;
}

}  // namespace staple::chat
