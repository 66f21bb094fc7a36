#include "api/client_address.h"

#include <algorithm>
#include <cctype>

namespace staple::api {
namespace {

std::string Trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t");
  return std::string(text.substr(first, last - first + 1));
}

}  // namespace

std::string ClientAddress(const std::string& peer, std::optional<std::string_view> forwarded_for,
                          const TrustedProxies& proxies) {
  if (!forwarded_for || !proxies.Contains(peer)) return peer;
  // Right to left: the last hop was added by the nearest proxy; skip every trusted one.
  std::string_view list = *forwarded_for;
  std::string candidate = peer;
  while (!list.empty()) {
    const auto comma = list.rfind(',');
    const auto entry = Trim(comma == std::string_view::npos ? list : list.substr(comma + 1));
    list = comma == std::string_view::npos ? std::string_view() : list.substr(0, comma);
    if (entry.empty()) continue;
    candidate = entry;
    if (!proxies.Contains(entry)) break;
  }
  return candidate;
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

}  // namespace staple::api
