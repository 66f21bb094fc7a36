#pragma once

#include <optional>
#include <string>
#include <vector>

#include "api/auth.h"
#include "api/client_address.h"
#include "api/errors.h"
#include "common/net.h"
#include "http/message.h"
#include "observe/metrics.h"
#include "ratelimit/rate_limiter.h"

namespace staple::api {

struct AdmissionSettings {
  std::vector<ratelimit::RateLimitItem> default_limits;  // per client, shared by all API routes
  bool fail_open = false;                    // limiter storage failure: admit (true) or 503
  std::vector<std::string> trusted_proxies;  // IPs or CIDR networks (validated by config)
  // IPv6 clients are counted per network of this many leading bits (1..128; 128 = per address):
  // one host usually holds a whole /64 and can pick any address in it.
  int ipv6_prefix = 64;
  // Refuse (403) a request whose Host is neither a loopback name or address nor one of
  // `allowed_hosts`: without client keys, a web page could otherwise reach a Staple on localhost
  // through a DNS-rebinding name and spend its key.
  bool check_host = false;
  std::vector<std::string> allowed_hosts;  // lower case, without port
};

// The gate in front of API routes: identifies the client (its address, and with client keys its
// key, see Authenticator), asks the limiter for the global limits (per address) plus the route's
// own and the key's own (per key, or per address without keys) in one all-or-nothing decision,
// and produces either the X-RateLimit-* headers for the answer or the 401/429/503 answer itself.
// Thread-safe.
class Admission {
 public:
  // `auth` (null: STAPLE_AUTH=off) must outlive the admission.
  Admission(ratelimit::RateLimiter& limiter, observe::Metrics& metrics, AdmissionSettings settings,
            const Authenticator* auth = nullptr, keys::KeyRegistry* usage = nullptr);

  struct Outcome {
    std::optional<http::Response> rejection;  // send this instead of handling the request
    http::Headers headers;                    // X-RateLimit-* for the eventual answer
    std::string client;                       // the client's identity (ClientOf)
    std::shared_ptr<const keys::Key> key;     // the caller's key (null without client keys)
    // Whose conversations the request may see: the key's id, "" without client keys.
    const std::string& owner() const { return key ? key->record.id : kNoOwner; }
    // Who the route's and token limits count: "key:<id>", or the address without keys.
    std::string identity() const { return key ? "key:" + key->record.id : client; }

   private:
    static inline const std::string kNoOwner;
  };

  // `route_key` scopes the route's limits (e.g. "/openai-completion"). `request` and
  // `route_limits` must outlive the call (they are the handler's request and configuration).
  net::awaitable<Outcome> Admit(const http::Request& request,
                                const std::vector<ratelimit::RateLimitItem>& route_limits,
                                std::string route_key, ErrorStyle style) const;

  // The client's identity for the limits: ClientKey of the client's address, which is the TCP
  // peer, or, when the peer is a trusted proxy, the nearest untrusted address of X-Forwarded-For
  // (read right to left).
  std::string ClientOf(const http::Request& request) const;

 private:
  // Constant after construction.
  ratelimit::RateLimiter& limiter_;
  observe::Metrics& metrics_;
  const AdmissionSettings settings_;
  const Authenticator* auth_;
  keys::KeyRegistry* usage_;
  const TrustedProxies proxies_;
};

// Copies `headers` into `response`.
void AddHeaders(http::Response& response, const http::Headers& headers);

}  // namespace staple::api
