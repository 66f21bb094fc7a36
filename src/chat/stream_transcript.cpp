#include "chat/stream_transcript.h"

#include "chat/completion_scan.h"

namespace staple::chat {

std::optional<ChatAnswer> AnswerOf(std::string_view body) {
  auto fields = ScanCompletion(body);
  if (!fields) return std::nullopt;
  ChatAnswer answer;
  if (fields->message_content == CompletionFields::Content::kString) {
    answer.text = std::move(fields->message_text);
  }
  answer.model = std::move(fields->model);
  answer.prompt_tokens = fields->prompt_tokens;
  answer.completion_tokens = fields->completion_tokens;
  return answer;
}

std::string StreamTranscript::Add(std::string_view data) {
  if (done_) return {};
  if (data == "[DONE]") {
    done_ = true;
    return {};
  }
  auto chunk = ScanCompletion(data);
  if (!chunk) return {};
  if (chunk->error) {
    error_ = chunk->error_text.empty() ? std::string("the upstream reported an error")
                                       : std::move(chunk->error_text);
    return {};
  }
  if (!chunk->model.empty()) answer_.model = std::move(chunk->model);
  if (chunk->prompt_tokens) answer_.prompt_tokens = chunk->prompt_tokens;
  if (chunk->completion_tokens) answer_.completion_tokens = chunk->completion_tokens;
  if (!chunk->has_first_choice) return {};
  // Only choices[0] is recorded (a request with n > 1 still relays every choice).
  if (chunk->index && *chunk->index != 0) return {};
  if (chunk->finish_reason) finished_ = true;
  if (!chunk->delta_text) return {};
  answer_.text += *chunk->delta_text;
  return std::move(*chunk->delta_text);
}

}  // namespace staple::chat
