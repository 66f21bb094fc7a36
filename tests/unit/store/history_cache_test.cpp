#include "store/sqlite/history_cache.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

// HistoryCache's budget (SqliteStoreOptions::history_cache_bytes, a share of STAPLE_CACHE_MB)
// bounds memory, not text length.
namespace staple::store {
namespace {

StoredMessage Row(std::int64_t id, const std::string& content) {
  StoredMessage message;
  message.id = id;
  message.user_id = "conversation-0000000000000000000001";
  message.timestamp = "2026-12-03 16:00:00.000000";
  message.role = "user";
  message.content = content;
  return message;
}

TEST(HistoryCacheTest, TheBudgetCountsAllocationsAndBookkeeping) {
  HistoryCache cache(256, 1024 * 1024);
  std::vector<StoredMessage> rows = {Row(1, "hi"), Row(2, "hello")};
  cache.Put("owner/conversation-1", rows, true);
  // Each row's long strings are heap chunks (16-byte granularity plus a header), and the entry
  // has a map node, an LRU node and two copies of its key.
  const std::size_t text_only = 2 * sizeof(StoredMessage) + 2 * (36 + 26 + 4) + 2 + 5;
  EXPECT_GE(cache.bytes(), text_only + 128) << "only the text was counted";
}

TEST(HistoryCacheTest, StaysWithinItsBudget) {
  constexpr std::size_t kBudget = 64 * 1024;
  HistoryCache cache(256, kBudget);
  for (int i = 0; i < 1000; ++i) {
    std::vector<StoredMessage> rows = {Row(2 * i + 1, std::string(100, 'q')),
                                       Row(2 * i + 2, std::string(100, 'a'))};
    cache.Put("conversation-" + std::to_string(i), std::move(rows), true);
    ASSERT_LE(cache.bytes(), kBudget);
  }
  EXPECT_GT(cache.bytes(), 0u);
}

}  // namespace
}  // namespace staple::store
