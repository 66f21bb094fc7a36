#include "api/responses_handlers.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>

#include "api/errors.h"
#include "api/handlers.h"
#include "api/openai_handlers.h"
#include "chat/responses.h"
#include "chat/responses_turn.h"
#include "chat/sse.h"

namespace staple::api {
namespace {

using chat::responses::Json;
using chat::responses::RequestError;

const std::vector<ratelimit::RateLimitItem> kNoLimits;

// Listings: OpenAI's bounds.
constexpr std::int64_t kDefaultListLimit = 20;
constexpr std::int64_t kMaxListLimit = 100;
// Items of one POST /v1/conversations or POST /v1/conversations/{id}/items.
constexpr std::size_t kMaxItemsPerCall = 20;
// A response or conversation id in a path: ours are 53 bytes; anything much longer is not one.
constexpr std::size_t kMaxIdLength = 256;

http::Response InvalidRequest(const RequestError& error) {
  return OpenAIError(400, error.message, "invalid_request_error", error.code, error.param);
}

http::Response InvalidRequest(std::string_view message, std::string_view param) {
  return OpenAIError(400, message, "invalid_request_error", {}, param);
}

http::Response NotFound(std::string_view message, std::string_view param = {}) {
  return OpenAIError(404, message, "invalid_request_error", "not_found", param);
}

// A 200 with `body`, JSON text as stored.
http::Response RawJsonAnswer(std::string body) {
  http::Response response;
  response.status = 200;
  response.headers.Add("Content-Type", "application/json");
  response.body = std::move(body);
  return response;
}

http::Response JsonAnswer(const Json& body) {
  return RawJsonAnswer(body.dump(-1, ' ', false, Json::error_handler_t::replace));
}

std::int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The stored JSON texts of items as objects (an unreadable one, which only a foreign write could
// make, is left out rather than failing every later request).
std::vector<Json> ParseItems(const std::vector<store::StoredItem>& items) {
  std::vector<Json> parsed;
  parsed.reserve(items.size());
  for (const auto& item : items) {
    Json one = Json::parse(item.json, nullptr, /*allow_exceptions=*/false);
    if (one.is_object()) parsed.push_back(std::move(one));
  }
  return parsed;
}

Json ItemList(const std::vector<store::StoredItem>& items, bool has_more) {
  Json data = Json::array();
  for (Json& item : ParseItems(items)) data.push_back(std::move(item));
  Json list = {{"object", "list"}, {"data", std::move(data)}};
  list["first_id"] = items.empty() ? Json(nullptr) : Json(items.front().id);
  list["last_id"] = items.empty() ? Json(nullptr) : Json(items.back().id);
  list["has_more"] = has_more;
  return list;
}

Json ConversationJson(const store::StoredConversation& conversation) {
  Json metadata = Json::parse(conversation.metadata_json, nullptr, false);
  if (!metadata.is_object()) metadata = Json::object();
  return {{"id", conversation.id},
          {"object", "conversation"},
          {"created_at", conversation.created_at},
          {"metadata", std::move(metadata)}};
}

// `metadata` as OpenAI allows it: an object of at most 16 string values (keys up to 64 bytes,
// values up to 512).
std::optional<RequestError> CheckMetadata(const Json& metadata) {
  if (!metadata.is_object()) return RequestError{"metadata must be an object", "metadata", {}};
  if (metadata.size() > 16) {
    return RequestError{"metadata has more than 16 keys", "metadata", {}};
  }
  for (const auto& [key, value] : metadata.items()) {
    if (key.size() > 64 || !value.is_string() || value.get_ref<const std::string&>().size() > 512) {
      return RequestError{
          "metadata values must be strings of at most 512 characters, keys at "
          "most 64 characters",
          "metadata." + key,
          {}};
    }
  }
  return std::nullopt;
}

// A JSON object body whose members are all among `allowed`, or the 415/400 answer.
std::optional<http::Response> ReadObjectBody(const http::Request& request,
                                             std::initializer_list<std::string_view> allowed,
                                             Json& body) {
  const auto content_type = request.headers.Get("Content-Type");
  if (!content_type || !IsJsonContentType(*content_type)) {
    return OpenAIError(415, "Content-Type must be application/json", "invalid_request_error");
  }
  body = Json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object()) return InvalidRequest("the body must be a JSON object", {});
  for (const auto& [key, value] : body.items()) {
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      return OpenAIError(400, "Unsupported parameter: '" + key + "'", "invalid_request_error",
                         "unsupported_parameter", key);
    }
  }
  return std::nullopt;
}

// The listing parameters after, limit (1–100, default 20) and order (asc | desc, default desc).
struct ListQuery {
  std::string after;
  std::size_t limit = kDefaultListLimit;
  store::ItemOrder order = store::ItemOrder::kDescending;
};
std::optional<http::Response> ReadListQuery(const http::Request& request, ListQuery& query) {
  if (auto after = QueryValue(request.query, "after")) {
    query.after = DecodePathSegment(*after);
  }
  if (auto text = QueryValue(request.query, "limit")) {
    auto value = ParseNonNegative(*text);
    if (!value || *value < 1 || *value > kMaxListLimit) {
      return InvalidRequest("limit must be an integer from 1 to 100", "limit");
    }
    query.limit = static_cast<std::size_t>(*value);
  }
  if (auto order = QueryValue(request.query, "order")) {
    if (*order == "asc") {
      query.order = store::ItemOrder::kAscending;
    } else if (*order != "desc") {
      return InvalidRequest("order must be 'asc' or 'desc'", "order");
    }
  }
  return std::nullopt;
}

// The path's id captures, decoded; a 404 for one too long to be an id.
std::optional<http::Response> ReadPathIds(const http::Request& request,
                                          std::vector<std::string>& ids) {
  for (const auto& param : request.path_params) {
    std::string id = DecodePathSegment(param);
    if (id.size() > kMaxIdLength) return NotFound("No such object: the id is too long");
    ids.push_back(std::move(id));
  }
  return std::nullopt;
}

// The answer for a failure of the store or of the turn pipeline.
http::Response Failure(const Error& error) {
  if (error.kind == ErrorKind::kNotFound) {
    return OpenAIError(400, error.message, "invalid_request_error", {}, "after");
  }
  return FailureAnswer(error, ErrorStyle::kOpenAI);
}

// ---- POST /v1/responses: the stream ----

// Writes the Responses events of a streamed turn: response.created and response.in_progress at
// once, the output's events as the upstream's chunks arrive, and response.completed only after
// the turn is stored; a failure after the headers ends the stream with response.failed.
net::awaitable<void> RelayResponseStream(std::shared_ptr<chat::TurnStream> stream,
                                         std::shared_ptr<chat::ResponsesTurn> turn,
                                         std::function<void()> on_stored,
                                         http::BodyWriter* writer) {
  chat::responses::ResponseEventStream& events = turn->events();
  std::string opening = events.Start();
  if (Status written = co_await writer->Write(std::move(opening)); !written) co_return;

  chat::SseParser parser;
  bool completed = false;
  chat::SseParser* upstream_events = &parser;
  bool* done = &completed;
  chat::TurnStream::PieceSink sink = [writer, turn, upstream_events, done, on_stored](
                                         chat::TurnStream::Piece piece) -> net::awaitable<Status> {
    if (piece.stored) {
      // The turn is durable: close the output and complete the response, once (what follows the
      // upstream's "[DONE]" is not part of the Responses stream).
      if (*done) co_return Ok();
      *done = true;
      on_stored();
      std::string last = turn->closing_events() + turn->events().Completed();
      co_return co_await writer->Write(std::move(last));
    }
    std::vector<chat::SseEvent> chunks;
    if (Status fed = upstream_events->Feed(piece.bytes, chunks); !fed) co_return fed;
    std::string out;
    for (const chat::SseEvent& chunk : chunks) {
      if (chunk.data == "[DONE]") continue;
      auto added = turn->events().Add(chunk.data);
      if (!added) {
        // The upstream's own error event: the pipeline ends the turn with its message.
        if (chunk.data.find("\"error\"") != std::string::npos) continue;
        co_return added.error();
      }
      out += *added;
    }
    if (out.empty()) co_return Ok();
    co_return co_await writer->Write(std::move(out));
  };
  auto relayed = co_await stream->Run(std::move(sink));
  if (relayed || relayed.error().kind == ErrorKind::kCancelled) co_return;
  if (completed) co_return;
  std::string failed = turn->events().Failed(relayed.error());
  Status written = co_await writer->Write(std::move(failed));
  (void)written;  // the client may be gone: nothing left to do either way
}

http::Response ResponseStreamAnswer(std::unique_ptr<chat::TurnStream> stream,
                                    std::shared_ptr<chat::ResponsesTurn> turn,
                                    std::function<void()> on_stored) {
  http::Response response;
  response.status = 200;
  response.headers.Add("Content-Type", "text/event-stream; charset=utf-8");
  response.headers.Add("Cache-Control", "no-cache");
  AddUpstreamHeader(response, stream->upstream());
  std::shared_ptr<chat::TurnStream> shared = std::move(stream);
  response.stream = [shared, turn, on_stored](http::BodyWriter& writer) {
    return RelayResponseStream(shared, turn, on_stored, &writer);
  };
  return response;
}

// ---- POST /v1/responses ----

// The context of the new response (the previous response's chain or the conversation's items,
// at most the history window's count) and where its window starts; or the answer refusing it.
struct Context {
  std::shared_ptr<const chat::responses::StoredContext> stored;
  std::size_t start = 0;
  std::uint64_t generation = 0;  // the chain cache's, before anything was read
};

// Whether the chain cache may be used now, after reading the store's epoch when it is due.
net::awaitable<bool> ChainsUsable(ResponsesDependencies* d) {
  switch (d->chains->Check()) {
    case chat::ChainCache::Freshness::kFresh:
      co_return true;
    case chat::ChainCache::Freshness::kChecking:
      co_return false;
    case chat::ChainCache::Freshness::kCheckNow:
      break;
  }
  auto epoch = co_await d->store.StateEpoch();
  d->chains->EpochRead(epoch ? std::optional<std::int64_t>(*epoch) : std::nullopt);
  co_return epoch.ok();
}

net::awaitable<std::variant<Context, http::Response>> ReadContext(
    ResponsesDependencies* d, std::string owner, const chat::responses::ResponsesRequest* request) {
  const chat::WindowLimits& window = d->pipeline.settings().window;
  Context context;
  store::ItemWindow stored;
  bool usable = false;
  if (d->chains != nullptr) {
    usable = co_await ChainsUsable(d);
    context.generation = d->chains->generation();
  }
  // A chain this process committed is taken as it was built (DESIGN.md: the chain cache).
  if (usable && !request->previous_response_id.empty()) {
    context.stored = d->chains->Find(owner, request->previous_response_id);
  }
  if (!context.stored && !request->previous_response_id.empty()) {
    std::string id = request->previous_response_id;
    auto chain =
        co_await d->store.ResponseChain(std::move(owner), std::move(id), window.max_messages);
    if (!chain) co_return FailureAnswer(chain.error(), ErrorStyle::kOpenAI);
    if (!*chain) {
      co_return OpenAIError(
          404, "Previous response with id '" + request->previous_response_id + "' not found.",
          "invalid_request_error", "previous_response_not_found", "previous_response_id");
    }
    stored = std::move(**chain);
  } else if (!context.stored && !request->conversation_id.empty()) {
    std::string id = request->conversation_id;
    auto items =
        co_await d->store.ConversationItems(std::move(owner), std::move(id), window.max_messages);
    if (!items) co_return FailureAnswer(items.error(), ErrorStyle::kOpenAI);
    if (!*items) {
      co_return OpenAIError(404,
                            "Conversation with id '" + request->conversation_id + "' not found.",
                            "invalid_request_error", "conversation_not_found", "conversation");
    }
    stored = std::move(**items);
  }
  if (!context.stored) {
    auto read = std::make_shared<chat::responses::StoredContext>();
    read->items.reserve(stored.items.size());
    for (const auto& item : stored.items) {
      // Read straight from the stored text: no JSON tree per item (DESIGN.md).
      if (auto one = chat::responses::ReadContextItem(item.json)) {
        read->items.push_back(std::move(*one));
      }
    }
    read->has_more = stored.has_more;
    context.stored = std::move(read);
  }
  bool fits = true;
  context.start =
      chat::responses::ContextStart(context.stored->items, request->input, window, fits);
  if (context.stored->has_more) fits = false;
  if (!fits && !request->truncation_auto) {
    co_return OpenAIError(
        400,
        "The conversation is longer than the history window (STAPLE_HISTORY_MAX_MESSAGES, "
        "STAPLE_HISTORY_MAX_CHARS). Set truncation to 'auto' to drop its oldest turns.",
        "invalid_request_error", "context_length_exceeded", "input");
  }
  co_return context;
}

net::awaitable<http::Response> CreateResponse(std::shared_ptr<ResponsesDependencies> d,
                                              http::Request& request,
                                              const Admission::Outcome& admission) {
  const auto received_at = std::chrono::system_clock::now();
  const auto content_type = request.headers.Get("Content-Type");
  if (!content_type || !IsJsonContentType(*content_type)) {
    co_return OpenAIError(415, "Content-Type must be application/json", "invalid_request_error");
  }
  chat::responses::ResponsesRequest parsed;
  if (auto invalid = chat::responses::ParseResponsesRequest(request.body, parsed)) {
    co_return InvalidRequest(*invalid);
  }
  if (admission.key && !admission.key->AllowsModel(parsed.model)) {
    co_return OpenAIError(403, "This API key may not use the model '" + parsed.model + "'",
                          "invalid_request_error", "model_not_allowed", "model");
  }
  if (!d->pipeline.Serves(parsed.model)) co_return ModelNotFound(parsed.model);

  // context: read and refused before anything is reserved or asked.
  std::string owner = admission.owner();
  std::string context_owner = owner;
  auto context = co_await ReadContext(d.get(), std::move(context_owner), &parsed);
  if (auto* refused = std::get_if<http::Response>(&context)) co_return std::move(*refused);
  Context& window = std::get<Context>(context);

  const std::string id = chat::responses::NewId("resp");
  const bool stream = parsed.stream;
  chat::TurnRequest turn_request;
  turn_request.owner = std::move(owner);
  // The turn log keeps the exchange under the conversation's id, or the response's own.
  turn_request.conversation_id = parsed.conversation_id.empty() ? id : parsed.conversation_id;
  turn_request.prompt = parsed.prompt_text;
  turn_request.model = parsed.model;
  turn_request.request_id = request.request_id;
  turn_request.received_at = received_at;
  turn_request.stream = stream;
  turn_request.note = &request.note;
  auto ticket = d->tokens.Ticket(admission, ErrorStyle::kOpenAI);
  turn_request.tokens = ticket;
  auto turn = std::make_shared<chat::ResponsesTurn>(std::move(parsed), id, UnixNow(),
                                                    std::move(window.stored), window.start);
  turn_request.record = turn->Recorder();
  // Once the turn committed, its chain is what the next request continues (chat::ChainCache).
  std::function<void()> remember = [d, owner = turn_request.owner, generation = window.generation,
                                    turn] {
    if (d->chains == nullptr) return;
    d->chains->Put(owner, turn->id(), generation,
                   turn->ChainAfter(d->pipeline.settings().window.max_messages));
  };
  auto error_answer = [&ticket](const Error& error) {
    return error.kind == ErrorKind::kLimited && ticket ? ticket->TakeRejection()
                                                       : FailureAnswer(error, ErrorStyle::kOpenAI);
  };

  http::Response response;
  if (stream) {
    // Named, not a temporary in the co_await expression (STYLE.md: g++ 12).
    chat::BodyBuilder build = turn->Builder();
    auto opened = co_await d->pipeline.OpenStream(std::move(turn_request), std::move(build));
    if (!opened) {
      response = error_answer(opened.error());
    } else if (!(*opened)->success()) {
      response = co_await StreamErrorAnswer(std::move(opened).value());
    } else {
      response = ResponseStreamAnswer(std::move(opened).value(), turn, remember);
    }
  } else {
    chat::BodyBuilder build = turn->Builder();
    auto answered = co_await d->pipeline.Complete(std::move(turn_request), std::move(build));
    if (!answered) {
      response = error_answer(answered.error());
    } else if (!answered->answer || !turn->response_json()) {
      response = PassThrough(answered->response);  // the upstream's error status
    } else {
      remember();
      response = RawJsonAnswer(*turn->response_json());
      AddUpstreamHeader(response, answered->response.upstream);
    }
  }
  if (ticket) AddHeaders(response, ticket->headers());
  co_return response;
}

// ---- The other routes ----

// After a delete of stored state: the chains this process holds may contain what it removed (a
// failed delete may still have committed).
void ForgetChains(ResponsesDependencies& d, const Result<bool>& deleted) {
  if (d.chains != nullptr && (!deleted || *deleted)) d.chains->Forget();
}

// What a route does once admitted, with the decoded path ids.
using Action = std::function<net::awaitable<http::Response>(
    std::shared_ptr<ResponsesDependencies> d, http::Request& request,
    const Admission::Outcome& admission, std::vector<std::string> ids)>;

// Admission (global limits plus `limits`), the path's ids, and the admission's headers on the
// answer.
http::Handler Route(std::shared_ptr<ResponsesDependencies> deps, std::string scope,
                    const std::vector<ratelimit::RateLimitItem>* limits, Action action) {
  return [deps, scope, limits, action](http::Request& request) -> net::awaitable<http::Response> {
    std::string route_key = scope;
    auto admission =
        co_await deps->admission.Admit(request, *limits, std::move(route_key), ErrorStyle::kOpenAI);
    if (admission.rejection) co_return std::move(*admission.rejection);
    std::vector<std::string> ids;
    http::Response response;
    if (auto refused = ReadPathIds(request, ids)) {
      response = std::move(*refused);
    } else {
      std::shared_ptr<ResponsesDependencies> shared = deps;
      response = co_await action(std::move(shared), request, admission, std::move(ids));
    }
    AddHeaders(response, admission.headers);
    co_return response;
  };
}

net::awaitable<http::Response> RetrieveResponse(std::shared_ptr<ResponsesDependencies> d,
                                                http::Request&, const Admission::Outcome& admission,
                                                std::vector<std::string> ids) {
  std::string owner = admission.owner();
  std::string id = ids.at(0);
  auto found = co_await d->store.GetResponse(owner, id);
  if (!found) co_return Failure(found.error());
  if (!*found) co_return NotFound("Response with id '" + ids.at(0) + "' not found.");
  store::StoredResponse& response = **found;
  if (!response.conversation_id.empty() || !chat::responses::StoredOutputIsEmpty(response.json)) {
    co_return RawJsonAnswer(std::move(response.json));
  }
  // Stored without its output (chat::responses::WithoutOutput): read it from the output items.
  std::vector<std::string> output;
  std::string after;
  constexpr auto kPage = static_cast<std::size_t>(kMaxListLimit);
  for (;;) {
    auto page = co_await d->store.ListResponseItems(owner, id, /*output=*/true, after, kPage,
                                                    store::ItemOrder::kAscending);
    if (!page) co_return Failure(page.error());
    if (!*page) co_return NotFound("Response with id '" + ids.at(0) + "' not found.");
    for (store::StoredItem& item : (*page)->items) output.push_back(std::move(item.json));
    if (!(*page)->has_more || (*page)->items.empty() || (*page)->items.back().id.empty()) break;
    after = (*page)->items.back().id;
  }
  co_return RawJsonAnswer(chat::responses::WithStoredOutput(std::move(response.json), output));
}

net::awaitable<http::Response> DeleteResponse(std::shared_ptr<ResponsesDependencies> d,
                                              http::Request&, const Admission::Outcome& admission,
                                              std::vector<std::string> ids) {
  std::string owner = admission.owner();
  std::string id = ids.at(0);
  auto deleted = co_await d->store.DeleteResponse(std::move(owner), std::move(id));
  ForgetChains(*d, deleted);
  if (!deleted) co_return Failure(deleted.error());
  if (!*deleted) co_return NotFound("Response with id '" + ids.at(0) + "' not found.");
  co_return JsonAnswer({{"id", ids.at(0)}, {"object", "response"}, {"deleted", true}});
}

net::awaitable<http::Response> ListInputItems(std::shared_ptr<ResponsesDependencies> d,
                                              http::Request& request,
                                              const Admission::Outcome& admission,
                                              std::vector<std::string> ids) {
  ListQuery query;
  if (auto invalid = ReadListQuery(request, query)) co_return std::move(*invalid);
  std::string owner = admission.owner();
  std::string id = ids.at(0);
  auto page = co_await d->store.ListResponseItems(std::move(owner), std::move(id),
                                                  /*output=*/false, std::move(query.after),
                                                  query.limit, query.order);
  if (!page) co_return Failure(page.error());
  if (!*page) co_return NotFound("Response with id '" + ids.at(0) + "' not found.");
  co_return JsonAnswer(ItemList((*page)->items, (*page)->has_more));
}

// Normalizes a body's `items` (at most 20) into what is stored; or the 400.
std::optional<http::Response> ReadItems(const Json& body, std::vector<store::ItemToStore>& items,
                                        bool required) {
  auto given = body.find("items");
  if (given == body.end() || given->is_null()) {
    if (required) return InvalidRequest("items is required", "items");
    return std::nullopt;
  }
  if (!given->is_array()) return InvalidRequest("items must be an array", "items");
  if (given->size() > kMaxItemsPerCall) {
    return InvalidRequest("items may hold at most 20 items", "items");
  }
  Json normalized;
  if (auto invalid = chat::responses::NormalizeItems(*given, "items", normalized)) {
    return InvalidRequest(*invalid);
  }
  for (const Json& item : normalized) {
    store::ItemToStore one;
    one.id = item.value("id", std::string());
    one.json = item.dump(-1, ' ', false, Json::error_handler_t::replace);
    items.push_back(std::move(one));
  }
  return std::nullopt;
}

net::awaitable<http::Response> CreateConversation(std::shared_ptr<ResponsesDependencies> d,
                                                  http::Request& request,
                                                  const Admission::Outcome& admission,
                                                  std::vector<std::string>) {
  Json body;
  if (auto invalid = ReadObjectBody(request, {"items", "metadata"}, body))
    co_return std::move(*invalid);
  std::vector<store::ItemToStore> items;
  if (auto invalid = ReadItems(body, items, /*required=*/false)) co_return std::move(*invalid);
  Json metadata = body.value("metadata", Json::object());
  if (metadata.is_null()) metadata = Json::object();
  if (auto invalid = CheckMetadata(metadata)) co_return InvalidRequest(*invalid);

  store::StoredConversation conversation;
  conversation.id = chat::responses::NewId("conv");
  conversation.created_at = UnixNow();
  conversation.metadata_json = metadata.dump();
  std::string owner = admission.owner();
  store::StoredConversation stored = conversation;
  Status created =
      co_await d->store.CreateConversation(std::move(owner), std::move(stored), std::move(items));
  if (!created) co_return Failure(created.error());
  co_return JsonAnswer(ConversationJson(conversation));
}

net::awaitable<http::Response> RetrieveConversation(std::shared_ptr<ResponsesDependencies> d,
                                                    http::Request&,
                                                    const Admission::Outcome& admission,
                                                    std::vector<std::string> ids) {
  std::string owner = admission.owner();
  std::string id = ids.at(0);
  auto found = co_await d->store.GetConversation(std::move(owner), std::move(id));
  if (!found) co_return Failure(found.error());
  if (!*found) co_return NotFound("Conversation with id '" + ids.at(0) + "' not found.");
  co_return JsonAnswer(ConversationJson(**found));
}

net::awaitable<http::Response> UpdateConversation(std::shared_ptr<ResponsesDependencies> d,
                                                  http::Request& request,
                                                  const Admission::Outcome& admission,
                                                  std::vector<std::string> ids) {
  Json body;
  if (auto invalid = ReadObjectBody(request, {"metadata"}, body)) co_return std::move(*invalid);
  auto metadata = body.find("metadata");
  if (metadata == body.end()) co_return InvalidRequest("metadata is required", "metadata");
  if (auto invalid = CheckMetadata(*metadata)) co_return InvalidRequest(*invalid);
  std::string owner = admission.owner();
  std::string id = ids.at(0);
  std::string metadata_json = metadata->dump();
  auto updated = co_await d->store.UpdateConversation(std::move(owner), std::move(id),
                                                      std::move(metadata_json));
  if (!updated) co_return Failure(updated.error());
  if (!*updated) co_return NotFound("Conversation with id '" + ids.at(0) + "' not found.");
  co_return JsonAnswer(ConversationJson(**updated));
}

net::awaitable<http::Response> DeleteConversation(std::shared_ptr<ResponsesDependencies> d,
                                                  http::Request&,
                                                  const Admission::Outcome& admission,
                                                  std::vector<std::string> ids) {
  std::string owner = admission.owner();
  std::string id = ids.at(0);
  auto deleted = co_await d->store.DeleteConversation(std::move(owner), std::move(id));
  ForgetChains(*d, deleted);
  if (!deleted) co_return Failure(deleted.error());
  if (!*deleted) co_return NotFound("Conversation with id '" + ids.at(0) + "' not found.");
  co_return JsonAnswer({{"id", ids.at(0)}, {"object", "conversation.deleted"}, {"deleted", true}});
}

net::awaitable<http::Response> AddItems(std::shared_ptr<ResponsesDependencies> d,
                                        http::Request& request, const Admission::Outcome& admission,
                                        std::vector<std::string> ids) {
  Json body;
  if (auto invalid = ReadObjectBody(request, {"items"}, body)) co_return std::move(*invalid);
  std::vector<store::ItemToStore> items;
  if (auto invalid = ReadItems(body, items, /*required=*/true)) co_return std::move(*invalid);
  std::string owner = admission.owner();
  std::string id = ids.at(0);
  auto added =
      co_await d->store.AppendConversationItems(std::move(owner), std::move(id), std::move(items));
  if (!added) co_return Failure(added.error());
  if (!*added) co_return NotFound("Conversation with id '" + ids.at(0) + "' not found.");
  co_return JsonAnswer(ItemList(**added, false));
}

net::awaitable<http::Response> ListItems(std::shared_ptr<ResponsesDependencies> d,
                                         http::Request& request,
                                         const Admission::Outcome& admission,
                                         std::vector<std::string> ids) {
  ListQuery query;
  if (auto invalid = ReadListQuery(request, query)) co_return std::move(*invalid);
  std::string owner = admission.owner();
  std::string id = ids.at(0);
  auto page = co_await d->store.ListConversationItems(
      std::move(owner), std::move(id), std::move(query.after), query.limit, query.order);
  if (!page) co_return Failure(page.error());
  if (!*page) co_return NotFound("Conversation with id '" + ids.at(0) + "' not found.");
  co_return JsonAnswer(ItemList((*page)->items, (*page)->has_more));
}

net::awaitable<http::Response> RetrieveItem(std::shared_ptr<ResponsesDependencies> d,
                                            http::Request&, const Admission::Outcome& admission,
                                            std::vector<std::string> ids) {
  std::string owner = admission.owner();
  std::string id = ids.at(0);
  std::string item_id = ids.at(1);
  auto found =
      co_await d->store.GetConversationItem(std::move(owner), std::move(id), std::move(item_id));
  if (!found) co_return Failure(found.error());
  if (!*found) {
    co_return NotFound("Item with id '" + ids.at(1) + "' not found in conversation '" + ids.at(0) +
                       "'.");
  }
  co_return RawJsonAnswer(std::move((*found)->json));
}

net::awaitable<http::Response> DeleteItem(std::shared_ptr<ResponsesDependencies> d, http::Request&,
                                          const Admission::Outcome& admission,
                                          std::vector<std::string> ids) {
  std::string owner = admission.owner();
  std::string id = ids.at(0);
  std::string item_id = ids.at(1);
  std::string item_owner = owner;
  auto deleted = co_await d->store.DeleteConversationItem(std::move(item_owner), std::move(id),
                                                          std::move(item_id));
  ForgetChains(*d, deleted);
  if (!deleted) co_return Failure(deleted.error());
  if (!*deleted) {
    co_return NotFound("Item with id '" + ids.at(1) + "' not found in conversation '" + ids.at(0) +
                       "'.");
  }
  // OpenAI answers with the conversation the item was deleted from.
  std::string conversation_id = ids.at(0);
  auto found = co_await d->store.GetConversation(std::move(owner), std::move(conversation_id));
  if (!found) co_return Failure(found.error());
  if (!*found) co_return NotFound("Conversation with id '" + ids.at(0) + "' not found.");
  co_return JsonAnswer(ConversationJson(**found));
}

}  // namespace

void RegisterResponsesRoutes(http::Router& router, ResponsesDependencies deps) {
  auto d = std::make_shared<ResponsesDependencies>(std::move(deps));
  const auto* route_limits = &d->responses_limits;
  const auto* no_limits = &kNoLimits;

  Action create = [](std::shared_ptr<ResponsesDependencies> shared, http::Request& request,
                     const Admission::Outcome& admission,
                     std::vector<std::string>) -> net::awaitable<http::Response> {
    co_return co_await CreateResponse(std::move(shared), request, admission);
  };
  router.Add("POST", "/v1/responses", "/v1/responses",
             Route(d, "route:/v1/responses", route_limits, create));
  router.Add("GET", "/v1/responses/{id}", "/v1/responses/{id}",
             Route(d, "route:/v1/responses/{id}", no_limits, RetrieveResponse));
  router.Add("DELETE", "/v1/responses/{id}", "/v1/responses/{id}",
             Route(d, "route:/v1/responses/{id}", no_limits, DeleteResponse));
  router.Add("GET", "/v1/responses/{id}/input_items", "/v1/responses/{id}",
             Route(d, "route:/v1/responses/{id}", no_limits, ListInputItems));

  router.Add("POST", "/v1/conversations", "/v1/conversations",
             Route(d, "route:/v1/conversations", no_limits, CreateConversation));
  router.Add("GET", "/v1/conversations/{id}", "/v1/conversations",
             Route(d, "route:/v1/conversations", no_limits, RetrieveConversation));
  router.Add("POST", "/v1/conversations/{id}", "/v1/conversations",
             Route(d, "route:/v1/conversations", no_limits, UpdateConversation));
  router.Add("DELETE", "/v1/conversations/{id}", "/v1/conversations",
             Route(d, "route:/v1/conversations", no_limits, DeleteConversation));
  router.Add("POST", "/v1/conversations/{id}/items", "/v1/conversations",
             Route(d, "route:/v1/conversations", no_limits, AddItems));
  router.Add("GET", "/v1/conversations/{id}/items", "/v1/conversations",
             Route(d, "route:/v1/conversations", no_limits, ListItems));
  router.Add("GET", "/v1/conversations/{id}/items/{item_id}", "/v1/conversations",
             Route(d, "route:/v1/conversations", no_limits, RetrieveItem));
  router.Add("DELETE", "/v1/conversations/{id}/items/{item_id}", "/v1/conversations",
             Route(d, "route:/v1/conversations", no_limits, DeleteItem));
}

}  // namespace staple::api
