#include "chat/openai_proxy.h"

#include <nlohmann/json.hpp>

namespace staple::chat {
namespace {

using nlohmann::ordered_json;

// Client and upstream text may hold invalid UTF-8: never let it turn into an exception.
std::string Dump(const ordered_json& value) {
  return value.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
}

}  // namespace

OpenAIProxy::OpenAIProxy(TurnPipeline& pipeline, upstream::Client& upstream,
                         std::optional<std::vector<std::string>> listed_models)
    : pipeline_(pipeline), upstream_(upstream), listed_models_(std::move(listed_models)) {}

TurnRequest OpenAIProxy::Turn(ProxyRequest& request, std::string& body) {
  TurnRequest turn;
  turn.owner = std::move(request.owner);
  turn.conversation_id = std::move(request.conversation_id);
  turn.read_history = request.remember;
  turn.prompt = request.parsed.prompt;
  turn.model = request.parsed.model;
  turn.request_id = std::move(request.request_id);
  turn.received_at = request.received_at;
  turn.stream = request.parsed.stream;
  turn.tokens = std::move(request.tokens);
  turn.note = request.note;
  body = std::move(request.body);
  return turn;
}

BodyBuilder OpenAIProxy::Builder(std::string* body, const ChatBody* parsed) {
  // `body` and `parsed` live in the awaiting coroutine's frame (see BodyBuilder).
  return [body, parsed](const TurnRequest& /*request*/, const store::History& stored,
                        std::size_t first, bool estimate) -> Result<UpstreamBody> {
    std::vector<ChatMessage> history;
    history.reserve(stored.size() - std::min(first, stored.size()));
    for (std::size_t i = first; i < stored.size(); ++i) {
      history.push_back({stored[i]->role, stored[i]->content});
    }
    UpstreamBody out;
    // The tree is built only when the body is rewritten or its tokens are estimated
    // (ParseChatBody already found it valid).
    ordered_json tree;
    if (estimate || !history.empty()) tree = ordered_json::parse(*body, nullptr, false);
    if (estimate) {
      out.estimate.prompt = EstimatePromptTokens(tree["messages"], history);
      out.estimate.max_completion = parsed->max_completion_tokens;
    }
    if (history.empty()) {
      out.json = std::move(*body);
    } else {
      InsertHistory(tree["messages"], history);
      out.json = Dump(tree);
    }
    return out;
  };
}

net::awaitable<Result<upstream::Response>> OpenAIProxy::Complete(ProxyRequest request) {
  std::string body;
  auto turn = Turn(request, body);
  auto build = Builder(&body, &request.parsed);
  auto result = co_await pipeline_.Complete(std::move(turn), std::move(build));
  if (!result) co_return result.error();
  co_return std::move(result->response);
}

net::awaitable<Result<std::unique_ptr<TurnStream>>> OpenAIProxy::OpenStream(ProxyRequest request) {
  std::string body;
  auto turn = Turn(request, body);
  auto build = Builder(&body, &request.parsed);
  auto opened = co_await pipeline_.OpenStream(std::move(turn), std::move(build));
  co_return opened;
}

std::optional<upstream::Response> OpenAIProxy::ListedModel(std::string_view id,
                                                           bool& listed) const {
  listed = listed_models_.has_value();
  if (!listed || !pipeline_.Serves(id)) return std::nullopt;
  upstream::Response model;
  model.status = 200;
  model.content_type = "application/json";
  model.body = nlohmann::json{
      {"id", std::string(id)},
      {"object", "model"},
      {"created", 0},
      {"owned_by",
       "staple"}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return model;
}

net::awaitable<Result<OpenAIProxy::Forwarded>> OpenAIProxy::Forward(upstream::Request request,
                                                                    observe::RequestNote* note) {
  const auto& keys = pipeline_.settings().api_keys;
  if (pipeline_.settings().key_missing) {
    co_return MakeError(ErrorKind::kMisconfigured,
                        "OPENAI_API_KEY is not set: the upstream cannot be called until it is");
  }
  if (note != nullptr) note->model = request.model;
  const auto asked_at = std::chrono::steady_clock::now();
  auto opened = co_await upstream_.OpenStream(std::move(request));
  const auto took = [asked_at] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                 asked_at)
        .count();
  };
  if (note != nullptr) note->upstream_ms = took();
  if (!opened) {
    const auto& error = opened.error();
    auto kind = observe::UpstreamFailureKind::kTransport;
    auto answer = ErrorKind::kUpstream;
    if (error.kind == ErrorKind::kTimeout) {
      kind = observe::UpstreamFailureKind::kTimeout;
      answer = ErrorKind::kTimeout;
    } else if (error.kind == ErrorKind::kOverloaded) {
      kind = observe::UpstreamFailureKind::kUnavailable;
      answer = ErrorKind::kOverloaded;
    }
    pipeline_.metrics().CountUpstreamError(kind);
    auto failure = MakeError(answer, ScrubSecrets(error.message, keys));
    if (note != nullptr) note->Fail(failure.message);
    co_return failure;
  }
  std::unique_ptr<upstream::Stream> stream = std::move(opened).value();
  if (note != nullptr) note->upstream = stream->upstream();
  Forwarded forwarded;
  if (stream->status() >= 200 && stream->status() <= 299) {
    forwarded.stream = std::move(stream);
    co_return forwarded;
  }
  // An error answer is small: read it whole, so that no key it might echo reaches the client.
  upstream::Response answer;
  answer.status = stream->status();
  answer.content_type = stream->content_type();
  answer.headers = stream->headers();
  answer.upstream = stream->upstream();
  for (;;) {
    auto next = co_await stream->Next();
    if (!next) {
      pipeline_.metrics().CountUpstreamError(observe::UpstreamFailureKind::kBrokenStream);
      auto failure = MakeError(ErrorKind::kUpstream, ScrubSecrets(next.error().message, keys));
      if (note != nullptr) note->Fail(failure.message);
      co_return failure;
    }
    if (!next->has_value()) break;
    answer.body += **next;
    if (answer.body.size() > pipeline_.settings().max_error_body_bytes) {
      co_return MakeError(ErrorKind::kUpstream, "upstream error body is too large");
    }
  }
  answer.body = ScrubSecrets(std::move(answer.body), keys);
  if (answer.status >= 500) {
    pipeline_.metrics().CountUpstreamError(observe::UpstreamFailureKind::kStatus);
    if (note != nullptr) note->Fail("upstream answered " + std::to_string(answer.status));
  }
  if (note != nullptr) note->upstream_ms = took();
  forwarded.answer = std::move(answer);
  co_return forwarded;
}

net::awaitable<Status> OpenAIProxy::RelayForwarded(upstream::Stream& stream, ByteSink sink,
                                                   observe::RequestNote* note) {
  for (;;) {
    auto next = co_await stream.Next();
    if (!next) {
      pipeline_.metrics().CountUpstreamError(next.error().kind == ErrorKind::kTimeout
                                                 ? observe::UpstreamFailureKind::kTimeout
                                                 : observe::UpstreamFailureKind::kBrokenStream);
      auto failure =
          MakeError(ErrorKind::kUpstream,
                    "upstream answer broke off: " +
                        ScrubSecrets(next.error().message, pipeline_.settings().api_keys));
      if (note != nullptr) note->Fail(failure.message);
      co_return failure;
    }
    if (!next->has_value()) co_return Ok();
    Status written = co_await sink(std::move(**next));
    if (!written) co_return Ok();  // the client left: the transfer ends with the stream
  }
}

net::awaitable<Result<upstream::Response>> OpenAIProxy::Models(std::string request_id) {
  if (listed_models_) {
    // OpenAI's list shape; `created` is unknown for a configured name.
    nlohmann::json data = nlohmann::json::array();
    for (const auto& id : *listed_models_) {
      data.push_back({{"id", id}, {"object", "model"}, {"created", 0}, {"owned_by", "staple"}});
    }
    upstream::Response listed;
    listed.status = 200;
    listed.content_type = "application/json";
    listed.body = nlohmann::json{{"object", "list"}, {"data", std::move(data)}}.dump();
    co_return listed;
  }
  upstream::Request upstream_request;
  upstream_request.method = "GET";
  upstream_request.path = "/models";
  upstream_request.headers.emplace_back("X-Request-Id", std::move(request_id));
  auto response = co_await upstream_.Send(std::move(upstream_request));
  const std::vector<std::string>& keys = pipeline_.settings().api_keys;
  if (!response) {
    pipeline_.metrics().CountUpstreamError(response.error().kind == ErrorKind::kTimeout
                                               ? observe::UpstreamFailureKind::kTimeout
                                               : observe::UpstreamFailureKind::kTransport);
    const auto kind =
        response.error().kind == ErrorKind::kTimeout ? ErrorKind::kTimeout : ErrorKind::kUpstream;
    co_return MakeError(kind, ScrubSecrets(response.error().message, keys));
  }
  response->body = ScrubSecrets(std::move(response->body), keys);
  co_return std::move(response).value();
}

}  // namespace staple::chat
