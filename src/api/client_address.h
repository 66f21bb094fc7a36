#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/ip_networks.h"
#include "common/net.h"
#include "http/message.h"

namespace staple::api {

// The proxies whose X-Forwarded-For is believed (common/ip_networks.h).
using TrustedProxies = IpNetworks;

// The client's address: `peer` (the TCP peer), or, when the peer is a trusted proxy, the nearest
// untrusted address of `forwarded_for` (the X-Forwarded-For value, read right to left; empty
// entries are skipped; the leftmost entry when all are trusted).
std::string ClientAddress(const std::string& peer, std::optional<std::string_view> forwarded_for,
                          const TrustedProxies& proxies);

// The identity the limits count for a client `address`: an IPv4 address as is (an IPv4-mapped
// IPv6 address as its IPv4 address), an IPv6 address as its network of `ipv6_prefix` bits in
// canonical form ("2001:db8:1:2::/64"; the canonical address itself for 128). Text that is not an
// IP address is returned unchanged.
std::string ClientKey(const std::string& address, int ipv6_prefix);

// Whether the Host header of `request` names this machine's loopback (localhost, 127.0.0.0/8,
// [::1]) or one of `allowed` (lower case), whatever its port. A request without Host is allowed
// (HTTP/1.0; HTTP/1.1 requires it and the server refuses its absence).
bool HostAllowed(const http::Request& request, const std::vector<std::string>& allowed);

}  // namespace staple::api
