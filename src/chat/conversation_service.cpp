#include "chat/conversation_service.h"

#include <nlohmann/json.hpp>

#include "chat/completion_scan.h"
#include "chat/openai_proxy.h"
#include "chat/sse.h"
#include "chat/upstream_call.h"
#include "observe/log.h"

namespace staple::chat {
namespace {

using nlohmann::json;

constexpr std::size_t kMaxErrorBodyBytes = 64 * 1024;
// Serialized history messages kept for the next requests of their conversations.
constexpr std::size_t kFragmentBytes = 32 * 1024 * 1024;

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

TokenUsage UsageOf(const Completion& completion) {
  return TokenUsage{completion.prompt_tokens, completion.completion_tokens, completion.text.size()};
}

}  // namespace

ConversationService::ConversationService(store::ConversationStore& store,
                                         upstream::Client& upstream, observe::Metrics& metrics,
                                         ServiceSettings settings)
    : store_(store),
      upstream_(upstream),
      metrics_(metrics),
      settings_(std::move(settings)),
      model_json_(json(settings_.model).dump(-1, ' ', false, json::error_handler_t::replace)),
      system_message_(settings_.system_prompt.empty()
                          ? std::string()
                          : MessageFragments::Serialize("system", settings_.system_prompt)),
      fragments_(kFragmentBytes) {}

std::string ConversationService::Scrub(std::string text) const {
  return ScrubSecret(std::move(text), settings_.api_key);
}

Error ConversationService::UpstreamFailure(const Error& error) {
  return chat::UpstreamFailure(metrics_, error, settings_.api_key);
}

net::awaitable<Result<ConversationService::UpstreamBody>> ConversationService::RequestBody(
    CompletionRequest request, bool stream) {
  if (settings_.key_missing) {
    co_return MakeError(ErrorKind::kInternal,
                        "OPENAI_API_KEY is not set: completions are unavailable until it is");
  }
  Result<std::vector<store::StoredMessage>> history = std::vector<store::StoredMessage>{};
  if (!request.new_conversation) {
    std::string owner = request.user_id;
    history = co_await store_.RecentMessages(std::move(owner), settings_.window.max_messages);
  }
  if (!history) {
    co_return MakeError(ErrorKind::kUnavailable,
                        "could not read the conversation: " + history.error().message);
  }
  // The body is assembled from serialized pieces: the constant model and system message, the
  // history's messages (kept serialized across requests, see MessageFragments) and the prompt.
  const std::size_t first = WindowStart(*history, settings_.window);
  const std::string prompt = MessageFragments::Serialize("user", request.prompt);
  UpstreamBody out;
  std::string& body = out.json;
  body.reserve(128 + prompt.size() + system_message_.size());
  body += "{\"model\":";
  body += model_json_;
  body += ",\"messages\":[";
  if (!system_message_.empty()) {
    body += system_message_;
    body += ',';
  }
  if (first < history->size()) {
    fragments_.Append(body, *history, first);
    body += ',';
  }
  body += prompt;
  body += ']';
  if (stream) {
    // Token counts for the log and the token limits.
    body += ",\"stream\":true,\"stream_options\":{\"include_usage\":true}";
  }
  body += '}';
  if (request.tokens) {
    std::uint64_t tokens = kReplyPrimingTokens + EstimateMessageTokens(request.prompt);
    if (!settings_.system_prompt.empty()) tokens += EstimateMessageTokens(settings_.system_prompt);
    for (std::size_t i = first; i < history->size(); ++i) {
      tokens += EstimateMessageTokens((*history)[i].content);
    }
    out.estimate.prompt = tokens;
  }
  co_return out;
}

net::awaitable<Status> ConversationService::Reserve(const CompletionRequest& request,
                                                    TokenEstimate estimate) {
  if (!request.tokens) co_return Ok();
  Status reserved = co_await request.tokens->Reserve(estimate);
  co_return reserved;
}

net::awaitable<void> ConversationService::Release(const CompletionRequest& request) {
  if (request.tokens) co_await request.tokens->Release();
}

net::awaitable<Status> ConversationService::StoreTurn(
    CompletionRequest request, Completion completion, std::string model,
    std::chrono::steady_clock::duration upstream_time) {
  metrics_.CountTokens(completion.prompt_tokens.value_or(0),
                       completion.completion_tokens.value_or(0));
  store::Turn turn;
  turn.user_id = std::move(request.user_id);
  turn.request_id = std::move(request.request_id);
  turn.model = model.empty() ? settings_.model : std::move(model);
  turn.prompt = std::move(request.prompt);
  turn.completion = std::move(completion.text);
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
  co_return Ok();
}

net::awaitable<Result<Completion>> ConversationService::Complete(CompletionRequest request) {
  // 1. The conversation so far, and the new prompt.
  CompletionRequest for_body = request;
  auto body = co_await RequestBody(std::move(for_body), false);
  if (!body) co_return body.error();
  Status reserved = co_await Reserve(request, body->estimate);
  if (!reserved) co_return reserved.error();

  // 2. Ask the upstream.
  auto upstream_request =
      ChatCompletionsRequest(std::move(body->json), request.request_id, /*stream=*/false);
  const auto asked_at = std::chrono::steady_clock::now();
  auto response = co_await upstream_.Send(std::move(upstream_request));
  const auto upstream_time = std::chrono::steady_clock::now() - asked_at;
  metrics_.ObserveUpstream(std::chrono::duration<double>(upstream_time).count());
  if (!response || response->status < 200 || response->status > 299) co_await Release(request);
  if (!response) co_return UpstreamFailure(response.error());
  if (response->status < 200 || response->status > 299) {
    metrics_.CountUpstreamError();
    metrics_.CountFailedTurn();
    auto detail = UpstreamErrorMessage(response->body);
    co_return MakeError(ErrorKind::kUpstream,
                        Scrub("upstream returned HTTP " + std::to_string(response->status) +
                              (detail.empty() ? std::string() : ": " + detail)));
  }
  // choices[0].message.content must be a string or null (an answer with only tool calls).
  auto answer = ScanCompletion(response->body);
  if (!answer || (answer->message_content != CompletionFields::Content::kString &&
                  answer->message_content != CompletionFields::Content::kNull)) {
    metrics_.CountUpstreamError();
    metrics_.CountFailedTurn();
    co_return MakeError(ErrorKind::kUpstream, "upstream returned an invalid completion body");
  }
  Completion completion;
  completion.text = std::move(answer->message_text);
  completion.prompt_tokens = answer->prompt_tokens;
  completion.completion_tokens = answer->completion_tokens;
  std::string model = std::move(answer->model);
  if (request.tokens) {
    TokenUsage usage = UsageOf(completion);
    co_await request.tokens->Settle(usage);
  }

  // 3. Store the turn; the answer goes out only once it is durable.
  Completion stored_completion = completion;
  auto stored = co_await StoreTurn(std::move(request), std::move(stored_completion),
                                   std::move(model), upstream_time);
  if (!stored) co_return stored.error();
  co_return completion;
}

net::awaitable<Result<std::unique_ptr<CompletionStream>>> ConversationService::OpenStream(
    CompletionRequest request) {
  CompletionRequest for_body = request;
  auto body = co_await RequestBody(std::move(for_body), true);
  if (!body) co_return body.error();
  Status reserved = co_await Reserve(request, body->estimate);
  if (!reserved) co_return reserved.error();

  auto upstream_request =
      ChatCompletionsRequest(std::move(body->json), request.request_id, /*stream=*/true);
  const auto asked_at = std::chrono::steady_clock::now();
  auto opened = co_await upstream_.OpenStream(std::move(upstream_request));
  if (!opened) {
    co_await Release(request);
    co_return UpstreamFailure(opened.error());
  }
  std::unique_ptr<upstream::Stream> stream = std::move(opened).value();
  if (stream->status() < 200 || stream->status() > 299) {
    co_await Release(request);
    // Read the error body (bounded) for its message; the transfer ends with `stream`.
    std::string error_body;
    for (;;) {
      auto next = co_await stream->Next();
      if (!next || !next->has_value() || error_body.size() > kMaxErrorBodyBytes) break;
      error_body += **next;
    }
    metrics_.CountUpstreamError();
    metrics_.CountFailedTurn();
    auto detail = UpstreamErrorMessage(error_body);
    co_return MakeError(ErrorKind::kUpstream,
                        Scrub("upstream returned HTTP " + std::to_string(stream->status()) +
                              (detail.empty() ? std::string() : ": " + detail)));
  }
  std::unique_ptr<CompletionStream> completion(
      new CompletionStream(*this, std::move(request), std::move(stream), asked_at));
  co_return completion;
}

CompletionStream::CompletionStream(ConversationService& service, CompletionRequest request,
                                   std::unique_ptr<upstream::Stream> stream,
                                   std::chrono::steady_clock::time_point asked_at)
    : service_(service),
      request_(std::move(request)),
      stream_(std::move(stream)),
      asked_at_(asked_at) {}

net::awaitable<Result<Completion>> CompletionStream::Run(DeltaSink sink) {
  // The transfer ends with this call: returning early destroys the stream, which cancels it.
  std::unique_ptr<upstream::Stream> stream = std::move(stream_);
  if (!stream) co_return MakeError(ErrorKind::kInternal, "the upstream stream was already used");
  SseParser parser;
  StreamTranscript transcript;
  while (!transcript.done()) {
    auto next = co_await stream->Next();
    if (!next) co_return service_.UpstreamFailure(next.error());
    if (!next->has_value()) break;
    std::vector<SseEvent> events;
    if (Status fed = parser.Feed(**next, events); !fed) {
      co_return service_.UpstreamFailure(fed.error());
    }
    for (const auto& event : events) {
      std::string delta = transcript.Add(event.data);
      if (transcript.error()) {
        co_return service_.UpstreamFailure(
            MakeError(ErrorKind::kUpstream, "upstream reported an error: " + *transcript.error()));
      }
      if (delta.empty()) continue;
      Status written = co_await sink(std::move(delta));
      if (!written) co_return written.error();
    }
  }
  if (!transcript.complete()) {
    co_return service_.UpstreamFailure(
        MakeError(ErrorKind::kUpstream, "upstream stream ended before the answer was complete"));
  }
  stream.reset();  // "[DONE]" arrived: nothing more to read

  const auto upstream_time = std::chrono::steady_clock::now() - asked_at_;
  service_.metrics_.ObserveUpstream(std::chrono::duration<double>(upstream_time).count());
  const ChatAnswer& answer = transcript.answer();
  Completion completion;
  completion.text = answer.text;
  completion.prompt_tokens = answer.prompt_tokens;
  completion.completion_tokens = answer.completion_tokens;
  if (request_.tokens) {
    TokenUsage usage = UsageOf(completion);
    co_await request_.tokens->Settle(usage);
  }
  Completion stored_completion = completion;
  std::string model = answer.model;
  auto stored = co_await service_.StoreTurn(std::move(request_), std::move(stored_completion),
                                            std::move(model), upstream_time);
  if (!stored) co_return stored.error();
  co_return completion;
}

}  // namespace staple::chat
