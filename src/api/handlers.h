#pragma once

#include <vector>

#include "api/admission.h"
#include "api/token_limits.h"
#include "chat/conversation_service.h"
#include "http/router.h"
#include "observe/metrics.h"
#include "ratelimit/rate_limiter.h"
#include "store/conversation_store.h"

namespace staple::api {

// What the handlers need, chosen once at start-up. All references outlive the router.
struct Dependencies {
  chat::ConversationService& conversations;
  store::ConversationStore& store;
  ratelimit::RateLimiter& limiter;
  observe::Metrics& metrics;
  const Admission& admission;
  const TokenLimits& tokens;
  std::vector<ratelimit::RateLimitItem> completion_limits;  // per client on /openai-completion
};

// Adds every route: POST /openai-completion, GET/DELETE /users/{user_id}/messages, GET /healthz,
// GET /readyz, GET /metrics.
void RegisterRoutes(http::Router& router, Dependencies deps);

// Request-body checks of the seed endpoint, as plain functions (tested without a server).
struct SeedRequest {
  std::string prompt;
  std::string user_id;  // empty when the client sent none
  bool stream = false;  // "stream": true asks for server-sent events
};
// Validates Content-Type and body into `parsed`; when invalid, returns the 400/415 answer instead.
std::optional<http::Response> ParseSeedRequest(const http::Request& request, SeedRequest& parsed);

// Whether a Content-Type value names application/json (parameters such as charset allowed).
bool IsJsonContentType(std::string_view value);

// A new conversation id: a lower-case RFC 4122 version-4 UUID.
std::string NewUserId();

// Percent-decodes a path segment; invalid escapes are kept as they are.
std::string DecodePathSegment(std::string_view segment);

}  // namespace staple::api
