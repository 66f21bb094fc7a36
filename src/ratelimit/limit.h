#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace staple::ratelimit {

// Amounts can exceed 64 bits in the notation ("99999999999999999999/day" is valid); they are kept
// exactly up to 128 bits and saturate beyond.
__extension__ typedef unsigned __int128 Amount;

enum class Granularity { kSecond, kMinute, kHour, kDay, kMonth, kYear };

// Seconds in one unit: month = 30 days, year = 360 days, as the `limits` library counts them.
std::int64_t GranularitySeconds(Granularity g);
const char* GranularityName(Granularity g);  // "second", "minute", ...

// One limit such as "10 per 2 minutes": `amount` hits per `multiples` x `granularity`.
struct RateLimitItem {
  Amount amount = 0;
  std::int64_t multiples = 1;
  Granularity granularity = Granularity::kMinute;

  std::int64_t PeriodSeconds() const { return multiples * GranularitySeconds(granularity); }
  // Flask-Limiter's rendering: "10 per 1 minute". Used in 429 bodies and headers.
  std::string ToString() const;
  // A stable identity for storage keys: "10/1/minute".
  std::string Key() const;
};

std::string AmountToString(Amount amount);

// Parses the `limits` notation: one or more limits joined by ';', ',' or '|' (see
// ../shared/limits_vectors.tsv for the exact grammar). Errors are kInvalidArgument with a message
// that quotes the offending text.
Result<std::vector<RateLimitItem>> ParseLimits(std::string_view text);

}  // namespace staple::ratelimit
