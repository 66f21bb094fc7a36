#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "api/handlers.h"

namespace staple::api {
namespace {

std::uint64_t NowMillis() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

// The 48-bit Unix millisecond time at the front of a version-7 UUID.
std::uint64_t MillisOf(const std::string& id) {
  const std::string hex = id.substr(0, 8) + id.substr(9, 4);
  return std::stoull(hex, nullptr, 16);
}

TEST(NewUserIdTest, IsALowerCaseVersion7Uuid) {
  static const std::regex pattern(
      "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");
  for (int i = 0; i < 100; ++i) {
    const std::string id = NewUserId();
    EXPECT_TRUE(std::regex_match(id, pattern)) << id;
  }
}

TEST(NewUserIdTest, StartsWithTheTimeItWasMadeAt) {
  const std::uint64_t before = NowMillis();
  const std::string id = NewUserId();
  const std::uint64_t after = NowMillis();
  EXPECT_GE(MillisOf(id), before) << id;
  EXPECT_LE(MillisOf(id), after) << id;
}

// What keeps the messages index's inserts on its last leaf: ids of different milliseconds sort
// in the order they were made, as text too (the store compares them as text).
TEST(NewUserIdTest, IdsMadeLaterSortAfter) {
  std::vector<std::string> ids;
  ids.push_back(NewUserId());
  while (ids.size() < 5) {
    const std::string next = NewUserId();
    if (MillisOf(next) > MillisOf(ids.back())) ids.push_back(next);
  }
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
}

// 74 random bits: ids made in the same millisecond still differ.
TEST(NewUserIdTest, IdsAreDistinct) {
  std::set<std::string> ids;
  for (int i = 0; i < 10000; ++i) ids.insert(NewUserId());
  EXPECT_EQ(ids.size(), 10000u);
}

}  // namespace
}  // namespace staple::api
