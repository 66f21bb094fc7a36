#include "upstream/retry.h"

#include <gtest/gtest.h>

#include "upstream/curl_transfer.h"

namespace staple::upstream {
namespace {

using std::chrono::milliseconds;

TEST(RetryTest, RetryableStatusesAre429And5xx) {
  EXPECT_TRUE(IsRetryableStatus(429));
  EXPECT_TRUE(IsRetryableStatus(500));
  EXPECT_TRUE(IsRetryableStatus(503));
  EXPECT_TRUE(IsRetryableStatus(599));
  EXPECT_FALSE(IsRetryableStatus(200));
  EXPECT_FALSE(IsRetryableStatus(400));
  EXPECT_FALSE(IsRetryableStatus(401));
  EXPECT_FALSE(IsRetryableStatus(404));
  EXPECT_FALSE(IsRetryableStatus(600));
}

TEST(RetryTest, RetryAfterReadsSecondsAndMilliseconds) {
  EXPECT_EQ(RetryAfter({{"retry-after", "2"}}), milliseconds(2000));
  EXPECT_EQ(RetryAfter({{"retry-after", " 0.5 "}}), milliseconds(500));
  EXPECT_EQ(RetryAfter({{"retry-after", "0"}}), milliseconds(0));
  EXPECT_EQ(RetryAfter({{"retry-after-ms", "150"}}), milliseconds(150));
  // The millisecond header is the more precise one and wins.
  EXPECT_EQ(RetryAfter({{"retry-after", "1"}, {"retry-after-ms", "1200"}}), milliseconds(1200));
}

TEST(RetryTest, RetryAfterIgnoresDatesAndGarbage) {
  EXPECT_EQ(RetryAfter({}), std::nullopt);
  EXPECT_EQ(RetryAfter({{"retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"}}), std::nullopt);
  EXPECT_EQ(RetryAfter({{"retry-after", "-1"}}), std::nullopt);
  EXPECT_EQ(RetryAfter({{"retry-after", ""}}), std::nullopt);
  EXPECT_EQ(RetryAfter({{"retry-after", "5s"}}), std::nullopt);
  EXPECT_EQ(RetryAfter({{"x-retry-after", "5"}}), std::nullopt);
}

TEST(RetryTest, BackoffDoublesUpToTheCapWithFullJitter) {
  Settings settings;
  settings.backoff_base = milliseconds(100);
  settings.backoff_max = milliseconds(1000);
  constexpr double kAlmostOne = 0.999999;
  EXPECT_EQ(RetryDelay(settings, 1, std::nullopt, 0.0), milliseconds(0));
  EXPECT_EQ(RetryDelay(settings, 1, std::nullopt, kAlmostOne), milliseconds(99));
  EXPECT_EQ(RetryDelay(settings, 2, std::nullopt, kAlmostOne), milliseconds(199));
  EXPECT_EQ(RetryDelay(settings, 3, std::nullopt, kAlmostOne), milliseconds(399));
  EXPECT_EQ(RetryDelay(settings, 3, std::nullopt, 0.5), milliseconds(200));
  EXPECT_EQ(RetryDelay(settings, 5, std::nullopt, kAlmostOne), milliseconds(999));
  EXPECT_EQ(RetryDelay(settings, 60, std::nullopt, kAlmostOne), milliseconds(999));  // no overflow
}

TEST(RetryTest, RetryAfterIsHonouredUpToFourTimesTheCap) {
  Settings settings;
  settings.backoff_base = milliseconds(100);
  settings.backoff_max = milliseconds(1000);
  EXPECT_EQ(RetryDelay(settings, 1, milliseconds(3000), 0.1), milliseconds(3000));
  EXPECT_EQ(RetryDelay(settings, 1, milliseconds(4000), 0.1), milliseconds(4000));
  EXPECT_EQ(RetryDelay(settings, 1, milliseconds(4001), 0.1), std::nullopt);
  EXPECT_EQ(RetryDelay(settings, 1, milliseconds(0), 0.9), milliseconds(0));
}

TEST(RedactTest, RemovesEveryOccurrenceOfTheSecret) {
  EXPECT_EQ(Redact("key sk-1 and sk-1 again", "sk-1"), "key [redacted] and [redacted] again");
  EXPECT_EQ(Redact("nothing here", "sk-1"), "nothing here");
  EXPECT_EQ(Redact("no secret configured", ""), "no secret configured");
}

}  // namespace
}  // namespace staple::upstream
