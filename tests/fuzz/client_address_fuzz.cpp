// X-Forwarded-For against the trusted-proxy list, and the Host check. Input lines: the trusted
// proxies (comma-separated, as STAPLE_TRUSTED_PROXIES), the TCP peer, X-Forwarded-For, Host.
#include <boost/asio/ip/network_v6.hpp>
#include <string>
#include <vector>

#include "api/client_address.h"
#include "fuzz_check.h"

namespace {

std::string_view NextLine(std::string_view& text) {
  const auto newline = text.find('\n');
  const auto line = text.substr(0, newline);
  text = newline == std::string_view::npos ? std::string_view() : text.substr(newline + 1);
  return line;
}

std::string Trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  return std::string(text.substr(first, text.find_last_not_of(" \t") - first + 1));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto text = staple::fuzz::AsText(data, size);
  std::vector<std::string> entries;
  const auto list = NextLine(text);
  for (std::size_t start = 0; start <= list.size();) {
    const auto comma = list.find(',', start);
    const auto end = comma == std::string_view::npos ? list.size() : comma;
    entries.push_back(Trim(list.substr(start, end - start)));
    start = end + 1;
  }
  const staple::api::TrustedProxies proxies(entries);
  FUZZ_CHECK(proxies.size() <= entries.size());
  const std::string peer(NextLine(text));
  const bool has_forwarded = !text.empty();
  const auto forwarded = NextLine(text);
  const auto host = NextLine(text);

  const std::string client = staple::api::ClientAddress(
      peer, has_forwarded ? std::optional<std::string_view>(forwarded) : std::nullopt, proxies);
  if (!proxies.Contains(peer) || !has_forwarded) {
    FUZZ_CHECK(client == peer);
  } else {
    // The client is the peer or an entry; every entry to its right is a trusted proxy, and it is
    // not one itself unless it is the leftmost.
    std::vector<std::string> hops;
    for (std::size_t start = 0; start <= forwarded.size();) {
      const auto comma = forwarded.find(',', start);
      const auto end = comma == std::string_view::npos ? forwarded.size() : comma;
      if (auto hop = Trim(forwarded.substr(start, end - start)); !hop.empty()) hops.push_back(hop);
      start = end + 1;
    }
    if (hops.empty()) {
      FUZZ_CHECK(client == peer);
    } else {
      std::size_t i = hops.size();
      while (i > 1 && proxies.Contains(hops[i - 1])) --i;
      FUZZ_CHECK(client == hops[i - 1]);
    }
  }

  // The limits' identity of the client: a canonical address or IPv6 network, stable when applied
  // again; anything else unchanged.
  const int prefix = 1 + static_cast<int>(size % 128);
  const std::string key = staple::api::ClientKey(client, prefix);
  boost::system::error_code ec;
  const auto address = staple::net::ip::make_address(client, ec);
  if (ec) {
    FUZZ_CHECK(key == client);
  } else if (address.is_v4() || address.to_v6().is_v4_mapped() || prefix == 128) {
    FUZZ_CHECK(staple::api::ClientKey(key, prefix) == key);
    staple::net::ip::make_address(key, ec);
    FUZZ_CHECK(!ec);
  } else {
    const auto network = staple::net::ip::make_network_v6(key, ec);
    FUZZ_CHECK(!ec);
    FUZZ_CHECK(network.prefix_length() == prefix);
    FUZZ_CHECK(network.network().to_string() + "/" + std::to_string(prefix) == key);
    // The client's address (without its scope id) lies in that network.
    const staple::net::ip::network_v6 single(
        staple::net::ip::address_v6(address.to_v6().to_bytes()), 128);
    FUZZ_CHECK(single.is_subnet_of(network));
  }

  // The Host check ignores case and the port.
  staple::http::Request request;
  request.headers.Add("Host", std::string(host));
  std::string upper(host);
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  staple::http::Request shouted;
  shouted.headers.Add("Host", upper);
  const std::vector<std::string> allowed = {"gateway.internal"};
  FUZZ_CHECK(staple::api::HostAllowed(request, allowed) ==
             staple::api::HostAllowed(shouted, allowed));
  return 0;
}
