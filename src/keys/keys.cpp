#include "keys/keys.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "common/secure_random.h"

namespace staple::keys {
namespace {

constexpr std::string_view kSecretPrefix = "sk-staple-";
constexpr std::size_t kSecretChars = 43;  // 43 x log2(62) = 256.03 bits
constexpr std::string_view kBase62 =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
constexpr std::size_t kMaxNameBytes = 200;
constexpr std::size_t kMaxMetadataBytes = 16 * 1024;
constexpr char kHex[] = "0123456789abcdef";

std::string ToHex(const unsigned char* bytes, std::size_t size) {
  std::string out;
  out.reserve(size * 2);
  for (std::size_t i = 0; i < size; ++i) {
    out.push_back(kHex[bytes[i] >> 4]);
    out.push_back(kHex[bytes[i] & 0x0f]);
  }
  return out;
}

Status Invalid(std::string message) {
  return MakeError(ErrorKind::kInvalidArgument, std::move(message));
}

// True when `text` is valid UTF-8, so that JSON answers and log lines can carry it.
bool IsUtf8(const std::string& text) {
  try {
    (void)nlohmann::json(text).dump();
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

Result<std::vector<ratelimit::RateLimitItem>> ParseField(const char* field,
                                                         const std::string& text) {
  if (text.empty()) return std::vector<ratelimit::RateLimitItem>{};
  auto parsed = ratelimit::ParseLimits(text);
  if (!parsed) {
    return MakeError(ErrorKind::kInvalidArgument,
                     std::string("invalid ") + field + ": " + parsed.error().message);
  }
  return parsed;
}

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
std::int64_t DaysFromCivil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2 ? 1 : 0;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3u : 9u)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

// Reads exactly `width` digits at `pos`.
bool Digits(std::string_view text, std::size_t& pos, std::size_t width, int& value) {
  if (pos + width > text.size()) return false;
  for (std::size_t i = 0; i < width; ++i) {
    if (text[pos + i] < '0' || text[pos + i] > '9') return false;
  }
  const auto [end, ec] = std::from_chars(text.data() + pos, text.data() + pos + width, value);
  if (ec != std::errc() || end != text.data() + pos + width) return false;
  pos += width;
  return true;
}

bool Expect(std::string_view text, std::size_t& pos, char c) {
  if (pos >= text.size() || text[pos] != c) return false;
  ++pos;
  return true;
}

}  // namespace

bool Key::AllowsModel(std::string_view model) const {
  const auto& models = record.allowed_models;
  return models.empty() || std::find(models.begin(), models.end(), model) != models.end();
}

std::string GenerateSecret() {
  std::string secret(kSecretPrefix);
  secret.reserve(kSecretPrefix.size() + kSecretChars);
  // Rejection sampling keeps every character uniform: bytes >= 248 (= 4 x 62) are dropped.
  std::array<unsigned char, 64> bytes{};
  while (secret.size() < kSecretPrefix.size() + kSecretChars) {
    SecureRandomBytes(bytes.data(), bytes.size());
    for (unsigned char b : bytes) {
      if (b >= 248) continue;
      secret.push_back(kBase62[b % 62]);
      if (secret.size() == kSecretPrefix.size() + kSecretChars) break;
    }
  }
  return secret;
}

std::string GenerateId() {
  std::array<unsigned char, 8> bytes{};
  SecureRandomBytes(bytes.data(), bytes.size());
  return "key_" + ToHex(bytes.data(), bytes.size());
}

std::string HashSecret(std::string_view secret) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int size = 0;
  if (EVP_Digest(secret.data(), secret.size(), digest.data(), &size, EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("SHA-256 failed");
  }
  return ToHex(digest.data(), size);
}

bool SameHash(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

Status Validate(const KeyRecord& record) {
  if (record.name.size() > kMaxNameBytes) {
    return Invalid("invalid name: longer than " + std::to_string(kMaxNameBytes) + " bytes");
  }
  if (!IsUtf8(record.name)) return Invalid("invalid name: not valid UTF-8");
  for (const std::string& model : record.allowed_models) {
    if (model.empty()) return Invalid("invalid allowed_models: a model name is empty");
    if (!IsUtf8(model)) return Invalid("invalid allowed_models: a model name is not valid UTF-8");
  }
  if (auto parsed = ParseField("request_limits", record.request_limits); !parsed) {
    return parsed.error();
  }
  if (auto parsed = ParseField("token_limits", record.token_limits); !parsed) {
    return parsed.error();
  }
  if (record.metadata.size() > kMaxMetadataBytes) {
    return Invalid("invalid metadata: larger than " + std::to_string(kMaxMetadataBytes) + " bytes");
  }
  const auto metadata = nlohmann::json::parse(record.metadata, nullptr, false);
  if (metadata.is_discarded()) return Invalid("invalid metadata: not JSON");
  if (!metadata.is_object()) return Invalid("invalid metadata: not a JSON object");
  return Ok();
}

Result<Key> MakeKey(KeyRecord record) {
  auto request_limits = ParseField("request_limits", record.request_limits);
  if (!request_limits) return request_limits.error();
  auto token_limits = ParseField("token_limits", record.token_limits);
  if (!token_limits) return token_limits.error();
  Key key;
  key.record = std::move(record);
  key.request_limits = std::move(request_limits).value();
  key.token_limits = std::move(token_limits).value();
  return key;
}

std::string UtcDay(std::int64_t unix_seconds) { return FormatUtc(unix_seconds).substr(0, 10); }

std::string FormatUtc(std::int64_t unix_seconds) {
  const auto seconds = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char text[32];
  const int n =
      std::snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900,
                    tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return std::string(text, n > 0 ? static_cast<std::size_t>(n) : 0);
}

Result<std::int64_t> ParseUtcTime(std::string_view text) {
  auto fail = [&]() -> Result<std::int64_t> {
    return MakeError(ErrorKind::kInvalidArgument,
                     "invalid time '" + std::string(text) +
                         "': expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (ISO 8601)");
  };
  std::size_t pos = 0;
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  if (!Digits(text, pos, 4, year) || !Expect(text, pos, '-') || !Digits(text, pos, 2, month) ||
      !Expect(text, pos, '-') || !Digits(text, pos, 2, day)) {
    return fail();
  }
  std::int64_t offset = 0;
  if (pos < text.size()) {
    if (text[pos] != 'T' && text[pos] != 't' && text[pos] != ' ') return fail();
    ++pos;
    if (!Digits(text, pos, 2, hour) || !Expect(text, pos, ':') || !Digits(text, pos, 2, minute)) {
      return fail();
    }
    if (pos < text.size() && text[pos] == ':') {
      ++pos;
      if (!Digits(text, pos, 2, second)) return fail();
      if (pos < text.size() && text[pos] == '.') {
        ++pos;
        const std::size_t start = pos;
        while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') ++pos;
        if (pos == start) return fail();
      }
    }
    if (pos < text.size()) {
      const char zone = text[pos++];
      if (zone == 'Z' || zone == 'z') {
        if (pos != text.size()) return fail();
      } else if (zone == '+' || zone == '-') {
        int zone_hours = 0, zone_minutes = 0;
        if (!Digits(text, pos, 2, zone_hours) || !Expect(text, pos, ':') ||
            !Digits(text, pos, 2, zone_minutes) || pos != text.size() || zone_hours > 23 ||
            zone_minutes > 59) {
          return fail();
        }
        offset = (zone_hours * 3600 + zone_minutes * 60) * (zone == '+' ? 1 : -1);
      } else {
        return fail();
      }
    }
  }
  static constexpr int kDaysIn[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (month < 1 || month > 12 || day < 1 || day > kDaysIn[month - 1] || hour > 23 || minute > 59 ||
      second > 59) {
    return fail();
  }
  const bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  if (month == 2 && day == 29 && !leap) return fail();
  const std::int64_t days =
      DaysFromCivil(year, static_cast<unsigned>(month), static_cast<unsigned>(day));
  return days * 86400 + hour * 3600 + minute * 60 + second - offset;
}

}  // namespace staple::keys
