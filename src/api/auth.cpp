#include "api/auth.h"

#include <chrono>

#include "observe/log.h"

namespace staple::api {
namespace {

// This replica's memory of blocked addresses stays bounded: past this many, expired entries are
// dropped, and if none has expired the oldest decisions are simply forgotten (the shared counter
// still refuses their next failure).
constexpr std::size_t kMaxBlocked = 100'000;

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

const char* VerdictName(keys::KeyRegistry::Verdict verdict) {
  switch (verdict) {
    case keys::KeyRegistry::Verdict::kValid:
      return "valid";
    case keys::KeyRegistry::Verdict::kExpired:
      return "expired";
    case keys::KeyRegistry::Verdict::kRevoked:
      return "revoked";
    case keys::KeyRegistry::Verdict::kUnknown:
      break;
  }
  return "unknown";
}

http::Response Unauthorized(ErrorStyle style, std::string_view message) {
  http::Response response =
      style == ErrorStyle::kSeed
          ? SeedError(401, "Invalid API key")
          : OpenAIError(401, message, "invalid_request_error", "invalid_api_key");
  response.headers.Add("WWW-Authenticate", "Bearer");
  return response;
}

}  // namespace

std::string_view PresentedSecret(const http::Request& request) {
  if (auto authorization = request.headers.Get("Authorization")) {
    std::string_view value = Trim(*authorization);
    constexpr std::string_view kBearer = "bearer ";
    if (value.size() > kBearer.size() &&
        http::EqualsIgnoreCase(value.substr(0, kBearer.size()), kBearer)) {
      return Trim(value.substr(kBearer.size()));
    }
  }
  if (auto api_key = request.headers.Get("X-API-Key")) return Trim(*api_key);
  return {};
}

Authenticator::Authenticator(const keys::KeyRegistry& registry, ratelimit::RateLimiter& limiter,
                             AuthSettings settings)
    : registry_(registry), limiter_(limiter), settings_(std::move(settings)) {}

std::optional<double> Authenticator::Blocked(const std::string& client, double now) const {
  std::lock_guard lock(mutex_);
  auto it = blocked_.find(client);
  if (it == blocked_.end()) return std::nullopt;
  if (it->second <= now) {
    blocked_.erase(it);
    return std::nullopt;
  }
  return it->second - now;
}

void Authenticator::Block(const std::string& client, double until) const {
  std::lock_guard lock(mutex_);
  if (blocked_.size() >= kMaxBlocked) {
    const double now = NowSeconds();
    std::erase_if(blocked_, [now](const auto& entry) { return entry.second <= now; });
    if (blocked_.size() >= kMaxBlocked) blocked_.clear();
  }
  blocked_[client] = until;
}

net::awaitable<Authenticator::Outcome> Authenticator::Authenticate(const http::Request& request,
                                                                   std::string client,
                                                                   ErrorStyle style) const {
  Outcome outcome;
  const double now = NowSeconds();
  const std::string limit_message = "too many failed authentications from this address";
  if (auto wait = Blocked(client, now)) {
    outcome.rejection = LimitExceeded(style, limit_message, "Rate limit exceeded: " + limit_message,
                                      "requests", http::Headers(), *wait);
    co_return outcome;
  }

  const std::string_view secret = PresentedSecret(request);
  keys::KeyRegistry::Authenticated found;
  if (!secret.empty()) found = registry_.Authenticate(secret, static_cast<std::int64_t>(now));
  if (found.verdict == keys::KeyRegistry::Verdict::kValid) {
    outcome.key = std::move(found.key);
    co_return outcome;
  }

  // A failed attempt: the key id and name only, never the secret or its hash.
  observe::Fields fields = {{"client", client},
                            {"request_id", request.request_id},
                            {"reason", secret.empty() ? "missing" : VerdictName(found.verdict)}};
  if (found.key) {
    fields.emplace_back("key_id", found.key->record.id);
    fields.emplace_back("key_name", found.key->record.name);
  }
  observe::Warn("authentication failed", fields);

  if (!settings_.failure_limits.empty()) {
    std::vector<ratelimit::Check> checks;
    for (const auto& item : settings_.failure_limits)
      checks.push_back({item, "authfail:" + client});
    auto decision = co_await limiter_.Acquire(std::move(checks), 1);
    if (decision && !decision->allowed) {
      Block(client, now + decision->retry_after);
      outcome.rejection =
          LimitExceeded(style, limit_message, "Rate limit exceeded: " + limit_message, "requests",
                        http::Headers(), decision->retry_after);
      co_return outcome;
    }
    // Limiter storage down: the attempt was refused anyway; say why it was.
  }
  std::string message;
  if (secret.empty()) {
    message = "Missing API key: send it as 'Authorization: Bearer sk-staple-...'";
  } else if (found.verdict == keys::KeyRegistry::Verdict::kExpired) {
    message = "API key expired";
  } else if (found.verdict == keys::KeyRegistry::Verdict::kRevoked) {
    message = "API key revoked";
  } else {
    message = "Invalid API key";
  }
  outcome.rejection = Unauthorized(style, message);
  co_return outcome;
}

}  // namespace staple::api
