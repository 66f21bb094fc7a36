#include "common/ip_networks.h"

#include <algorithm>

namespace staple {

IpNetworks::IpNetworks(const std::vector<std::string>& entries) {
  for (const auto& entry : entries) {
    boost::system::error_code ec;
    std::string text = entry;
    if (text.find('/') == std::string::npos) {
      const auto address = net::ip::make_address(text, ec);
      if (ec) continue;
      text += address.is_v4() ? "/32" : "/128";
    }
    const auto v4 = net::ip::make_network_v4(text, ec);
    if (!ec) {
      v4_.push_back(v4);
      continue;
    }
    ec.clear();
    const auto v6 = net::ip::make_network_v6(text, ec);
    if (!ec) v6_.push_back(v6);
  }
}

bool IpNetworks::Contains(std::string_view address) const {
  if (v4_.empty() && v6_.empty()) return false;
  boost::system::error_code ec;
  auto parsed = net::ip::make_address(std::string(address), ec);
  if (ec) return false;
  if (parsed.is_v6() && parsed.to_v6().is_v4_mapped()) {
    parsed = net::ip::make_address_v4(net::ip::v4_mapped, parsed.to_v6());
  }
  if (parsed.is_v4()) {
    const net::ip::network_v4 host(parsed.to_v4(), 32);
    return std::any_of(v4_.begin(), v4_.end(), [&](const auto& network) {
      return host == network || host.is_subnet_of(network);
    });
  }
  const net::ip::network_v6 host(parsed.to_v6(), 128);
  return std::any_of(v6_.begin(), v6_.end(), [&](const auto& network) {
    return host == network || host.is_subnet_of(network);
  });
}

}  // namespace staple
