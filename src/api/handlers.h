#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "api/admission.h"
#include "api/seed_request.h"
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
  // Several upstreams: each one's state for /readyz ("ok" or "cooling down"), by name. Null with
  // a single upstream. Informative only: a cooling upstream does not make the gateway unready.
  std::function<std::vector<std::pair<std::string, std::string>>()> upstream_states;
};

// Adds every route: POST /openai-completion, GET/DELETE /users/{user_id}/messages, GET /healthz,
// GET /readyz, GET /metrics.
void RegisterRoutes(http::Router& router, Dependencies deps);

// GET /users/{user_id}/messages's answer for (owner, user_id): `after` and `limit` from the
// query (400 when invalid), a page of messages oldest first. The admin API's conversation routes
// answer the same for any owner.
net::awaitable<http::Response> ListConversationMessages(store::ConversationStore& store,
                                                        const http::Request& request,
                                                        std::string owner, std::string user_id);
// DELETE's: {"user_id", "deleted": n}.
net::awaitable<http::Response> DeleteConversationMessages(store::ConversationStore& store,
                                                          std::string owner, std::string user_id);

// A new conversation id: a lower-case RFC 9562 version-7 UUID (time-ordered, 74 random bits).
std::string NewUserId();

// The value of `key` in a query string, not decoded (ids and numbers only); std::nullopt when
// absent.
std::optional<std::string_view> QueryValue(std::string_view query, std::string_view key);

// A decimal integer ≥ 0 and nothing else, else std::nullopt.
std::optional<std::int64_t> ParseNonNegative(std::string_view text);

}  // namespace staple::api
