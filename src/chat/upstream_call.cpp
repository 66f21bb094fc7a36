#include "chat/upstream_call.h"

#include <utility>

namespace staple::chat {

upstream::Request ChatCompletionsRequest(std::string body, std::string_view request_id,
                                         bool stream) {
  upstream::Request request;
  request.path = "/chat/completions";
  request.body = std::move(body);
  request.headers.emplace_back("X-Request-Id", std::string(request_id));
  if (stream) request.headers.emplace_back("Accept", "text/event-stream");
  // A non-streaming answer's first byte comes when the whole answer is generated.
  request.answer_at_once = !stream;
  return request;
}

Error UpstreamFailure(observe::Metrics& metrics, const Error& error, std::string_view api_key) {
  metrics.CountUpstreamError();
  metrics.CountFailedTurn();
  const auto kind = error.kind == ErrorKind::kTimeout ? ErrorKind::kTimeout : ErrorKind::kUpstream;
  // upstream::Client messages already name the upstream ("upstream request failed: ...").
  return MakeError(kind, ScrubSecret(error.message, api_key));
}

std::string ScrubSecret(std::string text, std::string_view secret) {
  if (secret.size() < 4) return text;
  for (auto pos = text.find(secret); pos != std::string::npos; pos = text.find(secret, pos)) {
    text.replace(pos, secret.size(), "***");
  }
  return text;
}

}  // namespace staple::chat
