#include "ratelimit/redis_url.h"

#include <charconv>
#include <utility>

namespace staple::ratelimit {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes %XX escapes. As redis-cli and libcurl do, a '%' without two hex digits after it is
// an ordinary character, so every text decodes.
std::string PercentDecode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && HexValue(text[i + 1]) >= 0 &&
        HexValue(text[i + 2]) >= 0) {
      out += static_cast<char>(HexValue(text[i + 1]) * 16 + HexValue(text[i + 2]));
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

Error Invalid(const char* why) { return MakeError(ErrorKind::kInvalidArgument, why); }

}  // namespace

Result<RedisAddress> ParseRedisAddress(std::string_view url) {
  constexpr std::string_view kScheme = "redis://";
  if (url.substr(0, 9) == "rediss://") {
    return Invalid(
        "TLS (rediss://) is not supported; reach Redis over a private network or a TLS tunnel");
  }
  if (url.substr(0, kScheme.size()) != kScheme) return Invalid("expected redis://host:port[/db]");
  std::string_view rest = url.substr(kScheme.size());
  RedisAddress address;
  std::string_view authority = rest;
  const auto slash = rest.find('/');
  if (slash != std::string_view::npos) {
    authority = rest.substr(0, slash);
    const std::string_view db = rest.substr(slash + 1);
    if (!db.empty()) {
      int value = -1;
      const auto [end, ec] = std::from_chars(db.data(), db.data() + db.size(), value);
      if (ec != std::errc() || end != db.data() + db.size() || value < 0) {
        return Invalid("the database must be a non-negative integer (redis://host:port/db)");
      }
      address.db = value;
    }
  }
  // The credentials end at the last '@' (an unencoded '@' in a password).
  const auto at = authority.rfind('@');
  if (at != std::string_view::npos) {
    // [username]:password@ (percent-encoded), as redis-cli -u reads it.
    const std::string_view userinfo = authority.substr(0, at);
    authority = authority.substr(at + 1);
    const auto colon = userinfo.find(':');
    if (colon == std::string_view::npos) {
      return Invalid("the credentials must be [username]:password before the '@'");
    }
    address.username = PercentDecode(userinfo.substr(0, colon));
    address.password = PercentDecode(userinfo.substr(colon + 1));
    if (address.password.empty()) return Invalid("the password is empty");
  }
  std::string_view host = authority;
  const auto colon = authority.rfind(':');
  if (colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    const std::string_view port = authority.substr(colon + 1);
    unsigned value = 0;
    const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value == 0 ||
        value > 65535) {
      return Invalid("the port must be 1-65535");
    }
    address.port = static_cast<std::uint16_t>(value);
  }
  if (host.empty()) return Invalid("the host is missing");
  address.host = std::string(host);
  return address;
}

}  // namespace staple::ratelimit
