#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "ratelimit/rate_limiter.h"

namespace staple::ratelimit {
namespace {

TEST(ParseStrategyTest, AcceptsTheThreeNames) {
  for (Strategy s :
       {Strategy::kFixedWindow, Strategy::kMovingWindow, Strategy::kSlidingWindowCounter}) {
    auto parsed = ParseStrategy(StrategyName(s));
    ASSERT_TRUE(parsed.ok()) << StrategyName(s);
    EXPECT_EQ(*parsed, s);
  }
  EXPECT_STREQ(StrategyName(Strategy::kFixedWindow), "fixed-window");
  EXPECT_STREQ(StrategyName(Strategy::kMovingWindow), "moving-window");
  EXPECT_STREQ(StrategyName(Strategy::kSlidingWindowCounter), "sliding-window-counter");
}

TEST(ParseStrategyTest, AcceptsUnderscoresCaseAndBlanks) {
  EXPECT_EQ(*ParseStrategy("moving_window"), Strategy::kMovingWindow);
  EXPECT_EQ(*ParseStrategy("SLIDING_WINDOW_COUNTER"), Strategy::kSlidingWindowCounter);
  EXPECT_EQ(*ParseStrategy(" fixed-window\n"), Strategy::kFixedWindow);
}

TEST(ParseStrategyTest, RejectsOthersClearly) {
  for (const char* text :
       {"", "fixed", "token-bucket", "moving window", "fixed-window-elastic-expiry"}) {
    auto parsed = ParseStrategy(text);
    ASSERT_FALSE(parsed.ok()) << text;
    EXPECT_EQ(parsed.error().kind, ErrorKind::kInvalidArgument);
    EXPECT_THAT(parsed.error().message, ::testing::HasSubstr(std::string("\"") + text + "\""));
    EXPECT_THAT(parsed.error().message,
                ::testing::HasSubstr("fixed-window, moving-window or sliding-window-counter"));
  }
}

}  // namespace
}  // namespace staple::ratelimit
