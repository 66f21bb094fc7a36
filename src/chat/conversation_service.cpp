#include "chat/conversation_service.h"

#include <nlohmann/json.hpp>

namespace staple::chat {
namespace {

using nlohmann::json;

// Of an error answer to a stream request, only this much is read for its message.
constexpr std::size_t kMaxErrorBodyBytes = 64 * 1024;

// The upstream's own error text, when its body is OpenAI's error shape.
std::string UpstreamErrorMessage(std::string_view body) {
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

Completion CompletionOf(ChatAnswer answer) {
  return Completion{std::move(answer.text), answer.prompt_tokens, answer.completion_tokens, {}};
}

}  // namespace

ConversationService::ConversationService(TurnPipeline& pipeline, ServiceSettings settings)
    : pipeline_(pipeline),
      settings_(std::move(settings)),
      model_json_(json(settings_.model).dump(-1, ' ', false, json::error_handler_t::replace)),
      system_message_(settings_.system_prompt.empty()
                          ? std::string()
                          : MessageFragments::Serialize("system", settings_.system_prompt)),
      fragments_(settings_.fragment_cache_bytes) {}

TurnRequest ConversationService::Turn(CompletionRequest request, bool stream) const {
  TurnRequest turn;
  turn.owner = std::move(request.owner);
  turn.conversation_id = std::move(request.user_id);
  turn.read_history = !request.new_conversation;
  turn.prompt = std::move(request.prompt);
  turn.model = settings_.model;
  turn.request_id = std::move(request.request_id);
  turn.received_at = request.received_at;
  turn.stream = stream;
  turn.require_message_text = true;
  turn.tokens = std::move(request.tokens);
  turn.note = request.note;
  return turn;
}

BodyBuilder ConversationService::Builder(bool stream) {
  return
      [this, stream](const TurnRequest& request, const store::History& history, std::size_t first,
                     bool estimate) { return Body(request, history, first, estimate, stream); };
}

Result<UpstreamBody> ConversationService::Body(const TurnRequest& request,
                                               const store::History& history, std::size_t first,
                                               bool estimate, bool stream) {
  // The body is assembled from serialized pieces: the constant model and system message, the
  // history's messages (kept serialized across requests, see MessageFragments) and the prompt.
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
  if (first < history.size()) {
    fragments_.Append(body, history, first);
    body += ',';
  }
  body += prompt;
  body += ']';
  if (stream) {
    // Token counts for the log and the token limits.
    body += ",\"stream\":true,\"stream_options\":{\"include_usage\":true}";
  }
  body += '}';
  if (estimate) {
    std::uint64_t tokens = kReplyPrimingTokens + EstimateMessageTokens(request.prompt);
    if (!settings_.system_prompt.empty()) tokens += EstimateMessageTokens(settings_.system_prompt);
    for (std::size_t i = first; i < history.size(); ++i) {
      tokens += EstimateMessageTokens(history[i]->content);
    }
    out.estimate.prompt = tokens;
  }
  return out;
}

Error ConversationService::StatusError(long status, std::string_view body) const {
  auto detail = UpstreamErrorMessage(body);
  return MakeError(ErrorKind::kUpstream,
                   ScrubSecrets("upstream returned HTTP " + std::to_string(status) +
                                    (detail.empty() ? std::string() : ": " + detail),
                                pipeline_.settings().api_keys));
}

net::awaitable<Result<Completion>> ConversationService::Complete(CompletionRequest request) {
  auto turn = Turn(std::move(request), /*stream=*/false);
  auto build = Builder(/*stream=*/false);
  auto result = co_await pipeline_.Complete(std::move(turn), std::move(build));
  if (!result) co_return result.error();
  if (!result->answer) co_return StatusError(result->response.status, result->response.body);
  Completion completion = CompletionOf(std::move(*result->answer));
  completion.upstream = std::move(result->response.upstream);
  co_return completion;
}

net::awaitable<Result<std::unique_ptr<CompletionStream>>> ConversationService::OpenStream(
    CompletionRequest request) {
  auto turn = Turn(std::move(request), /*stream=*/true);
  auto build = Builder(/*stream=*/true);
  auto opened = co_await pipeline_.OpenStream(std::move(turn), std::move(build));
  if (!opened) co_return opened.error();
  std::unique_ptr<TurnStream> stream = std::move(opened).value();
  if (!stream->success()) {
    // The error body (bounded) only for its message.
    auto body = co_await stream->ReadBody();
    std::string text = body ? std::move(body).value() : std::string();
    if (text.size() > kMaxErrorBodyBytes) text.resize(kMaxErrorBodyBytes);
    co_return StatusError(stream->status(), text);
  }
  co_return std::unique_ptr<CompletionStream>(new CompletionStream(std::move(stream)));
}

net::awaitable<Status> CompletionStream::Run(DeltaSink deltas, DoneSink done) {
  std::unique_ptr<TurnStream> stream = std::move(stream_);
  if (!stream) co_return MakeError(ErrorKind::kInternal, "the stream was already used");
  bool finished = false;
  TurnStream* turn = stream.get();
  // Called while this coroutine waits in Run(), so it may refer to its locals.
  TurnStream::PieceSink sink = [&finished, &deltas, &done,
                                turn](TurnStream::Piece piece) -> net::awaitable<Status> {
    if (piece.stored) {
      if (finished) co_return Ok();  // the rest after "[DONE]": the seed's own events went out
      finished = true;
      Completion whole = CompletionOf(*turn->stored_answer());
      Status written = co_await done(std::move(whole));
      co_return written;
    }
    if (piece.delta.empty()) co_return Ok();
    Status written = co_await deltas(std::move(piece.delta));
    co_return written;
  };
  auto answer = co_await stream->Run(std::move(sink));
  if (!answer) co_return answer.error();
  co_return Ok();
}

}  // namespace staple::chat
