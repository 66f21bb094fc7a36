#include "store/sqlite/history_cache.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support/history.h"

// HistoryCache's budget (SqliteStoreOptions::history_cache_bytes, a share of STAPLE_CACHE_MB)
// bounds memory, not text length.
namespace staple::store {
namespace {

HistoryMessage Row(std::int64_t id, const std::string& content) {
  return HistoryMessage{id, "user", content};
}

TEST(HistoryCacheTest, TheBudgetCountsAllocationsAndBookkeeping) {
  HistoryCache cache(256, 1024 * 1024);
  cache.Put("owner/conversation-1",
            testing::SharedRows({Row(1, "hi"), Row(2, std::string(100, 'h'))}), true);
  // Each row's long strings are heap chunks (16-byte granularity plus a header), and the entry
  // has a map node, an LRU node and two copies of its key.
  const std::size_t text_only = 2 * sizeof(HistoryMessage) + 2 + 100;
  EXPECT_GE(cache.bytes(), text_only + 128) << "only the text was counted";
}

TEST(HistoryCacheTest, StaysWithinItsBudget) {
  constexpr std::size_t kBudget = 64 * 1024;
  HistoryCache cache(256, kBudget);
  for (int i = 0; i < 1000; ++i) {
    History rows = testing::SharedRows(
        {Row(2 * i + 1, std::string(100, 'q')), Row(2 * i + 2, std::string(100, 'a'))});
    cache.Put("conversation-" + std::to_string(i), std::move(rows), true);
    ASSERT_LE(cache.bytes(), kBudget);
  }
  EXPECT_GT(cache.bytes(), 0u);
}

// A hit hands out the cached rows themselves, which outlive the entry they came from.
TEST(HistoryCacheTest, AHitSharesTheCachedRows) {
  HistoryCache cache(256, 1024 * 1024);
  const History rows = testing::SharedRows({Row(1, "one"), Row(2, "two"), Row(3, "three")});
  cache.Put("c", rows, true);
  cache.Append("c", {Row(4, "four")});

  auto newest = cache.Get("c", 1, 4, 4, 2);
  ASSERT_TRUE(newest.has_value());
  ASSERT_EQ(newest->size(), 2u);
  EXPECT_EQ((*newest)[0].get(), rows[2].get()) << "the row was copied";
  EXPECT_EQ((*newest)[1]->content, "four");

  cache.Erase("c");
  EXPECT_FALSE(cache.Get("c", 1, 4, 4, 2).has_value());
  EXPECT_EQ((*newest)[1]->content, "four") << "a row handed out must outlive its entry";
  EXPECT_EQ((*newest)[1]->id, 4);
}

// Rows the snapshot does not show as cached (another count or newest id) are not served.
TEST(HistoryCacheTest, ARowCountOrNewestIdThatDiffersIsAMiss) {
  HistoryCache cache(256, 1024 * 1024);
  cache.Put("c", testing::SharedRows({Row(1, "one"), Row(2, "two")}), true);
  EXPECT_FALSE(cache.Get("c", 1, 3, 3, 0).has_value());
  EXPECT_FALSE(cache.OldestId("c").has_value()) << "the stale entry was kept";
}

}  // namespace
}  // namespace staple::store
