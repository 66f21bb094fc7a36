#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "api/errors.h"
#include "common/net.h"
#include "http/message.h"
#include "keys/keys.h"
#include "ratelimit/rate_limiter.h"

namespace staple::api {

struct AuthSettings {
  // STAPLE_AUTH=keys: every API route needs a client key. Off: the seed's open behaviour.
  bool required = false;
  // Failed authentications allowed per client address (STAPLE_AUTH_FAILURE_LIMIT).
  std::vector<ratelimit::RateLimitItem> failure_limits;
};

// The secret a request presents: `Authorization: Bearer <secret>` (the scheme in any case) or
// `X-API-Key: <secret>`; "" when it presents none.
std::string_view PresentedSecret(const http::Request& request);

// Client-key authentication of API requests (STAPLE_AUTH=keys). A request without a valid key is
// answered 401 (OpenAI's `invalid_api_key` under /v1, `{"error": "Invalid API key"}` on the seed
// route). Failed attempts are counted per client address against `failure_limits` in the
// limiter's storage (shared by replicas); past the limit the answer is 429 and, on this replica,
// the address's next attempts are refused without looking at their key until the window frees
// capacity, so keys cannot be guessed at speed (with N replicas at most N - 1 more guesses per
// window get through). Neither the key nor its hash is ever written to an answer or a log line.
// Thread-safe.
class Authenticator {
 public:
  Authenticator(const keys::KeyRegistry& registry, ratelimit::RateLimiter& limiter,
                AuthSettings settings);

  struct Outcome {
    std::optional<http::Response> rejection;  // 401/429/503 to send instead
    std::shared_ptr<const keys::Key> key;     // the caller's key when accepted
  };
  // `client` is the request's client address (Admission::ClientOf).
  net::awaitable<Outcome> Authenticate(const http::Request& request, std::string client,
                                       ErrorStyle style) const;

 private:
  // Seconds until `client` may try again, when this replica saw it pass the failure limit.
  std::optional<double> Blocked(const std::string& client, double now) const;
  void Block(const std::string& client, double until) const;

  // Constant after construction.
  const keys::KeyRegistry& registry_;
  ratelimit::RateLimiter& limiter_;
  const AuthSettings settings_;

  mutable std::mutex mutex_;
  mutable std::unordered_map<std::string, double> blocked_;  // client -> Unix time; guarded
};

}  // namespace staple::api
