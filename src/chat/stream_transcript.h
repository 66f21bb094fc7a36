#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace staple::chat {

// What a completed Chat Completions answer says, for the conversation log.
struct ChatAnswer {
  std::string text;   // choices[0]'s content; "" when it had none (e.g. only tool calls)
  std::string model;  // the model that answered, "" when not reported
  std::optional<std::int64_t> prompt_tokens;
  std::optional<std::int64_t> completion_tokens;
  // Of a whole (non-streaming) answer, as the turn pipeline read it: choices[0].finish_reason
  // when a string, and whether choices[0].message is an object with nothing but text (no
  // tool_calls and no refusal that is not null), so that the fields above are all of it.
  std::string finish_reason;
  bool plain_message = false;
};

// The answer of a non-streaming `chat.completion` body; std::nullopt when the body is not a JSON
// object.
std::optional<ChatAnswer> AnswerOf(std::string_view body);

// Accumulates the `data` of the events of a streamed `chat.completion.chunk` answer. Not
// thread-safe.
class StreamTranscript {
 public:
  // Takes one event's data; returns the content it adds to choices[0] (often ""). Data after
  // "[DONE]" and data that is not JSON are ignored.
  std::string Add(std::string_view data);

  bool done() const { return done_; }          // "[DONE]" arrived
  bool finished() const { return finished_; }  // choices[0] carried a finish_reason
  // The message of an error event ({"error": ...}) the upstream sent instead of chunks.
  const std::optional<std::string>& error() const { return error_; }
  // Whether the answer arrived whole: [DONE] or a finish reason, and no error event.
  bool complete() const { return (done_ || finished_) && !error_; }
  const ChatAnswer& answer() const { return answer_; }

 private:
  ChatAnswer answer_;
  bool done_ = false;
  bool finished_ = false;
  std::optional<std::string> error_;
};

}  // namespace staple::chat
