// X-Forwarded-For against the trusted-proxy list, and the Host check. Input lines: the trusted
// proxies (comma-separated, as STAPLE_TRUSTED_PROXIES), the TCP peer, X-Forwarded-For, Host.
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
