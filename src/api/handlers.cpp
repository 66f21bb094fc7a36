#include "api/handlers.h"

#include <boost/uuid/random_generator.hpp>
#include <boost/uuid/uuid_io.hpp>
#include <charconv>
#include <chrono>
#include <cstdint>

#include "api/errors.h"
#include "common/secure_random.h"

namespace staple::api {
namespace {

using nlohmann::json;

constexpr std::size_t kDefaultPageSize = 100;
constexpr std::size_t kMaxPageSize = 1000;
const std::vector<ratelimit::RateLimitItem> kNoLimits;

json MessageJson(const store::StoredMessage& m) {
  json out = {{"id", m.id},
              {"role", m.role},
              {"content", m.content},
              {"timestamp", m.timestamp},
              {"request_id", m.request_id},
              {"model", m.model}};
  out["prompt_tokens"] = m.prompt_tokens ? json(*m.prompt_tokens) : json(nullptr);
  out["completion_tokens"] = m.completion_tokens ? json(*m.completion_tokens) : json(nullptr);
  out["latency_ms"] = m.latency_ms ? json(*m.latency_ms) : json(nullptr);
  return out;
}

net::awaitable<Status> WriteDelta(http::BodyWriter* writer, std::string delta) {
  nlohmann::json event = {{"delta", std::move(delta)}};
  std::string data = "data: " + event.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
  Status written = co_await writer->Write(std::move(data));
  co_return written;
}

net::awaitable<Status> WriteFinal(http::BodyWriter* writer, std::string user_id,
                                  chat::Completion completion) {
  nlohmann::json event = {{"user_id", std::move(user_id)}, {"completion", completion.text}};
  std::string data = "data: " + event.dump(-1, ' ', false, json::error_handler_t::replace) +
                     "\n\ndata: [DONE]\n\n";
  Status written = co_await writer->Write(std::move(data));
  co_return written;
}

// The body of a streamed seed answer: one event per upstream content piece, then (once the turn
// is durable) the seed's usual object and "[DONE]". A failure after the headers went out ends the
// stream with an error event instead; a client that went away ends it silently.
net::awaitable<void> RelaySeedStream(std::shared_ptr<chat::CompletionStream> stream,
                                     std::string user_id, http::BodyWriter* writer) {
  chat::CompletionStream::DeltaSink deltas = [writer](std::string delta) {
    return WriteDelta(writer, std::move(delta));
  };
  chat::CompletionStream::DoneSink done = [writer, user_id](chat::Completion completion) {
    return WriteFinal(writer, user_id, std::move(completion));
  };
  Status relayed = co_await stream->Run(std::move(deltas), std::move(done));
  if (relayed || relayed.error().kind == ErrorKind::kCancelled) co_return;
  std::string event = FailureEvent(relayed.error(), ErrorStyle::kSeed);
  Status written = co_await writer->Write(std::move(event));
  (void)written;  // the client may be gone: nothing left to do either way
}

http::Response SeedStreamResponse(std::unique_ptr<chat::CompletionStream> stream,
                                  std::string user_id) {
  http::Response response;
  response.headers.Add("Content-Type", "text/event-stream; charset=utf-8");
  response.headers.Add("Cache-Control", "no-cache");
  AddUpstreamHeader(response, stream->upstream());
  std::shared_ptr<chat::CompletionStream> shared = std::move(stream);
  response.stream = [shared, user_id](http::BodyWriter& writer) {
    return RelaySeedStream(shared, user_id, &writer);
  };
  return response;
}

// What a /users/{user_id}/messages route does once admitted, given the decoded id.
// `owner` is the caller's key id ("" without client keys): only its conversations are seen.
using MessagesAction = std::function<net::awaitable<http::Response>(
    Dependencies& deps, const http::Request& request, std::string owner, std::string user_id)>;

// The shared frame of the /users/{user_id}/messages routes: admission (global limits only), the
// decoded id, and the admission's headers on the answer.
http::Handler MessagesRoute(std::shared_ptr<Dependencies> deps, MessagesAction action) {
  return [deps, action](http::Request& request) -> net::awaitable<http::Response> {
    std::string scope = "route:messages";
    auto admission =
        co_await deps->admission.Admit(request, kNoLimits, std::move(scope), ErrorStyle::kSeed);
    if (admission.rejection) co_return std::move(*admission.rejection);
    std::string user_id = DecodePathSegment(request.path_params.at(0));
    // The body's bound applies to the path too: a 10 KB id is refused before it reaches the store
    // or any log line.
    if (user_id.size() > kMaxUserIdLength) {
      http::Response refused = SeedError(
          400, "user_id is too long (at most " + std::to_string(kMaxUserIdLength) + " bytes)");
      AddHeaders(refused, admission.headers);
      co_return refused;
    }
    std::string owner = admission.owner();
    http::Response response = co_await action(*deps, request, std::move(owner), std::move(user_id));
    AddHeaders(response, admission.headers);
    co_return response;
  };
}

}  // namespace

net::awaitable<http::Response> ListConversationMessages(store::ConversationStore& store,
                                                        const http::Request& request,
                                                        std::string owner, std::string user_id) {
  std::int64_t after = 0;
  std::size_t limit = kDefaultPageSize;
  if (auto text = QueryValue(request.query, "after")) {
    auto value = ParseNonNegative(*text);
    if (!value) co_return SeedError(400, "after must be a non-negative integer");
    after = *value;
  }
  if (auto text = QueryValue(request.query, "limit")) {
    auto value = ParseNonNegative(*text);
    if (!value || *value < 1 || static_cast<std::size_t>(*value) > kMaxPageSize) {
      co_return SeedError(400,
                          "limit must be an integer from 1 to " + std::to_string(kMaxPageSize));
    }
    limit = static_cast<std::size_t>(*value);
  }
  std::string conversation = user_id;
  auto page = co_await store.ListMessages(std::move(owner), std::move(conversation), after, limit);
  if (!page) co_return FailureAnswer(page.error(), ErrorStyle::kSeed);
  json messages = json::array();
  for (const auto& m : page->messages) messages.push_back(MessageJson(m));
  json body = {
      {"user_id", user_id}, {"messages", std::move(messages)}, {"has_more", page->has_more}};
  body["next_after"] =
      page->has_more && !page->messages.empty() ? json(page->messages.back().id) : json(nullptr);
  co_return http::JsonResponse(200, body);
}

net::awaitable<http::Response> DeleteConversationMessages(store::ConversationStore& store,
                                                          std::string owner, std::string user_id) {
  std::string conversation = user_id;
  auto deleted = co_await store.DeleteMessages(std::move(owner), std::move(conversation));
  if (!deleted) co_return FailureAnswer(deleted.error(), ErrorStyle::kSeed);
  co_return http::JsonResponse(200, {{"user_id", user_id}, {"deleted", *deleted}});
}

namespace {

net::awaitable<http::Response> ListMessages(Dependencies& d, const http::Request& request,
                                            std::string owner, std::string user_id) {
  return ListConversationMessages(d.store, request, std::move(owner), std::move(user_id));
}

net::awaitable<http::Response> DeleteMessages(Dependencies& d, const http::Request& /*request*/,
                                              std::string owner, std::string user_id) {
  return DeleteConversationMessages(d.store, std::move(owner), std::move(user_id));
}

}  // namespace

std::optional<std::string_view> QueryValue(std::string_view query, std::string_view key) {
  while (!query.empty()) {
    const auto amp = query.find('&');
    const auto pair = query.substr(0, amp);
    const auto equals = pair.find('=');
    if (pair.substr(0, equals) == key) {
      return equals == std::string_view::npos ? std::string_view() : pair.substr(equals + 1);
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

std::optional<std::int64_t> ParseNonNegative(std::string_view text) {
  std::int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value < 0) {
    return std::nullopt;
  }
  return value;
}

std::string NewUserId() {
  // A conversation id is all it takes to read the conversation when client keys are off: it must
  // not be guessable, so its random bits come from a CSPRNG (common/secure_random.h; a generator
  // per thread, since it is not thread-safe). It is a version-7 UUID (RFC 9562): the creation time
  // in Unix milliseconds in the first 48 bits, then 74 random bits (more than the 64 that OWASP
  // asks of a session id). Ids made later sort after earlier ones, so a new conversation's entry in
  // the messages index (owner, user_id, id) lands on the index's last leaf, which the commit before
  // wrote too. With version-4 ids every new conversation dirtied a random leaf of its own, which
  // the commit wrote to the WAL and the checkpoint copied and synced again: the writer thread's CPU
  // per /v1 request halved with this change (bench/RESULTS.md, "Time-ordered ids round").
  // Boost 1.74 has no version-7 generator (1.86 has): the version-4 generator's bits are taken and
  // the first 48 replaced with the time, the version nibble set to 7; the variant bits (10) that
  // generator sets are version 7's too.
  thread_local SecureRandomEngine engine;
  thread_local boost::uuids::basic_random_generator<SecureRandomEngine> generate(engine);
  boost::uuids::uuid id = generate();
  const auto millis =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
  for (int i = 0; i < 6; ++i) id.data[i] = static_cast<std::uint8_t>(millis >> (40 - 8 * i));
  id.data[6] = static_cast<std::uint8_t>(0x70 | (id.data[6] & 0x0f));
  return boost::uuids::to_string(id);
}

void RegisterRoutes(http::Router& router, Dependencies deps) {
  auto shared = std::make_shared<Dependencies>(std::move(deps));

  router.Add("POST", "/openai-completion", "/openai-completion",
             [d = shared](http::Request& request) -> net::awaitable<http::Response> {
               const auto received_at = std::chrono::system_clock::now();
               // Limits first, as Flask-Limiter does: rejected requests never cost an upstream
               // call.
               std::string scope = "route:/openai-completion";
               auto admission = co_await d->admission.Admit(request, d->completion_limits,
                                                            std::move(scope), ErrorStyle::kSeed);
               if (admission.rejection) co_return std::move(*admission.rejection);

               SeedRequest parsed;
               auto invalid = ParseSeedRequest(request, parsed);
               http::Response response;
               if (invalid) {
                 response = std::move(*invalid);
               } else if (admission.key && !admission.key->AllowsModel(d->conversations.model())) {
                 response = SeedError(
                     403, "This API key may not use the model '" + d->conversations.model() + "'");
               } else {
                 auto user_id = parsed.user_id.empty() ? NewUserId() : parsed.user_id;
                 // Arguments are built before the co_await: g++ 12 destroys temporaries of a
                 // co_await expression twice.
                 auto ticket = d->tokens.Ticket(admission, ErrorStyle::kSeed);
                 chat::CompletionRequest ask{admission.owner(),
                                             user_id,
                                             std::move(parsed.prompt),
                                             request.request_id,
                                             received_at,
                                             parsed.user_id.empty(),
                                             ticket,
                                             &request.note};
                 auto error_answer = [&ticket](const Error& error) {
                   return error.kind == ErrorKind::kLimited && ticket
                              ? ticket->TakeRejection()
                              : FailureAnswer(error, ErrorStyle::kSeed);
                 };
                 if (parsed.stream) {
                   auto opened = co_await d->conversations.OpenStream(std::move(ask));
                   if (opened) {
                     response = SeedStreamResponse(std::move(opened).value(), std::move(user_id));
                   } else {
                     response = error_answer(opened.error());
                   }
                 } else {
                   auto completion = co_await d->conversations.Complete(std::move(ask));
                   if (completion) {
                     response = http::JsonResponse(
                         200, {{"user_id", user_id}, {"completion", completion->text}});
                     AddUpstreamHeader(response, completion->upstream);
                   } else {
                     response = error_answer(completion.error());
                   }
                 }
                 if (ticket) AddHeaders(response, ticket->headers());
               }
               AddHeaders(response, admission.headers);
               co_return response;
             });

  router.Add("GET", "/users/{user_id}/messages", "/users/{user_id}/messages",
             MessagesRoute(shared, ListMessages));
  router.Add("DELETE", "/users/{user_id}/messages", "/users/{user_id}/messages",
             MessagesRoute(shared, DeleteMessages));

  router.Add("GET", "/healthz", "healthz", [](http::Request&) -> net::awaitable<http::Response> {
    co_return http::JsonResponse(200, {{"status", "ok"}});
  });

  router.Add(
      "GET", "/readyz", "readyz", [d = shared](http::Request&) -> net::awaitable<http::Response> {
        auto store = co_await d->store.Ping();
        auto limiter = co_await d->limiter.Ping();
        const bool ready = store.ok() && limiter.ok();
        nlohmann::json body = {{"status", ready ? "ready" : "unavailable"},
                               {"store", store ? std::string("ok") : store.error().message},
                               {"limiter", limiter ? std::string("ok") : limiter.error().message}};
        if (d->upstream_states) {
          nlohmann::json upstreams = nlohmann::json::object();
          for (const auto& [name, state] : d->upstream_states()) upstreams[name] = state;
          body["upstreams"] = std::move(upstreams);
        }
        co_return http::JsonResponse(ready ? 200 : 503, std::move(body));
      });

  router.Add("GET", "/metrics", "/metrics",
             [d = shared](http::Request&) -> net::awaitable<http::Response> {
               http::Response response;
               response.headers.Add("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
               response.body = d->metrics.Render();
               co_return response;
             });
}

}  // namespace staple::api
