#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "chat/context_window.h"
#include "common/result.h"

namespace staple::chat {

// Plain functions over a Chat Completions request body (no I/O).

// What the gateway reads from a POST /v1/chat/completions body. The body itself goes upstream
// as the client sent it, or, when history is added, rewritten from a tree that keeps its key
// order.
struct ChatBody {
  bool stream = false;  // "stream": true
  std::string model;    // "" when absent or not a string
  std::string prompt;   // text of the last user message, "" when there is none
  // max_completion_tokens (or else max_tokens) times n, when the body sets a non-negative integer
  std::optional<std::uint64_t> max_completion_tokens;
};

// Parses a request body: it must be a JSON object whose `messages` is an array. Anything else
// about the body is the upstream's to judge. Errors: kInvalidArgument with a message fit for a
// 400 answer.
Result<ChatBody> ParseChatBody(std::string_view body);

// The text of a message's `content`: the string itself, or the `text` of its parts of type "text"
// joined; "" for anything else.
std::string MessageText(const nlohmann::ordered_json& message);

// Inserts `history` into `messages` (a JSON array) after its leading "system" and "developer"
// messages and before everything else.
void InsertHistory(nlohmann::ordered_json& messages, const std::vector<ChatMessage>& history);

}  // namespace staple::chat
