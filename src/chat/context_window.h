#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "store/conversation_store.h"

namespace staple::chat {

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant"
  std::string content;
};

struct WindowLimits {
  std::size_t max_messages = 100;   // stored messages sent along; 0 = no limit
  std::size_t max_chars = 200'000;  // characters (code points) of those messages; 0 = no limit
};

// Number of Unicode code points in UTF-8 text (invalid bytes count as one each).
std::size_t CountChars(std::string_view utf8);

// The most recent whole turns of `history` (oldest first; a turn is a user message and the replies
// after it) that fit both limits, oldest first. Older turns are dropped first; a history that
// starts with a reply (its question was cut off) loses that reply.
std::vector<ChatMessage> HistoryWindow(const store::History& history, const WindowLimits& limits);
// Where HistoryWindow starts: the index of the first message it keeps (history.size() for none).
std::size_t WindowStart(const store::History& history, const WindowLimits& limits);

// The messages sent upstream for a new prompt: the optional system prompt, then the most recent
// whole turns of `history` (oldest first; a turn is a user message and the replies after it) that
// fit both limits, then the new prompt, which always goes. Older turns are dropped first; a
// history that starts with a reply (its question was cut off) loses that reply.
std::vector<ChatMessage> BuildContext(const store::History& history, const WindowLimits& limits,
                                      std::string_view system_prompt, std::string_view prompt);

}  // namespace staple::chat
