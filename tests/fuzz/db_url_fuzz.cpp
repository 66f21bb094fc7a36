// Database and limiter storage URLs (STAPLE_DATABASE_URL, STAPLE_RATELIMIT_STORAGE): the
// PostgreSQL target (libpq's own URL parser behind ParseTarget), the Redis address and the
// banner's password masking. A parsed Redis address written back as a URL parses to the same
// address; a password is never in an error message, a description or a masked URL.
#include <algorithm>
#include <string>
#include <vector>

#include "config/config.h"
#include "fuzz_check.h"
#include "ratelimit/redis_url.h"
#include "store/postgres/pg_connection.h"

namespace {

std::string Encode(const std::string& text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    out += '%';
    out += kHex[byte >> 4];
    out += kHex[byte & 0xF];
  }
  return out;
}

std::string Decode(std::string_view text) {
  const auto hex = [](char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
  };
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && hex(text[i + 1]) >= 0 && hex(text[i + 2]) >= 0) {
      out += static_cast<char>(hex(text[i + 1]) * 16 + hex(text[i + 2]));
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

// The passwords of a URL as written: before the '@' and in `password` query parameters.
std::vector<std::string> RawPasswords(const std::string& url) {
  std::vector<std::string> passwords;
  const auto scheme = url.find("://");
  if (scheme == std::string::npos) return passwords;
  const auto end = url.find_first_of("/?", scheme + 3);
  const auto authority = url.substr(scheme + 3, end == std::string::npos ? end : end - scheme - 3);
  const auto at = authority.rfind('@');
  if (const auto colon = authority.find(':'); at != std::string::npos && colon < at) {
    passwords.push_back(authority.substr(colon + 1, at - colon - 1));
  }
  // Query parameters: '&'-separated name=value pairs after the first '?'; libpq decodes names.
  const auto query = url.find('?');
  if (query == std::string::npos) return passwords;
  std::string_view rest = std::string_view(url).substr(query + 1);
  while (!rest.empty()) {
    const auto pair = rest.substr(0, rest.find('&'));
    const auto equals = pair.find('=');
    if (equals != std::string_view::npos && Decode(pair.substr(0, equals)) == "password") {
      passwords.emplace_back(pair.substr(equals + 1));
    }
    rest.remove_prefix(std::min(rest.size(), pair.size() + 1));
  }
  return passwords;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string url(staple::fuzz::AsText(data, size));

  if (const auto redis = staple::ratelimit::ParseRedisAddress(url)) {
    FUZZ_CHECK(redis->db >= 0);
    FUZZ_CHECK(redis->password.size() + redis->username.size() <= url.size());
    std::string again = "redis://";
    if (!redis->password.empty() || !redis->username.empty()) {
      again += Encode(redis->username) + ":" + Encode(redis->password) + "@";
    }
    again += redis->host + ":" + std::to_string(redis->port) + "/" + std::to_string(redis->db);
    const auto reparsed = staple::ratelimit::ParseRedisAddress(again);
    FUZZ_CHECK(reparsed);
    FUZZ_CHECK(reparsed->host == redis->host && reparsed->port == redis->port &&
               reparsed->db == redis->db && reparsed->username == redis->username &&
               reparsed->password == redis->password);
  }

  if (url.find('\0') == std::string::npos) {
    const auto target = staple::store::postgres::ParseTarget(url);
    if (target) {
      FUZZ_CHECK(target->keywords.size() == target->values.size());
      // The description shows user, host, port and database only: the password appears in it
      // only when one of those happens to contain it.
      std::string shown = "localhost\n";  // the host shown when none is given
      for (std::size_t i = 0; i < target->keywords.size(); ++i) {
        const auto& keyword = target->keywords[i];
        if (keyword == "user" || keyword == "host" || keyword == "hostaddr" || keyword == "port" ||
            keyword == "dbname") {
          shown += target->values[i] + '\n';
        }
      }
      // (A password holding '@', ':' or '/' could also span two of them.)
      constexpr std::string_view kLabel = "PostgreSQL ";
      FUZZ_CHECK(target->description.rfind(kLabel, 0) == 0);
      const auto& password = target->password;
      if (!password.empty() && password.find_first_of("@:/") == std::string::npos &&
          shown.find(password) == std::string::npos) {
        FUZZ_CHECK(target->description.find(password, kLabel.size()) == std::string::npos);
      }
    } else {
      // libpq's reason may quote a token of the URL, but never a password as written there.
      const std::string& message = target.error().message;
      constexpr std::string_view kPrefix = "invalid PostgreSQL URL: ";
      if (message.rfind(kPrefix, 0) == 0) {
        const std::string reason = message.substr(kPrefix.size());
        for (const auto& password : RawPasswords(url)) {
          // Scrubbing writes "***": with several passwords, one holding '*' can be formed again
          // by the scrubbing of another, so those are left out.
          if (password.size() >= 4 && password.find('*') == std::string::npos) {
            FUZZ_CHECK(reason.find(password) == std::string::npos);
          }
        }
      }
    }
  }

  const std::string masked = staple::config::MaskUrlPassword(url);
  FUZZ_CHECK(masked.size() <= url.size() + 3);
  return 0;
}
