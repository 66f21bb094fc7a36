// The `limits` notation (STAPLE_DEFAULT_LIMITS, per-route and per-key limits): any text either
// fails with a message or yields limits whose rendering parses back to the same limits.
#include <string>

#include "fuzz_check.h"
#include "ratelimit/limit.h"

namespace {

using staple::ratelimit::ParseLimits;
using staple::ratelimit::RateLimitItem;

bool Same(const std::vector<RateLimitItem>& a, const std::vector<RateLimitItem>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].amount != b[i].amount || a[i].multiples != b[i].multiples ||
        a[i].granularity != b[i].granularity) {
      return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto text = staple::fuzz::AsText(data, size);
  const auto parsed = ParseLimits(text);
  if (!parsed) {
    FUZZ_CHECK(!parsed.error().message.empty());
    return 0;
  }
  FUZZ_CHECK(!parsed->empty());
  std::string rendered;  // "10 per 1 minute;..."
  for (const auto& item : *parsed) {
    FUZZ_CHECK(item.multiples >= 1);
    FUZZ_CHECK(item.PeriodSeconds() >= 1);  // no overflow (UBSan checks the multiplication)
    if (!rendered.empty()) rendered += ';';
    rendered += item.ToString();
    FUZZ_CHECK(item.Key().find(' ') == std::string::npos);  // a storage key: no spaces
  }
  const auto again = ParseLimits(rendered);
  FUZZ_CHECK(again && Same(*parsed, *again));
  return 0;
}
