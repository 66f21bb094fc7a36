#include "upstream/make_client.h"

#include <cstdlib>

#include "upstream/asio_client.h"
#include "upstream/curl_client.h"

namespace staple::upstream {

std::string_view ClientKindName(ClientKind kind) {
  switch (kind) {
    case ClientKind::kAsio:
      return "asio";
    case ClientKind::kCurl:
      return "curl";
    case ClientKind::kAuto:
      break;
  }
  return "auto";
}

bool ProxyConfigured() {
  for (const char* name : {"https_proxy", "HTTPS_PROXY", "http_proxy", "all_proxy", "ALL_PROXY"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && *value != '\0') return true;
  }
  return false;
}

ClientKind ResolveClientKind(ClientKind kind, const std::string& base_url) {
  if (kind != ClientKind::kAuto) return kind;
  if (ProxyConfigured() || !AsioClient::Supports(base_url)) return ClientKind::kCurl;
  return ClientKind::kAsio;
}

std::unique_ptr<Client> MakeClient(const Settings& settings, ClientKind kind) {
  if (ResolveClientKind(kind, settings.base_url) == ClientKind::kCurl) {
    return std::make_unique<CurlClient>(settings);
  }
  return std::make_unique<AsioClient>(settings);
}

}  // namespace staple::upstream
