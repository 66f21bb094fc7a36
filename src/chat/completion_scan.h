#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace staple::chat {

// The few fields of a `chat.completion` body or `chat.completion.chunk` event that the gateway
// reads, taken in one pass over the text without building a JSON tree (no allocation per member:
// an answer is read on every request, and its tree used to be most of the allocations of a turn).
struct CompletionFields {
  enum class Content : std::uint8_t { kAbsent, kString, kNull, kOther };

  std::string model;                              // top-level "model" when a string, else ""
  std::optional<std::int64_t> prompt_tokens;      // usage.prompt_tokens when an integer
  std::optional<std::int64_t> completion_tokens;  // usage.completion_tokens when an integer

  // Of choices[0], when `choices` is an array whose first element is an object:
  bool has_first_choice = false;
  std::optional<std::int64_t> index;  // choices[0].index when an integer
  bool finish_reason = false;         // choices[0].finish_reason present and not null
  std::string finish_reason_text;     // its text when a string
  bool has_message = false;           // choices[0].message is an object
  // choices[0].message.content (message must be an object); kOther for any other JSON type.
  Content message_content = Content::kAbsent;
  std::string message_text;               // its text when kString
  bool message_tool_calls = false;        // choices[0].message.tool_calls present and not null
  bool message_refusal = false;           // choices[0].message.refusal present and not null
  std::optional<std::string> delta_text;  // choices[0].delta.content when a string

  // A top-level "error" that is not null, and its text: the string itself, or error.message when
  // that is a string ("" otherwise).
  bool error = false;
  std::string error_text;
};

// Integers beyond 64-bit signed (an answer can claim any count) saturate at its maximum.
// Reads `body`; std::nullopt when it is not valid JSON or not a JSON object. When a member
// appears twice, the last one counts (as in a parsed tree).
std::optional<CompletionFields> ScanCompletion(std::string_view body);

}  // namespace staple::chat
