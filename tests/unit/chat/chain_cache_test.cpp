#include "chat/chain_cache.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "chat/responses.h"
#include "chat/responses_turn.h"
#include "store/conversation_store.h"

// chat::ChainCache (what a chained POST /v1/responses reads instead of the store) and
// ResponsesTurn::ChainAfter (what it keeps there once a turn committed).
namespace staple::chat {
namespace {

using responses::ContextItem;
using responses::StoredContext;
using std::chrono::milliseconds;
using std::chrono::steady_clock;
using testing::ElementsAre;

ContextItem Message(const std::string& role, const std::string& text) {
  return responses::ContextItemOf(
      {{"type", "message"},
       {"role", role},
       {"content", responses::Json::array({{{"type", "input_text"}, {"text", text}}})}});
}

ChainCache::Chain ChainOf(std::vector<ContextItem> items, bool has_more = false) {
  auto chain = std::make_shared<StoredContext>();
  chain->items = std::move(items);
  chain->has_more = has_more;
  return chain;
}

std::vector<std::string> Texts(const StoredContext& chain) {
  std::vector<std::string> texts;
  for (const ContextItem& item : chain.items) {
    // A message's chat_json is its chat message without the closing brace.
    const auto message = responses::Json::parse(item.chat_json + "}");
    texts.push_back(item.role + ":" + message["content"].get<std::string>());
  }
  return texts;
}

// A cache on a clock the test moves, with its first epoch read.
class ChainCacheTest : public testing::Test {
 protected:
  ChainCacheTest() : cache_(1024 * 1024, milliseconds(1000), [this] { return now_; }) {
    EXPECT_EQ(cache_.Check(), ChainCache::Freshness::kCheckNow);
    cache_.EpochRead(7);
  }

  steady_clock::time_point now_ = steady_clock::time_point(std::chrono::hours(1));
  ChainCache cache_;
};

TEST_F(ChainCacheTest, AChainPutIsFoundByItsOwnerAndIdOnly) {
  cache_.Put("key_a", "resp_1", cache_.generation(), ChainOf({Message("user", "hi")}));
  auto found = cache_.Find("key_a", "resp_1");
  ASSERT_NE(found, nullptr);
  EXPECT_THAT(Texts(*found), ElementsAre("user:hi"));
  EXPECT_EQ(cache_.Find("key_b", "resp_1"), nullptr) << "another owner";
  EXPECT_EQ(cache_.Find("key_a", "resp_2"), nullptr);
  // Owner and id are not simply joined: ("k", "ey_aresp_1") is not ("key_a", "resp_1").
  EXPECT_EQ(cache_.Find("k", "ey_aresp_1"), nullptr);
  EXPECT_EQ(cache_.hits(), 1u);
  EXPECT_EQ(cache_.misses(), 3u);
}

TEST_F(ChainCacheTest, APutAfterAForgetOfItsGenerationIsRefused) {
  const std::uint64_t read_before = cache_.generation();
  cache_.Forget();  // a delete between the caller's read and its commit
  cache_.Put("", "resp_1", read_before, ChainOf({Message("user", "stale")}));
  EXPECT_EQ(cache_.Find("", "resp_1"), nullptr);

  cache_.Put("", "resp_1", cache_.generation(), ChainOf({Message("user", "fresh")}));
  EXPECT_NE(cache_.Find("", "resp_1"), nullptr);
}

TEST_F(ChainCacheTest, ForgetDropsEveryEntry) {
  cache_.Put("a", "resp_1", cache_.generation(), ChainOf({Message("user", "1")}));
  cache_.Put("b", "resp_2", cache_.generation(), ChainOf({Message("user", "2")}));
  EXPECT_GT(cache_.bytes(), 0u);
  cache_.Forget();
  EXPECT_EQ(cache_.Find("a", "resp_1"), nullptr);
  EXPECT_EQ(cache_.Find("b", "resp_2"), nullptr);
  EXPECT_EQ(cache_.bytes(), 0u);
}

TEST_F(ChainCacheTest, UsableOnlyWithinTheIntervalOfTheLastEpochCheck) {
  EXPECT_EQ(cache_.Check(), ChainCache::Freshness::kFresh);
  now_ += milliseconds(999);
  EXPECT_EQ(cache_.Check(), ChainCache::Freshness::kFresh);
  now_ += milliseconds(1);
  // Due: one caller checks, the others read the store meanwhile.
  EXPECT_EQ(cache_.Check(), ChainCache::Freshness::kCheckNow);
  EXPECT_EQ(cache_.Check(), ChainCache::Freshness::kChecking);
  cache_.EpochRead(7);
  EXPECT_EQ(cache_.Check(), ChainCache::Freshness::kFresh);
}

TEST_F(ChainCacheTest, TheIntervalCountsFromWhenTheCheckStarted) {
  now_ += milliseconds(1000);
  ASSERT_EQ(cache_.Check(), ChainCache::Freshness::kCheckNow);
  now_ += milliseconds(600);  // a slow read of the epoch
  cache_.EpochRead(7);
  now_ += milliseconds(400);
  EXPECT_EQ(cache_.Check(), ChainCache::Freshness::kCheckNow);
}

TEST_F(ChainCacheTest, AChangedEpochForgetsEverything) {
  cache_.Put("", "resp_1", cache_.generation(), ChainOf({Message("user", "1")}));
  now_ += milliseconds(1000);
  ASSERT_EQ(cache_.Check(), ChainCache::Freshness::kCheckNow);
  cache_.EpochRead(7);  // unchanged: kept
  EXPECT_NE(cache_.Find("", "resp_1"), nullptr);

  now_ += milliseconds(1000);
  const std::uint64_t before = cache_.generation();
  ASSERT_EQ(cache_.Check(), ChainCache::Freshness::kCheckNow);
  cache_.EpochRead(8);  // another process deleted something
  EXPECT_EQ(cache_.Find("", "resp_1"), nullptr);
  EXPECT_GT(cache_.generation(), before);
}

TEST_F(ChainCacheTest, AFailedEpochReadForgetsAndAsksAgain) {
  cache_.Put("", "resp_1", cache_.generation(), ChainOf({Message("user", "1")}));
  now_ += milliseconds(1000);
  ASSERT_EQ(cache_.Check(), ChainCache::Freshness::kCheckNow);
  cache_.EpochRead(std::nullopt);
  EXPECT_EQ(cache_.Find("", "resp_1"), nullptr);
  // Until an epoch is read again nothing is kept, and the next caller checks.
  cache_.Put("", "resp_2", cache_.generation(), ChainOf({Message("user", "2")}));
  EXPECT_EQ(cache_.Find("", "resp_2"), nullptr);
  EXPECT_EQ(cache_.Check(), ChainCache::Freshness::kCheckNow);
}

TEST(ChainCacheBeforeAnyEpochTest, KeepsNothingUntilTheFirstEpochIsRead) {
  ChainCache cache(1024 * 1024);
  cache.Put("", "resp_1", cache.generation(), ChainOf({Message("user", "1")}));
  EXPECT_EQ(cache.Find("", "resp_1"), nullptr);
  EXPECT_EQ(cache.Check(), ChainCache::Freshness::kCheckNow);
}

TEST(ChainCacheBudgetTest, StaysWithinItsBudgetDroppingTheLeastRecentlyUsed) {
  constexpr std::size_t kBudget = 64 * 1024;
  ChainCache cache(kBudget);
  ASSERT_EQ(cache.Check(), ChainCache::Freshness::kCheckNow);
  cache.EpochRead(0);
  const std::string text(200, 'x');
  for (int i = 0; i < 1000; ++i) {
    cache.Put("", "resp_" + std::to_string(i), cache.generation(),
              ChainOf({Message("user", text), Message("assistant", text)}));
    // resp_0 is used all along, so it is never the least recently used.
    ASSERT_NE(cache.Find("", "resp_0"), nullptr) << "after " << i;
    ASSERT_LE(cache.bytes(), kBudget);
  }
  EXPECT_NE(cache.Find("", "resp_999"), nullptr);
  EXPECT_EQ(cache.Find("", "resp_1"), nullptr);

  // The budget counts allocations, not just text.
  cache.Forget();
  cache.Put("", "r", cache.generation(),
            ChainOf({Message("user", text), Message("assistant", text)}));
  EXPECT_GT(cache.bytes(), 2 * (text.size() + 1) + 2 * sizeof(ContextItem) + 128);
}

TEST(ChainCacheBudgetTest, AChainOverAnEighthOfTheBudgetIsNotKept) {
  ChainCache cache(64 * 1024);
  ASSERT_EQ(cache.Check(), ChainCache::Freshness::kCheckNow);
  cache.EpochRead(0);
  cache.Put("", "big", cache.generation(), ChainOf({Message("user", std::string(9000, 'x'))}));
  EXPECT_EQ(cache.Find("", "big"), nullptr);
  EXPECT_EQ(cache.bytes(), 0u);
}

// ---- ResponsesTurn::ChainAfter ----

std::shared_ptr<ResponsesTurn> RecordedTurn(const std::string& body,
                                            std::shared_ptr<const StoredContext> context) {
  responses::ResponsesRequest request;
  EXPECT_FALSE(responses::ParseResponsesRequest(body, request).has_value());
  auto turn = std::make_shared<ResponsesTurn>(std::move(request), "resp_new", 1700000000,
                                              std::move(context), 0);
  store::Turn stored;
  const std::string answer =
      R"({"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[{"index":0,)"
      R"("message":{"role":"assistant","content":"answer"},"finish_reason":"stop"}]})";
  ChatAnswer read;
  read.text = "answer";
  read.model = "m";
  read.finish_reason = "stop";
  read.plain_message = true;
  Status recorded = turn->Recorder()(stored, answer, read);
  EXPECT_TRUE(recorded.ok());
  return turn;
}

std::shared_ptr<const StoredContext> Previous(int items, bool has_more) {
  std::vector<ContextItem> chain;
  for (int i = 0; i < items; ++i) {
    chain.push_back(Message(i % 2 == 0 ? "user" : "assistant", std::to_string(i)));
  }
  return ChainOf(std::move(chain), has_more);
}

TEST(ResponsesTurnChainAfterTest, IsThePreviousChainThenTheInputThenTheOutput) {
  auto turn = RecordedTurn(R"({"model":"m","input":"question","previous_response_id":"resp_old"})",
                           Previous(2, false));
  auto chain = turn->ChainAfter(10);
  ASSERT_NE(chain, nullptr);
  EXPECT_THAT(Texts(*chain),
              ElementsAre("user:0", "assistant:1", "user:question", "assistant:answer"));
  EXPECT_FALSE(chain->has_more);
}

TEST(ResponsesTurnChainAfterTest, KeepsTheNewestItemsOfTheWindowAndSaysOlderOnesExist) {
  auto turn = RecordedTurn(R"({"model":"m","input":"question","previous_response_id":"resp_old"})",
                           Previous(4, false));
  auto chain = turn->ChainAfter(3);
  ASSERT_NE(chain, nullptr);
  EXPECT_THAT(Texts(*chain), ElementsAre("assistant:3", "user:question", "assistant:answer"));
  EXPECT_TRUE(chain->has_more);

  auto short_window = turn->ChainAfter(1);
  EXPECT_THAT(Texts(*short_window), ElementsAre("assistant:answer"));
  EXPECT_TRUE(short_window->has_more);
  EXPECT_EQ(turn->ChainAfter(0)->items.size(), 6u) << "0: no limit";

  // A previous window that already left items out passes that on.
  auto cut = RecordedTurn(R"({"model":"m","input":"q","previous_response_id":"resp_old"})",
                          Previous(2, true));
  EXPECT_TRUE(cut->ChainAfter(10)->has_more);
}

TEST(ResponsesTurnChainAfterTest, AConversationsItemsAreNotPartOfTheChain) {
  auto turn = RecordedTurn(R"({"model":"m","input":"question","conversation":"conv_1"})",
                           Previous(2, true));
  auto chain = turn->ChainAfter(10);
  ASSERT_NE(chain, nullptr);
  EXPECT_THAT(Texts(*chain), ElementsAre("user:question", "assistant:answer"));
  EXPECT_FALSE(chain->has_more);
}

TEST(ResponsesTurnChainAfterTest, NoChainForAResponseThatIsNotStored) {
  auto turn = RecordedTurn(R"({"model":"m","input":"question","store":false})", Previous(0, false));
  EXPECT_EQ(turn->ChainAfter(10), nullptr);
}

}  // namespace
}  // namespace staple::chat
