#include "chat/conversation_service.h"

#include <nlohmann/json.hpp>

#include "observe/log.h"

namespace staple::chat {
namespace {

using nlohmann::json;

// The upstream's own error text, when its body is OpenAI's error shape.
std::string UpstreamErrorMessage(const std::string& body) {
  auto parsed = json::parse(body, nullptr, false);
  if (parsed.is_object() && parsed.contains("error")) {
    const auto& error = parsed["error"];
    if (error.is_object() && error.contains("message") && error["message"].is_string()) {
      return error["message"].get<std::string>();
    }
    if (error.is_string()) return error.get<std::string>();
  }
  return {};
}

std::optional<std::int64_t> OptionalInt(const json& object, const char* key) {
  if (!object.is_object()) return std::nullopt;
  auto it = object.find(key);
  if (it == object.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<std::int64_t>();
}

}  // namespace

ConversationService::ConversationService(store::ConversationStore& store,
                                         upstream::Client& upstream, observe::Metrics& metrics,
                                         ServiceSettings settings)
    : store_(store), upstream_(upstream), metrics_(metrics), settings_(std::move(settings)) {}

std::string ConversationService::Scrub(std::string text) const {
  if (settings_.api_key.size() >= 4) {
    for (auto pos = text.find(settings_.api_key); pos != std::string::npos;
         pos = text.find(settings_.api_key, pos)) {
      text.replace(pos, settings_.api_key.size(), "***");
    }
  }
  return text;
}

net::awaitable<Result<Completion>> ConversationService::Complete(CompletionRequest request) {
  if (settings_.key_missing) {
    co_return MakeError(ErrorKind::kInternal,
                        "OPENAI_API_KEY is not set: completions are unavailable until it is");
  }

  // 1. The conversation so far.
  std::string owner = request.user_id;
  auto history = co_await store_.RecentMessages(std::move(owner), settings_.window.max_messages);
  if (!history) {
    co_return MakeError(ErrorKind::kUnavailable,
                        "could not read the conversation: " + history.error().message);
  }
  const auto context =
      BuildContext(*history, settings_.window, settings_.system_prompt, request.prompt);

  // 2. Ask the upstream.
  json body = {{"model", settings_.model}, {"messages", json::array()}};
  auto& messages = body["messages"];
  for (const auto& message : context) {
    messages.push_back({{"role", message.role}, {"content", message.content}});
  }
  upstream::Request upstream_request;
  upstream_request.path = "/chat/completions";
  upstream_request.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  upstream_request.headers.emplace_back("X-Request-Id", request.request_id);
  const auto asked_at = std::chrono::steady_clock::now();
  auto response = co_await upstream_.Send(std::move(upstream_request));
  const auto upstream_time = std::chrono::steady_clock::now() - asked_at;
  metrics_.ObserveUpstream(std::chrono::duration<double>(upstream_time).count());
  if (!response) {
    metrics_.CountUpstreamError();
    metrics_.CountFailedTurn();
    const auto kind = response.error().kind == ErrorKind::kTimeout ? ErrorKind::kTimeout
                                                                    : ErrorKind::kUpstream;
    co_return MakeError(kind, Scrub("upstream request failed: " + response.error().message));
  }
  if (response->status < 200 || response->status > 299) {
    metrics_.CountUpstreamError();
    metrics_.CountFailedTurn();
    auto detail = UpstreamErrorMessage(response->body);
    co_return MakeError(ErrorKind::kUpstream,
                        Scrub("upstream returned HTTP " + std::to_string(response->status) +
                              (detail.empty() ? std::string() : ": " + detail)));
  }
  auto parsed = json::parse(response->body, nullptr, false);
  const json* content = nullptr;
  if (parsed.is_object() && parsed.contains("choices") && parsed["choices"].is_array() &&
      !parsed["choices"].empty()) {
    const auto& choice = parsed["choices"][0];
    if (choice.is_object() && choice.contains("message") && choice["message"].is_object()) {
      auto it = choice["message"].find("content");
      if (it != choice["message"].end() && (it->is_string() || it->is_null())) content = &*it;
    }
  }
  if (content == nullptr) {
    metrics_.CountUpstreamError();
    metrics_.CountFailedTurn();
    co_return MakeError(ErrorKind::kUpstream, "upstream returned an invalid completion body");
  }
  Completion completion;
  completion.text = content->is_string() ? content->get<std::string>() : std::string();
  if (parsed.contains("usage")) {
    completion.prompt_tokens = OptionalInt(parsed["usage"], "prompt_tokens");
    completion.completion_tokens = OptionalInt(parsed["usage"], "completion_tokens");
    metrics_.CountTokens(completion.prompt_tokens.value_or(0),
                         completion.completion_tokens.value_or(0));
  }

  // 3. Store the turn; the answer goes out only once it is durable.
  store::Turn turn;
  turn.user_id = std::move(request.user_id);
  turn.request_id = std::move(request.request_id);
  turn.model = parsed.contains("model") && parsed["model"].is_string()
                   ? parsed["model"].get<std::string>()
                   : settings_.model;
  turn.prompt = std::move(request.prompt);
  turn.completion = completion.text;
  turn.prompt_time = request.received_at;
  turn.completion_time = std::chrono::system_clock::now();
  turn.prompt_tokens = completion.prompt_tokens;
  turn.completion_tokens = completion.completion_tokens;
  turn.latency_ms = std::chrono::duration_cast<std::chrono::milliseconds>(upstream_time).count();
  auto stored = co_await store_.AppendTurn(std::move(turn));
  if (!stored) {
    metrics_.CountFailedTurn();
    observe::Error("turn not stored", {{"error", stored.error().message}});
    co_return MakeError(ErrorKind::kUnavailable,
                        "the conversation could not be stored: " + stored.error().message);
  }
  co_return completion;
}

}  // namespace staple::chat
