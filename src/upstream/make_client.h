#pragma once

#include <memory>
#include <optional>
#include <string_view>

#include "upstream/client.h"

namespace staple::upstream {

// Which HTTP client talks to an upstream (STAPLE_UPSTREAM_CLIENT).
enum class ClientKind {
  kAuto,  // AsioClient, unless a proxy is configured or the base URL needs libcurl
  kAsio,  // AsioClient (asio_client.h)
  kCurl,  // CurlClient (curl_client.h): proxies, HTTP/2
};

// "auto", "asio", "curl"; std::nullopt for anything else. Inline: config/ reads it without
// linking the clients.
inline std::optional<ClientKind> ParseClientKind(std::string_view text) {
  if (text == "auto") return ClientKind::kAuto;
  if (text == "asio") return ClientKind::kAsio;
  if (text == "curl") return ClientKind::kCurl;
  return std::nullopt;
}
std::string_view ClientKindName(ClientKind kind);

// Whether the environment names a proxy libcurl would use: https_proxy, HTTPS_PROXY, http_proxy,
// all_proxy or ALL_PROXY, set and not empty.
bool ProxyConfigured();

// What kAuto resolves to for `base_url`: kCurl when ProxyConfigured() or AsioClient cannot use
// the URL, kAsio otherwise. Other kinds are returned as they are.
ClientKind ResolveClientKind(ClientKind kind, const std::string& base_url);

std::unique_ptr<Client> MakeClient(const Settings& settings, ClientKind kind);

}  // namespace staple::upstream
