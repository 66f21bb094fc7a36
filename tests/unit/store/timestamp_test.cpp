// FormatTimestamp: the stored `timestamp` column, UTC "YYYY-MM-DD HH:MM:SS.ffffff".

#include <gtest/gtest.h>

#include <chrono>

#include "store/conversation_store.h"

namespace staple::store {
namespace {

using std::chrono::microseconds;
using std::chrono::nanoseconds;
using std::chrono::seconds;
using std::chrono::system_clock;

system_clock::time_point At(nanoseconds since_epoch) {
  return system_clock::time_point(since_epoch);
}

TEST(FormatTimestampTest, UtcWithMicroseconds) {
  EXPECT_EQ(FormatTimestamp(At(nanoseconds(0))), "1970-01-01 00:00:00.000000");
  // 2026-11-26 23:30:14.123456 UTC, with a sub-microsecond part that is cut off.
  EXPECT_EQ(FormatTimestamp(At(seconds(1795735814) + microseconds(123456) + nanoseconds(789))),
            "2026-11-26 23:30:14.123456");
  // Leap day and the last microsecond of a year.
  EXPECT_EQ(FormatTimestamp(At(seconds(951782400))), "2000-02-29 00:00:00.000000");
  EXPECT_EQ(FormatTimestamp(At(seconds(1735689600) - microseconds(1))),
            "2024-12-31 23:59:59.999999");
}

TEST(FormatTimestampTest, BeforeTheEpoch) {
  EXPECT_EQ(FormatTimestamp(At(-microseconds(1))), "1969-12-31 23:59:59.999999");
  EXPECT_EQ(FormatTimestamp(At(-seconds(86400) - microseconds(500000))),
            "1969-12-30 23:59:59.500000");
}

}  // namespace
}  // namespace staple::store
