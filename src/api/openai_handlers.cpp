#include "api/openai_handlers.h"

#include <algorithm>
#include <memory>

#include "api/errors.h"
#include "api/handlers.h"

namespace staple::api {
namespace {

using nlohmann::json;

const std::vector<ratelimit::RateLimitItem> kNoLimits;

// Upstream response headers worth handing on: the content type, and the hints SDKs use to pace
// their retries.
constexpr const char* kPassedHeaders[] = {"retry-after", "retry-after-ms"};

// The pass-through's header hand-on in both directions: what the client sends along (never its
// Authorization: the upstream gets the operator's key), and what a forwarded answer keeps.
constexpr const char* kForwardedRequestHeaders[] = {"Content-Type", "Accept", "OpenAI-Beta"};
constexpr const char* kForwardedAnswerHeaders[] = {"content-disposition", "openai-processing-ms",
                                                   "openai-model", "openai-version"};

// The /v1 paths whose calls are Staple's own (their state lives here): a path under one that no
// route matches is a 404, never forwarded to an upstream that holds none of that state.
constexpr std::string_view kOwnPrefixes[] = {"/v1/chat/", "/v1/responses", "/v1/conversations"};

// Whether a path has a "." or ".." segment (also percent-encoded): forwarded, it could climb out
// of the upstream's /v1 to other paths of its host, with the gateway's key.
bool HasDotSegment(std::string_view path) {
  std::size_t start = 0;
  while (start <= path.size()) {
    const auto end = std::min(path.find('/', start), path.size());
    std::string segment(path.substr(start, end - start));
    for (std::size_t at = segment.find('%'); at != std::string::npos; at = segment.find('%', at)) {
      if (segment.size() - at >= 3 && segment[at + 1] == '2' &&
          (segment[at + 2] == 'e' || segment[at + 2] == 'E')) {
        segment.replace(at, 3, ".");
      }
      ++at;
    }
    if (segment == "." || segment == "..") return true;
    start = end + 1;
  }
  return false;
}

// The `model` of a JSON body, "" when there is none (a multipart upload names it in a form field;
// a Router then picks among all its upstreams).
std::string ModelOf(const http::Request& request) {
  const auto type = request.headers.Get("Content-Type");
  if (!type || type->find("json") == std::string_view::npos || request.body.empty()) return {};
  const auto tree = json::parse(request.body, nullptr, false);
  if (!tree.is_object()) return {};
  const auto model = tree.find("model");
  return model != tree.end() && model->is_string() ? model->get<std::string>() : std::string();
}

// The client's answer for a forwarded 2xx: its status, headers and body as the upstream sends it.
http::Response ForwardedAnswer(chat::OpenAIProxy* proxy, std::shared_ptr<upstream::Stream> stream,
                               observe::RequestNote* note);

bool IsOpenAIErrorBody(const std::string& body) {
  auto parsed = json::parse(body, nullptr, false);
  if (!parsed.is_object()) return false;
  auto error = parsed.find("error");
  return error != parsed.end() && error->is_object() && error->contains("message");
}

void CopyUpstreamHeaders(const upstream::Headers& from, http::Response& to) {
  for (const auto& [name, value] : from) {
    for (const char* passed : kPassedHeaders) {
      if (http::EqualsIgnoreCase(name, passed)) to.headers.Add(passed, value);
    }
  }
}

// Relays an upstream event stream to the client; a failure after the headers went out ends it
// with an error event (unless the upstream's own error event was relayed), a client that went
// away ends it silently (the upstream transfer is cancelled by then).
net::awaitable<void> RelayChatStream(std::shared_ptr<chat::TurnStream> stream,
                                     http::BodyWriter* writer) {
  chat::TurnStream::PieceSink sink =
      [writer](chat::TurnStream::Piece piece) -> net::awaitable<Status> {
    if (piece.bytes.empty()) co_return Ok();  // e.g. the commit point of a body without "[DONE]"
    Status written = co_await writer->Write(std::move(piece.bytes));
    co_return written;
  };
  auto relayed = co_await stream->Run(std::move(sink));
  if (relayed || relayed.error().kind == ErrorKind::kCancelled) co_return;
  if (stream->upstream_error_relayed()) co_return;
  std::string event = FailureEvent(relayed.error(), ErrorStyle::kOpenAI);
  Status written = co_await writer->Write(std::move(event));
  (void)written;  // the client may be gone: nothing left to do either way
}

http::Response StreamResponse(std::unique_ptr<chat::TurnStream> stream) {
  http::Response response;
  response.status = static_cast<int>(stream->status());
  response.headers.Add("Content-Type", stream->content_type().empty()
                                           ? std::string("text/event-stream; charset=utf-8")
                                           : stream->content_type());
  response.headers.Add("Cache-Control", "no-cache");
  AddUpstreamHeader(response, stream->upstream());
  std::shared_ptr<chat::TurnStream> shared = std::move(stream);
  response.stream = [shared](http::BodyWriter& writer) { return RelayChatStream(shared, &writer); };
  return response;
}

// Whether `text` is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, at most
// U+10FFFF), as the JSON parser requires of the body's strings.
bool IsValidUtf8(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    std::size_t length = 0;
    unsigned char low = 0x80;
    unsigned char high = 0xBF;
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      length = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      length = 3;
      if (c == 0xE0) low = 0xA0;   // overlong
      if (c == 0xED) high = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      length = 4;
      if (c == 0xF0) low = 0x90;   // overlong
      if (c == 0xF4) high = 0x8F;  // above U+10FFFF
    } else {
      return false;
    }
    if (text.size() - i < length) return false;
    const auto second = static_cast<unsigned char>(text[i + 1]);
    if (second < low || second > high) return false;
    for (std::size_t k = 2; k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      if (next < 0x80 || next > 0xBF) return false;
    }
    i += length;
  }
  return true;
}

}  // namespace

std::optional<http::Response> ParseOpenAIChatRequest(const http::Request& request,
                                                     OpenAIChatRequest& parsed) {
  const auto content_type = request.headers.Get("Content-Type");
  if (!content_type || !IsJsonContentType(*content_type)) {
    return OpenAIError(415, "Content-Type must be application/json", "invalid_request_error");
  }
  if (auto id = request.headers.Get(kConversationHeader); id && !id->empty()) {
    if (id->size() > kMaxConversationIdLength) {
      return OpenAIError(400,
                         std::string(kConversationHeader) + " is too long (at most " +
                             std::to_string(kMaxConversationIdLength) + " bytes)",
                         "invalid_request_error");
    }
    if (!IsValidUtf8(*id)) {
      return OpenAIError(400, std::string(kConversationHeader) + " is not valid UTF-8",
                         "invalid_request_error");
    }
    parsed.conversation_id = std::string(*id);
  }
  auto body = chat::ParseChatBody(request.body);
  if (!body) return OpenAIError(400, body.error().message, "invalid_request_error");
  parsed.body = std::move(body).value();
  return std::nullopt;
}

// A key limited to some models sees only those in GET /v1/models (a 2xx list whose entries
// carry an "id"; anything else passes as it came).
void OnlyAllowedModels(const keys::Key& key, upstream::Response& models) {
  if (key.record.allowed_models.empty() || models.status < 200 || models.status > 299) return;
  json list = json::parse(models.body, nullptr, /*allow_exceptions=*/false);
  if (!list.is_object()) return;
  auto data = list.find("data");
  if (data == list.end() || !data->is_array()) return;
  json kept = json::array();
  for (auto& entry : *data) {
    auto id = entry.is_object() ? entry.find("id") : entry.end();
    if (id != entry.end() && id->is_string() &&
        key.AllowsModel(id->get_ref<const std::string&>())) {
      kept.push_back(std::move(entry));
    }
  }
  *data = std::move(kept);
  models.body = list.dump();
}

http::Response PassThrough(const upstream::Response& upstream) {
  const int status = static_cast<int>(upstream.status);
  http::Response response;
  if ((status < 200 || status > 299) && !IsOpenAIErrorBody(upstream.body)) {
    std::string detail = upstream.body.substr(0, 500);
    response = OpenAIError(status,
                           "upstream returned HTTP " + std::to_string(status) +
                               (detail.empty() ? std::string() : ": " + detail),
                           "upstream_error");
  } else {
    response.status = status;
    response.headers.Add("Content-Type", upstream.content_type.empty()
                                             ? std::string("application/json")
                                             : upstream.content_type);
    response.body = upstream.body;
  }
  CopyUpstreamHeaders(upstream.headers, response);
  AddUpstreamHeader(response, upstream.upstream);
  return response;
}

net::awaitable<http::Response> StreamErrorAnswer(std::unique_ptr<chat::TurnStream> stream) {
  // An error answer to a stream request is an ordinary response.
  upstream::Response failed;
  failed.status = stream->status();
  failed.content_type = stream->content_type();
  failed.headers = stream->headers();
  failed.upstream = stream->upstream();
  auto body = co_await stream->ReadBody();
  if (!body) co_return ProxyError(body.error());
  failed.body = std::move(body).value();
  co_return PassThrough(failed);
}

http::Response ProxyError(const Error& error) { return FailureAnswer(error, ErrorStyle::kOpenAI); }

namespace {

http::Response ForwardedAnswer(chat::OpenAIProxy* proxy, std::shared_ptr<upstream::Stream> stream,
                               observe::RequestNote* note) {
  http::Response response;
  response.status = static_cast<int>(stream->status());
  response.headers.Add("Content-Type", stream->content_type().empty()
                                           ? std::string("application/octet-stream")
                                           : stream->content_type());
  for (const auto& [name, value] : stream->headers()) {
    for (const char* kept : kForwardedAnswerHeaders) {
      if (http::EqualsIgnoreCase(name, kept)) response.headers.Add(kept, value);
    }
  }
  AddUpstreamHeader(response, stream->upstream());
  // `note` lives in the request, which outlives the answer's stream (http::Request::note).
  response.stream = [proxy, stream, note](http::BodyWriter& writer) -> net::awaitable<void> {
    http::BodyWriter* out = &writer;
    chat::OpenAIProxy::ByteSink sink = [out](std::string bytes) {
      return out->Write(std::move(bytes));
    };
    Status relayed = co_await proxy->RelayForwarded(*stream, std::move(sink), note);
    if (!relayed) writer.Abort();
  };
  return response;
}

// Any /v1 path no route of Staple's matches: forwarded (chat::OpenAIProxy::Forward) after the
// same admission as the chat route (client key, request limits) and the key's allowed models.
net::awaitable<http::Response> PassThroughRoute(std::shared_ptr<OpenAIDependencies> d,
                                                http::Request& request) {
  std::string scope = "route:/v1/*";
  auto admission =
      co_await d->admission.Admit(request, d->chat_limits, std::move(scope), ErrorStyle::kOpenAI);
  if (admission.rejection) co_return std::move(*admission.rejection);
  for (const auto own : kOwnPrefixes) {
    if (request.path.starts_with(own)) {
      http::Response unknown = FormatError(404, "Not found: " + request.path, request.path);
      AddHeaders(unknown, admission.headers);
      co_return unknown;
    }
  }
  if (HasDotSegment(request.path) || request.path.find('\\') != std::string::npos) {
    http::Response refused = OpenAIError(
        400, "The path may not hold '.' or '..' segments or backslashes", "invalid_request_error");
    AddHeaders(refused, admission.headers);
    co_return refused;
  }
  constexpr std::string_view kModelsPrefix = "/v1/models/";
  const bool model_lookup = request.method == "GET" && request.path.starts_with(kModelsPrefix) &&
                            request.path.size() > kModelsPrefix.size();
  std::string model = model_lookup ? request.path.substr(kModelsPrefix.size()) : ModelOf(request);
  http::Response response;
  bool listed = false;
  std::optional<upstream::Response> found;
  if (model_lookup) found = d->proxy.ListedModel(model, listed);
  if (!model.empty() && admission.key && !admission.key->AllowsModel(model)) {
    response = model_lookup ? ModelNotFound(model)
                            : OpenAIError(403, "This API key may not use the model '" + model + "'",
                                          "invalid_request_error", "model_not_allowed");
  } else if (model_lookup && listed) {
    response = found ? PassThrough(*found) : ModelNotFound(model);
  } else if (!model.empty() && !d->proxy.Serves(model)) {
    response = ModelNotFound(model);
  } else {
    upstream::Request forward;
    forward.method = request.method;
    forward.path = request.path.substr(3);  // the base URL ends in /v1
    if (!request.query.empty()) forward.path += "?" + request.query;
    forward.body = std::move(request.body);
    forward.model = model;
    forward.headers.emplace_back("X-Request-Id", request.request_id);
    for (const char* name : kForwardedRequestHeaders) {
      if (const auto value = request.headers.Get(name)) {
        forward.headers.emplace_back(name, std::string(*value));
      }
    }
    observe::RequestNote* note = &request.note;
    auto forwarded = co_await d->proxy.Forward(std::move(forward), note);
    if (!forwarded) {
      response = ProxyError(forwarded.error());
    } else if (forwarded->answer) {
      response = PassThrough(*forwarded->answer);
    } else {
      std::shared_ptr<upstream::Stream> stream = std::move(forwarded->stream);
      response = ForwardedAnswer(&d->proxy, std::move(stream), note);
    }
  }
  AddHeaders(response, admission.headers);
  co_return response;
}

}  // namespace

void RegisterOpenAIRoutes(http::Router& router, OpenAIDependencies deps) {
  auto shared = std::make_shared<OpenAIDependencies>(std::move(deps));

  router.Add("POST", "/v1/chat/completions", "/v1/chat/completions",
             [d = shared](http::Request& request) -> net::awaitable<http::Response> {
               const auto received_at = std::chrono::system_clock::now();
               std::string scope = "route:/v1/chat/completions";
               auto admission = co_await d->admission.Admit(request, d->chat_limits,
                                                            std::move(scope), ErrorStyle::kOpenAI);
               if (admission.rejection) co_return std::move(*admission.rejection);

               OpenAIChatRequest parsed;
               if (auto invalid = ParseOpenAIChatRequest(request, parsed)) {
                 AddHeaders(*invalid, admission.headers);
                 co_return std::move(*invalid);
               }
               if (admission.key && !admission.key->AllowsModel(parsed.body.model)) {
                 auto refused = OpenAIError(
                     403, "This API key may not use the model '" + parsed.body.model + "'",
                     "invalid_request_error", "model_not_allowed");
                 AddHeaders(refused, admission.headers);
                 co_return refused;
               }
               if (!d->proxy.Serves(parsed.body.model)) {
                 auto unknown = ModelNotFound(parsed.body.model);
                 AddHeaders(unknown, admission.headers);
                 co_return unknown;
               }
               chat::ProxyRequest ask;
               ask.owner = admission.owner();
               ask.remember = parsed.conversation_id.has_value();
               ask.conversation_id = parsed.conversation_id.value_or(NewUserId());
               ask.body = std::move(request.body);
               ask.parsed = std::move(parsed.body);
               ask.request_id = request.request_id;
               ask.received_at = received_at;
               auto ticket = d->tokens.Ticket(admission, ErrorStyle::kOpenAI);
               ask.tokens = ticket;
               ask.note = &request.note;
               const std::string conversation_id = ask.conversation_id;
               const bool stream = ask.parsed.stream;
               auto error_answer = [&ticket](const Error& error) {
                 return error.kind == ErrorKind::kLimited && ticket ? ticket->TakeRejection()
                                                                    : ProxyError(error);
               };

               http::Response response;
               if (stream) {
                 auto opened = co_await d->proxy.OpenStream(std::move(ask));
                 if (!opened) {
                   response = error_answer(opened.error());
                 } else if (!(*opened)->success()) {
                   response = co_await StreamErrorAnswer(std::move(opened).value());
                 } else {
                   response = StreamResponse(std::move(opened).value());
                 }
               } else {
                 auto answered = co_await d->proxy.Complete(std::move(ask));
                 if (answered) {
                   response = PassThrough(*answered);
                 } else {
                   response = error_answer(answered.error());
                 }
               }
               response.headers.Add(kConversationHeader, conversation_id);
               if (ticket) AddHeaders(response, ticket->headers());
               AddHeaders(response, admission.headers);
               co_return response;
             });

  router.SetFallback("/v1/", "/v1/*",
                     [d = shared](http::Request& request) -> net::awaitable<http::Response> {
                       return PassThroughRoute(d, request);
                     });

  router.Add("GET", "/v1/models", "/v1/models",
             [d = shared](http::Request& request) -> net::awaitable<http::Response> {
               std::string scope = "route:/v1/models";
               auto admission = co_await d->admission.Admit(request, kNoLimits, std::move(scope),
                                                            ErrorStyle::kOpenAI);
               if (admission.rejection) co_return std::move(*admission.rejection);
               std::string request_id = request.request_id;
               auto answered = co_await d->proxy.Models(std::move(request_id));
               http::Response response;
               if (answered) {
                 if (admission.key) OnlyAllowedModels(*admission.key, *answered);
                 response = PassThrough(*answered);
               } else {
                 response = ProxyError(answered.error());
               }
               AddHeaders(response, admission.headers);
               co_return response;
             });
}

}  // namespace staple::api
