#include "upstream/retry.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <random>
#include <string_view>

namespace staple::upstream {
namespace {

// Parses a non-negative decimal number such as "2", "0.5" or "1500". Rejects anything else,
// which also rejects HTTP dates ("Wed, 21 Oct 2015 07:28:00 GMT").
std::optional<double> ParseNonNegative(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  if (text.empty()) return std::nullopt;
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  if (!std::isfinite(value) || value < 0) return std::nullopt;
  return value;
}

std::optional<std::string_view> Find(const Headers& headers, std::string_view name) {
  for (const auto& [key, value] : headers) {
    if (key == name) return value;
  }
  return std::nullopt;
}

}  // namespace

bool IsRetryableStatus(long status) { return status == 429 || (status >= 500 && status <= 599); }

std::optional<std::chrono::milliseconds> RetryAfter(const Headers& headers) {
  // A day is far beyond any wait we honour; the bound only keeps the conversion in range.
  constexpr double kMaxMs = 24.0 * 3600 * 1000;
  if (auto ms = Find(headers, "retry-after-ms")) {
    if (auto value = ParseNonNegative(*ms)) {
      return std::chrono::milliseconds(static_cast<long>(std::ceil(std::min(*value, kMaxMs))));
    }
  }
  if (auto seconds = Find(headers, "retry-after")) {
    if (auto value = ParseNonNegative(*seconds)) {
      return std::chrono::milliseconds(
          static_cast<long>(std::ceil(std::min(*value * 1000, kMaxMs))));
    }
  }
  return std::nullopt;
}

std::optional<std::chrono::milliseconds> RetryDelay(
    const Settings& settings, int retry, std::optional<std::chrono::milliseconds> retry_after,
    double unit) {
  const auto cap = std::max(settings.backoff_max, std::chrono::milliseconds(0));
  if (retry_after) {
    if (*retry_after > cap * 4) return std::nullopt;
    return *retry_after;
  }
  // base * 2^(retry-1) without overflow: stop doubling once the cap is reached.
  auto ceiling = std::max(settings.backoff_base, std::chrono::milliseconds(0));
  for (int i = 1; i < retry && ceiling < cap; ++i) ceiling *= 2;
  ceiling = std::min(ceiling, cap);
  unit = std::clamp(unit, 0.0, 1.0);
  return std::chrono::milliseconds(
      static_cast<long>(std::floor(unit * static_cast<double>(ceiling.count()))));
}

double UniformSample() {
  thread_local std::mt19937_64 engine{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(engine);
}

}  // namespace staple::upstream
