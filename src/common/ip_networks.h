#pragma once

#include <boost/asio/ip/network_v4.hpp>
#include <boost/asio/ip/network_v6.hpp>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "common/net.h"

namespace staple {

// A set of IP networks, v4 and v6, read from addresses ("10.0.0.1", "::1") and CIDR networks
// ("10.0.0.0/8", "fd00::/8"): the trusted proxies (STAPLE_TRUSTED_PROXIES), whose X-Forwarded-For
// the limits believe and whose connections have no per-address share. Constant after construction;
// thread-safe.
class IpNetworks {
 public:
  IpNetworks() = default;
  // Entries that are neither an address nor a network are skipped (the configuration has refused
  // them already).
  explicit IpNetworks(const std::vector<std::string>& entries);

  // Whether `address` (an IPv4 or IPv6 address; an IPv4-mapped IPv6 address counts as its IPv4
  // address) lies in one of the networks. False for anything that is not an address.
  bool Contains(std::string_view address) const;

  std::size_t size() const { return v4_.size() + v6_.size(); }

 private:
  std::vector<net::ip::network_v4> v4_;
  std::vector<net::ip::network_v6> v6_;
};

}  // namespace staple
