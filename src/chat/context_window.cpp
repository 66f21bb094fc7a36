#include "chat/context_window.h"

#include <utility>

namespace staple::chat {

std::size_t CountChars(std::string_view utf8) {
  std::size_t count = 0;
  for (char c : utf8) {
    if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++count;
  }
  return count;
}

namespace {

// Where the window starts under the message limit alone, and the bytes of the messages it keeps.
std::pair<std::size_t, std::size_t> MessageLimitedStart(const store::History& history,
                                                        std::size_t max_messages) {
  std::size_t first_kept = history.size();
  std::size_t bytes = 0;
  std::size_t turn_bytes = 0;
  for (std::size_t i = history.size(); i-- > 0;) {
    turn_bytes += history[i]->content.size();
    if (history[i]->role != "user") continue;  // a turn starts at a user message
    if (max_messages != 0 && history.size() - i > max_messages) break;
    bytes += turn_bytes;
    turn_bytes = 0;
    first_kept = i;
  }
  return {first_kept, bytes};
}

}  // namespace

std::size_t WindowStart(const store::History& history, const WindowLimits& limits) {
  // UTF-8 text has at most as many characters as bytes: when the messages the message limit keeps
  // are within the character limit as bytes, they are within it as characters, and no text needs
  // to be read (a history's rows are scattered in memory; counting their characters was a tenth
  // of a continued conversation's request).
  const auto [message_limited, bytes] = MessageLimitedStart(history, limits.max_messages);
  if (limits.max_chars == 0 || bytes <= limits.max_chars) return message_limited;

  // Walk turns from the newest back, keeping whole turns while both budgets hold.
  std::size_t first_kept = history.size();
  std::size_t messages = 0;
  std::size_t chars = 0;
  std::size_t turn_end = history.size();
  for (std::size_t i = history.size(); i-- > 0;) {
    if (history[i]->role != "user") continue;  // a turn starts at a user message
    std::size_t turn_messages = turn_end - i;
    std::size_t turn_chars = 0;
    for (std::size_t j = i; j < turn_end; ++j) turn_chars += CountChars(history[j]->content);
    if (limits.max_messages != 0 && messages + turn_messages > limits.max_messages) break;
    if (chars + turn_chars > limits.max_chars) break;
    messages += turn_messages;
    chars += turn_chars;
    first_kept = i;
    turn_end = i;
  }
  return first_kept;
}

std::vector<ChatMessage> HistoryWindow(const store::History& history, const WindowLimits& limits) {
  const std::size_t first_kept = WindowStart(history, limits);
  std::vector<ChatMessage> kept;
  kept.reserve(history.size() - first_kept);
  for (std::size_t i = first_kept; i < history.size(); ++i) {
    kept.push_back({history[i]->role, history[i]->content});
  }
  return kept;
}

std::vector<ChatMessage> BuildContext(const store::History& history, const WindowLimits& limits,
                                      std::string_view system_prompt, std::string_view prompt) {
  auto kept = HistoryWindow(history, limits);
  std::vector<ChatMessage> context;
  context.reserve(kept.size() + 2);
  if (!system_prompt.empty()) context.push_back({"system", std::string(system_prompt)});
  for (auto& message : kept) context.push_back(std::move(message));
  context.push_back({"user", std::string(prompt)});
  return context;
}

}  // namespace staple::chat
