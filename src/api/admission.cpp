#include "api/admission.h"

#include <algorithm>
#include <boost/asio/ip/network_v4.hpp>
#include <boost/asio/ip/network_v6.hpp>
#include <cctype>
#include <cmath>

#include "api/errors.h"
#include "observe/log.h"

namespace staple::api {
namespace {

std::string Trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t");
  return std::string(text.substr(first, last - first + 1));
}

}  // namespace

Admission::Admission(ratelimit::RateLimiter& limiter, observe::Metrics& metrics,
                     AdmissionSettings settings, const Authenticator* auth,
                     keys::KeyRegistry* usage)
    : limiter_(limiter),
      metrics_(metrics),
      settings_(std::move(settings)),
      auth_(auth),
      usage_(usage) {
  for (const auto& entry : settings_.trusted_proxies) {
    boost::system::error_code ec;
    std::string text = entry;
    if (text.find('/') == std::string::npos) {
      const auto address = net::ip::make_address(text, ec);
      if (ec) continue;
      text += address.is_v4() ? "/32" : "/128";
    }
    auto v4 = net::ip::make_network_v4(text, ec);
    if (!ec) {
      networks_v4_.push_back(v4);
      continue;
    }
    ec.clear();
    auto v6 = net::ip::make_network_v6(text, ec);
    if (!ec) networks_v6_.push_back(v6);
  }
}

bool Admission::Trusted(const std::string& address) const {
  if (networks_v4_.empty() && networks_v6_.empty()) return false;
  boost::system::error_code ec;
  auto parsed = net::ip::make_address(address, ec);
  if (ec) return false;
  if (parsed.is_v6() && parsed.to_v6().is_v4_mapped()) {
    parsed = net::ip::make_address_v4(net::ip::v4_mapped, parsed.to_v6());
  }
  if (parsed.is_v4()) {
    const auto host = net::ip::network_v4(parsed.to_v4(), 32);
    for (const auto& network : networks_v4_) {
      if (host == network || host.is_subnet_of(network)) return true;
    }
  } else {
    const auto host = net::ip::network_v6(parsed.to_v6(), 128);
    for (const auto& network : networks_v6_) {
      if (host == network || host.is_subnet_of(network)) return true;
    }
  }
  return false;
}

std::string ClientKey(const std::string& address, int ipv6_prefix) {
  boost::system::error_code ec;
  const auto parsed = net::ip::make_address(address, ec);
  if (ec) return address;
  if (parsed.is_v4()) return parsed.to_v4().to_string();
  const auto v6 = parsed.to_v6();
  if (v6.is_v4_mapped()) return net::ip::make_address_v4(net::ip::v4_mapped, v6).to_string();
  const int prefix = std::clamp(ipv6_prefix, 1, 128);
  // The scope id (fe80::1%eth0) names an interface, not a client: it is dropped with the mask.
  auto bytes = v6.to_bytes();
  for (int bit = prefix; bit < 128; ++bit) {
    bytes[static_cast<std::size_t>(bit / 8)] &= static_cast<unsigned char>(~(0x80u >> (bit % 8)));
  }
  const std::string network = net::ip::address_v6(bytes).to_string();
  return prefix == 128 ? network : network + "/" + std::to_string(prefix);
}

std::string Admission::ClientOf(const http::Request& request) const {
  return ClientKey(ClientAddressOf(request), settings_.ipv6_prefix);
}

std::string Admission::ClientAddressOf(const http::Request& request) const {
  if (!Trusted(request.peer_address)) return request.peer_address;
  const auto forwarded = request.headers.Get("X-Forwarded-For");
  if (!forwarded) return request.peer_address;
  // Right to left: the last hop was added by the nearest proxy; skip every trusted one.
  std::string_view list = *forwarded;
  std::string candidate = request.peer_address;
  while (!list.empty()) {
    const auto comma = list.rfind(',');
    const auto entry = Trim(comma == std::string_view::npos ? list : list.substr(comma + 1));
    list = comma == std::string_view::npos ? std::string_view() : list.substr(0, comma);
    if (entry.empty()) continue;
    candidate = entry;
    if (!Trusted(entry)) break;
  }
  return candidate;
}

bool HostAllowed(const http::Request& request, const std::vector<std::string>& allowed) {
  const auto host_header = request.headers.Get("Host");
  if (!host_header) return true;
  std::string host(Trim(*host_header));
  // Drop the port: "[::1]:5000" -> "::1", "localhost:5000" -> "localhost".
  if (!host.empty() && host.front() == '[') {
    const auto close = host.find(']');
    host = close == std::string::npos ? std::string() : host.substr(1, close - 1);
  } else if (const auto colon = host.find(':');
             colon != std::string::npos && host.find(':', colon + 1) == std::string::npos) {
    host.resize(colon);
  }
  for (auto& c : host) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (!host.empty() && host.back() == '.') host.pop_back();
  if (host == "localhost" || host.ends_with(".localhost")) return true;
  boost::system::error_code ec;
  const auto address = net::ip::make_address(host, ec);
  if (!ec && address.is_loopback()) return true;
  return std::find(allowed.begin(), allowed.end(), host) != allowed.end();
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
