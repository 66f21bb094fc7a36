// STAPLE_RETENTION: a bare period in the limits notation, read through ratelimit::ParseLimits.

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <string>

#include "config/config.h"

namespace staple::config {
namespace {

using std::chrono::seconds;

Result<Config> LoadRetention(const std::string& value) {
  Sources sources;
  sources.environment = [value](const std::string& name) -> std::optional<std::string> {
    if (name == "STAPLE_RETENTION") return value;
    return std::nullopt;
  };
  return Load(sources);
}

TEST(RetentionPeriod, ReadsPeriodsAsTheLimitsNotationDoes) {
  EXPECT_EQ(*ParsePeriod("90 days"), seconds(90 * 86400));
  EXPECT_EQ(*ParsePeriod("12 hours"), seconds(12 * 3600));
  EXPECT_EQ(*ParsePeriod("1 day"), seconds(86400));
  EXPECT_EQ(*ParsePeriod("day"), seconds(86400));
  EXPECT_EQ(*ParsePeriod(" 2 Seconds "), seconds(2));
  EXPECT_EQ(*ParsePeriod("30 minutes"), seconds(1800));
  EXPECT_EQ(*ParsePeriod("1 month"), seconds(30 * 86400));  // as `limits` counts a month
}

TEST(RetentionPeriod, RefusesAnythingButOnePeriod) {
  for (const char* text :
       {"", "90", "0 days", "000 hours", "1 per day", "10/day", "90 days; 1 hour", "1 day, 2 days",
        "fortnight", "-1 days", "1.5 days", "200 years"}) {
    auto parsed = ParsePeriod(text);
    EXPECT_FALSE(parsed.ok()) << text;
    if (!parsed.ok()) {
      EXPECT_EQ(parsed.error().kind, ErrorKind::kInvalidArgument) << text;
    }
  }
}

TEST(RetentionPeriod, OffByDefaultAndWhenEmptyOrOff) {
  auto unset = Load(Sources{});
  ASSERT_TRUE(unset.ok()) << unset.error().message;
  EXPECT_EQ(unset->store.retention, seconds(0));
  for (const char* value : {"", "  ", "off"}) {
    auto config = LoadRetention(value);
    ASSERT_TRUE(config.ok()) << value;
    EXPECT_EQ(config->store.retention, seconds(0)) << value;
  }
}

TEST(RetentionPeriod, ConfiguredPeriodAndErrorsNameTheVariable) {
  auto config = LoadRetention("90 days");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->store.retention, seconds(90 * 86400));

  auto invalid = LoadRetention("90 dayz");
  ASSERT_FALSE(invalid.ok());
  EXPECT_NE(invalid.error().message.find("STAPLE_RETENTION='90 dayz'"), std::string::npos)
      << invalid.error().message;
}

}  // namespace
}  // namespace staple::config
