#include "ratelimit/limit.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace staple::ratelimit {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::vector<std::string> Split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(text);
  while (std::getline(in, part, separator)) parts.push_back(part);
  if (!text.empty() && text.back() == separator) parts.emplace_back();
  return parts;
}

bool IsPrintableAscii(const std::string& text) {
  for (char c : text) {
    if (c < 0x20 || c > 0x7E || c == '"' || c == '\\') return false;
  }
  return true;
}

// "amount,multiples,granularity,seconds" for each item, space-separated, as in the vectors file.
std::string Describe(const std::vector<RateLimitItem>& items) {
  std::string out;
  for (const RateLimitItem& item : items) {
    if (!out.empty()) out += ' ';
    out += AmountToString(item.amount) + "," + std::to_string(item.multiples) + "," +
           GranularityName(item.granularity) + "," + std::to_string(item.PeriodSeconds());
  }
  return out;
}

// Every row of the `limits` library's own results must come out the same here.
TEST(ParseLimitsTest, MatchesLimitsLibraryVectors) {
  std::ifstream file(STAPLE_SOURCE_DIR "/tests/unit/ratelimit/limits_vectors.tsv");
  ASSERT_TRUE(file) << "cannot open limits_vectors.tsv";
  std::string line;
  ASSERT_TRUE(std::getline(file, line));
  ASSERT_EQ(line, "input_json\tresult\tlimits\tnote");

  int rows = 0;
  int ok_rows = 0;
  int line_number = 1;
  while (std::getline(file, line)) {
    ++line_number;
    if (line.empty()) continue;
    const std::vector<std::string> fields = Split(line, '\t');
    ASSERT_EQ(fields.size(), 4u) << "line " << line_number << ": " << line;
    const std::string input = nlohmann::json::parse(fields[0]).get<std::string>();
    SCOPED_TRACE("line " + std::to_string(line_number) + ": " + fields[0] + " (" + fields[3] + ")");
    ++rows;

    const auto parsed = ParseLimits(input);
    if (fields[1] == "OK") {
      ++ok_rows;
      ASSERT_TRUE(parsed.ok()) << parsed.error().message;
      EXPECT_EQ(Describe(*parsed), fields[2]);
    } else {
      ASSERT_EQ(fields[1], "ERROR");
      ASSERT_FALSE(parsed.ok()) << "accepted as " << Describe(*parsed);
      EXPECT_EQ(parsed.error().kind, ErrorKind::kInvalidArgument);
      EXPECT_THAT(parsed.error().message, StartsWith("invalid rate limit \""));
      if (IsPrintableAscii(input)) {
        EXPECT_THAT(parsed.error().message, HasSubstr("\"" + input + "\""));
      }
    }
  }
  EXPECT_EQ(rows, 81);
  EXPECT_EQ(ok_rows, 42);
}

TEST(ParseLimitsTest, ErrorsSayWhatIsWrongAndWhere) {
  auto unit = ParseLimits("10 per min");
  ASSERT_FALSE(unit.ok());
  EXPECT_THAT(unit.error().message, HasSubstr("\"10 per min\""));
  EXPECT_THAT(unit.error().message, HasSubstr("second, minute, hour, day, month or year"));
  EXPECT_THAT(unit.error().message, HasSubstr("offset 7"));

  auto trailing = ParseLimits("10 per minute;");
  ASSERT_FALSE(trailing.ok());
  EXPECT_THAT(trailing.error().message, HasSubstr("after the separator"));

  auto space = ParseLimits("10/minute 5/second");
  ASSERT_FALSE(space.ok());
  EXPECT_THAT(space.error().message, HasSubstr("';', ',' or '|'"));

  auto empty = ParseLimits("");
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.error().message,
            "invalid rate limit \"\": no limit given; expected e.g. \"10 per minute\" or "
            "\"200/day;50/hour\"");

  // Control bytes are escaped so the message stays one printable line.
  auto nul = ParseLimits(std::string("10\0/minute", 10));
  ASSERT_FALSE(nul.ok());
  EXPECT_THAT(nul.error().message, HasSubstr("\"10\\x00/minute\""));
}

TEST(ParseLimitsTest, UnicodeWhitespaceAndLongS) {
  // Python's \s covers U+3000 and U+2009 like U+00A0; its case-insensitive 's' also matches
  // U+017F, so `limits` accepts it as the plural mark.
  auto spaces = ParseLimits("10\u3000per\u2009minute");
  ASSERT_TRUE(spaces.ok()) << spaces.error().message;
  EXPECT_EQ(Describe(*spaces), "10,1,minute,60");
  auto long_s = ParseLimits("10 per minute\u017f");
  ASSERT_TRUE(long_s.ok()) << long_s.error().message;
  EXPECT_EQ(Describe(*long_s), "10,1,minute,60");
  EXPECT_FALSE(ParseLimits("10 per \u017fecond").ok());
  EXPECT_FALSE(ParseLimits("10 per minute\xff").ok());
}

TEST(ParseLimitsTest, HugeNumbersSaturate) {
  auto amount = ParseLimits("999999999999999999999999999999999999999999999/day");
  ASSERT_TRUE(amount.ok());
  EXPECT_EQ((*amount)[0].amount, ~Amount{0});
  EXPECT_EQ(AmountToString((*amount)[0].amount), "340282366920938463463374607431768211455");

  auto period = ParseLimits("1 per 99999999999999999999999 years");
  ASSERT_TRUE(period.ok());
  EXPECT_GT((*period)[0].PeriodSeconds(), 0);
  EXPECT_EQ((*period)[0].multiples, INT64_MAX / GranularitySeconds(Granularity::kYear));
}

TEST(RateLimitItemTest, RendersLikeFlaskLimiter) {
  auto items = ParseLimits("10/minute;5 per 2 hours;1/seconds");
  ASSERT_TRUE(items.ok());
  EXPECT_EQ((*items)[0].ToString(), "10 per 1 minute");
  EXPECT_EQ((*items)[1].ToString(), "5 per 2 hour");
  EXPECT_EQ((*items)[2].ToString(), "1 per 1 second");
  EXPECT_EQ((*items)[0].Key(), "10/1/minute");
  EXPECT_EQ((*items)[1].Key(), "5/2/hour");

  auto big = ParseLimits("99999999999999999999/day");
  ASSERT_TRUE(big.ok());
  EXPECT_EQ((*big)[0].ToString(), "99999999999999999999 per 1 day");
  EXPECT_EQ((*big)[0].Key(), "99999999999999999999/1/day");
}

TEST(GranularityTest, SecondsAndNames) {
  EXPECT_EQ(GranularitySeconds(Granularity::kSecond), 1);
  EXPECT_EQ(GranularitySeconds(Granularity::kMinute), 60);
  EXPECT_EQ(GranularitySeconds(Granularity::kHour), 3600);
  EXPECT_EQ(GranularitySeconds(Granularity::kDay), 86400);
  EXPECT_EQ(GranularitySeconds(Granularity::kMonth), 2592000);
  EXPECT_EQ(GranularitySeconds(Granularity::kYear), 31104000);
  EXPECT_STREQ(GranularityName(Granularity::kMonth), "month");
  EXPECT_EQ(AmountToString(0), "0");
}

}  // namespace
}  // namespace staple::ratelimit
