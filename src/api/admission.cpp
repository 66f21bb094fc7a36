#include "api/admission.h"

#include <algorithm>
#include <cmath>

#include "api/errors.h"
#include "observe/log.h"

namespace staple::api {

Admission::Admission(ratelimit::RateLimiter& limiter, observe::Metrics& metrics,
                     AdmissionSettings settings, const Authenticator* auth,
                     keys::KeyRegistry* usage)
    : limiter_(limiter),
      metrics_(metrics),
      settings_(std::move(settings)),
      auth_(auth),
      usage_(usage),
      proxies_(settings_.trusted_proxies) {}

std::string Admission::ClientOf(const http::Request& request) const {
  return ClientKey(
      ClientAddress(request.peer_address, request.headers.Get("X-Forwarded-For"), proxies_),
      settings_.ipv6_prefix);
}

net::awaitable<Admission::Outcome> Admission::Admit(
    const http::Request& request, const std::vector<ratelimit::RateLimitItem>& route_limits,
    std::string route_key, ErrorStyle style) const {
  Outcome outcome;
  if (settings_.check_host && !HostAllowed(request, settings_.allowed_hosts)) {
    const std::string message =
        "Host '" + std::string(request.headers.Get("Host").value_or("")) +
        "' is not allowed: without client keys Staple answers only requests addressed to "
        "localhost or to a name in STAPLE_ALLOWED_HOSTS";
    outcome.rejection =
        style == ErrorStyle::kSeed
            ? SeedError(403, message)
            : OpenAIError(403, message, "invalid_request_error", "host_not_allowed");
    co_return outcome;
  }
  outcome.client = ClientOf(request);
  if (auth_ != nullptr) {
    auto authenticated = co_await auth_->Authenticate(request, outcome.client, style);
    if (authenticated.rejection) {
      outcome.rejection = std::move(authenticated.rejection);
      co_return outcome;
    }
    outcome.key = std::move(authenticated.key);
  }
  const auto* key_limits = outcome.key ? &outcome.key->request_limits : nullptr;
  const std::size_t key_count = key_limits != nullptr ? key_limits->size() : 0;
  if (settings_.default_limits.empty() && route_limits.empty() && key_count == 0) {
    if (outcome.key && usage_ != nullptr) usage_->Record(outcome.key->record.id, 1, 0, 0);
    co_return outcome;
  }
  // The global limits count the address; the route's and the key's count the key when there is
  // one (the address otherwise).
  const std::string identity = outcome.identity();
  std::vector<ratelimit::Check> checks;
  checks.reserve(settings_.default_limits.size() + route_limits.size() + key_count);
  for (const auto& item : settings_.default_limits) {
    checks.push_back({item, "global:" + outcome.client});
  }
  for (const auto& item : route_limits) checks.push_back({item, route_key + ":" + identity});
  for (std::size_t i = 0; i < key_count; ++i) {
    checks.push_back({(*key_limits)[i], "keylimit:" + identity});
  }

  // Moved in (a named argument: see the co_await note in docs/STYLE.md).
  auto decision = co_await limiter_.Acquire(std::move(checks), 1);
  if (!decision) {
    metrics_.CountLimiterError();
    observe::Warn(
        "rate limiter unavailable",
        {{"error", decision.error().message}, {"policy", settings_.fail_open ? "open" : "closed"}});
    if (settings_.fail_open) co_return outcome;
    outcome.rejection = LimiterUnavailable(style);
    co_return outcome;
  }
  metrics_.CountLimiterDecision(decision->allowed);
  const auto& state = decision->state;
  outcome.headers.Add("X-RateLimit-Limit", std::to_string(state.limit));
  outcome.headers.Add("X-RateLimit-Remaining", std::to_string(state.remaining));
  outcome.headers.Add("X-RateLimit-Reset",
                      std::to_string(static_cast<std::int64_t>(std::ceil(state.reset_at))));
  if (decision->allowed) {
    if (outcome.key && usage_ != nullptr) usage_->Record(outcome.key->record.id, 1, 0, 0);
    co_return outcome;
  }
  // The refusal names its limit by position: the default limits, the route's, then the key's.
  std::size_t deciding = decision->deciding;
  const ratelimit::RateLimitItem* deciding_item = nullptr;
  if (deciding < settings_.default_limits.size()) {
    deciding_item = &settings_.default_limits[deciding];
  } else if ((deciding -= settings_.default_limits.size()) < route_limits.size()) {
    deciding_item = &route_limits[deciding];
  } else {
    deciding_item = &(*key_limits)[deciding - route_limits.size()];
  }
  const auto limit_text = deciding_item->ToString();
  outcome.rejection = LimitExceeded(style, limit_text, "Rate limit exceeded: " + limit_text,
                                    "requests", outcome.headers, decision->retry_after);
  co_return outcome;
}

void AddHeaders(http::Response& response, const http::Headers& headers) {
  for (const auto& [name, value] : headers.fields()) response.headers.Add(name, value);
}

}  // namespace staple::api
