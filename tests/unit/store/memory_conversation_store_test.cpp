// The in-memory test double's Responses and Conversations state: the handlers' and the turn
// pipeline's tests rely on it behaving as the store contract says.

#include "support/memory_conversation_store.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "store_test_util.h"

namespace staple::store {
namespace {

using ::staple::store::testing::RunSync;
using ::staple::testing::MemoryConversationStore;

ItemToStore Item(const std::string& id) { return ItemToStore{id, R"({"id":")" + id + R"("})"}; }

ResponseRecord Record(const std::string& id, const std::string& previous,
                      const std::string& conversation = "") {
  ResponseRecord record;
  record.response.id = id;
  record.response.previous_response_id = previous;
  record.response.conversation_id = conversation;
  record.response.created_at = 1700000000;
  record.response.json = R"({"id":")" + id + R"("})";
  record.input = {Item(id + "-in")};
  record.output = {Item(id + "-out")};
  return record;
}

Turn StoredTurn(const std::string& owner, ResponseRecord record) {
  Turn turn = testing::MakeTurn("u", 1);
  turn.owner = owner;
  turn.response = std::make_shared<const ResponseRecord>(std::move(record));
  return turn;
}

std::vector<std::string> Ids(const std::vector<StoredItem>& items) {
  std::vector<std::string> ids;
  for (const StoredItem& item : items) ids.push_back(item.id);
  return ids;
}

TEST(MemoryConversationStoreState, AStoredTurnKeepsItsResponseAndTheChainFollowsIt) {
  MemoryConversationStore store;
  ASSERT_TRUE(RunSync(store.AppendTurn(StoredTurn("k", Record("r1", "")))).ok());
  ASSERT_TRUE(RunSync(store.AppendTurn(StoredTurn("k", Record("r2", "r1")))).ok());
  ASSERT_TRUE(RunSync(store.AppendTurn(StoredTurn("k", Record("r3", "r2")))).ok());
  ASSERT_EQ(store.responses().size(), 3u);
  EXPECT_EQ(store.responses()[2].response.id, "r3");
  EXPECT_EQ(store.rows().size(), 6u);

  auto response = RunSync(store.GetResponse("k", "r2"));
  ASSERT_TRUE(response.ok());
  ASSERT_TRUE(response->has_value());
  EXPECT_EQ((*response)->previous_response_id, "r1");
  EXPECT_FALSE(RunSync(store.GetResponse("other", "r2"))->has_value());

  auto all = RunSync(store.ResponseChain("k", "r3", 0));
  ASSERT_TRUE(all.ok() && all->has_value());
  EXPECT_EQ(Ids((*all)->items),
            (std::vector<std::string>{"r1-in", "r1-out", "r2-in", "r2-out", "r3-in", "r3-out"}));
  EXPECT_FALSE((*all)->has_more);
  EXPECT_EQ((*all)->items[1].response_id, "r1");
  EXPECT_TRUE((*all)->items[1].output);

  auto recent = RunSync(store.ResponseChain("k", "r3", 3));
  ASSERT_TRUE(recent.ok() && recent->has_value());
  EXPECT_EQ(Ids((*recent)->items), (std::vector<std::string>{"r2-out", "r3-in", "r3-out"}));
  EXPECT_TRUE((*recent)->has_more);

  auto middle = RunSync(store.ResponseChain("k", "r2", 0));
  EXPECT_EQ(Ids((*middle)->items),
            (std::vector<std::string>{"r1-in", "r1-out", "r2-in", "r2-out"}));
  EXPECT_FALSE(RunSync(store.ResponseChain("other", "r3", 0))->has_value());

  // A response deleted from the middle ends the chain there.
  ASSERT_TRUE(*RunSync(store.DeleteResponse("k", "r2")));
  EXPECT_FALSE(*RunSync(store.DeleteResponse("k", "r2")));
  auto cut = RunSync(store.ResponseChain("k", "r3", 0));
  EXPECT_EQ(Ids((*cut)->items), (std::vector<std::string>{"r3-in", "r3-out"}));
}

TEST(MemoryConversationStoreState, ListingsPageAfterAnItemInEitherOrder) {
  MemoryConversationStore store;
  ResponseRecord record = Record("r1", "");
  record.input = {Item("a"), Item("b"), Item("c")};
  store.SeedResponse(record, "k");
  EXPECT_TRUE(store.responses().empty());

  auto first = RunSync(store.ListResponseItems("k", "r1", false, "", 2, ItemOrder::kAscending));
  ASSERT_TRUE(first.ok() && first->has_value());
  EXPECT_EQ(Ids((*first)->items), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE((*first)->has_more);
  auto rest = RunSync(store.ListResponseItems("k", "r1", false, "b", 2, ItemOrder::kAscending));
  EXPECT_EQ(Ids((*rest)->items), (std::vector<std::string>{"c"}));
  EXPECT_FALSE((*rest)->has_more);
  auto down = RunSync(store.ListResponseItems("k", "r1", false, "c", 5, ItemOrder::kDescending));
  EXPECT_EQ(Ids((*down)->items), (std::vector<std::string>{"b", "a"}));
  auto output = RunSync(store.ListResponseItems("k", "r1", true, "", 5, ItemOrder::kAscending));
  EXPECT_EQ(Ids((*output)->items), (std::vector<std::string>{"r1-out"}));

  auto unknown = RunSync(store.ListResponseItems("k", "r1", false, "zz", 5, ItemOrder::kAscending));
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().kind, ErrorKind::kNotFound);
  EXPECT_FALSE(RunSync(store.ListResponseItems("x", "r1", false, "", 5, ItemOrder::kAscending))
                   ->has_value());
}

TEST(MemoryConversationStoreState, ConversationsHoldTheirItemsAndThoseOfTheirResponses) {
  MemoryConversationStore store;
  StoredConversation conversation;
  conversation.id = "c1";
  conversation.created_at = 1700000000;
  ASSERT_TRUE(RunSync(store.CreateConversation("k", conversation, {Item("a")})).ok());
  ASSERT_TRUE(RunSync(store.AppendTurn(StoredTurn("k", Record("r1", "", "c1")))).ok());
  auto appended = RunSync(store.AppendConversationItems("k", "c1", {Item("b"), Item("c")}));
  ASSERT_TRUE(appended.ok() && appended->has_value());
  ASSERT_EQ((*appended)->size(), 2u);
  EXPECT_LT((**appended)[0].seq, (**appended)[1].seq);
  EXPECT_FALSE(RunSync(store.AppendConversationItems("k", "c2", {Item("x")}))->has_value());
  EXPECT_FALSE(RunSync(store.AppendConversationItems("j", "c1", {Item("x")}))->has_value());

  auto window = RunSync(store.ConversationItems("k", "c1", 0));
  ASSERT_TRUE(window.ok() && window->has_value());
  EXPECT_EQ(Ids((*window)->items), (std::vector<std::string>{"a", "r1-in", "r1-out", "b", "c"}));
  EXPECT_EQ((*window)->items[1].response_id, "r1");
  EXPECT_EQ((*window)->items[0].response_id, "");
  auto last = RunSync(store.ConversationItems("k", "c1", 2));
  EXPECT_EQ(Ids((*last)->items), (std::vector<std::string>{"b", "c"}));
  EXPECT_TRUE((*last)->has_more);

  auto page = RunSync(store.ListConversationItems("k", "c1", "b", 10, ItemOrder::kDescending));
  EXPECT_EQ(Ids((*page)->items), (std::vector<std::string>{"r1-out", "r1-in", "a"}));
  auto item = RunSync(store.GetConversationItem("k", "c1", "r1-in"));
  ASSERT_TRUE(item.ok() && item->has_value());
  EXPECT_EQ((*item)->json, R"({"id":"r1-in"})");
  EXPECT_FALSE(RunSync(store.GetConversationItem("j", "c1", "r1-in"))->has_value());

  // Deleting the response keeps the items the conversation holds.
  ASSERT_TRUE(*RunSync(store.DeleteResponse("k", "r1")));
  EXPECT_EQ(Ids((*RunSync(store.ConversationItems("k", "c1", 0)))->items),
            (std::vector<std::string>{"a", "r1-in", "r1-out", "b", "c"}));
  EXPECT_TRUE(*RunSync(store.DeleteConversationItem("k", "c1", "b")));
  EXPECT_FALSE(*RunSync(store.DeleteConversationItem("k", "c1", "b")));

  auto updated = RunSync(store.UpdateConversation("k", "c1", R"({"a":"b"})"));
  ASSERT_TRUE(updated.ok() && updated->has_value());
  EXPECT_EQ((*updated)->metadata_json, R"({"a":"b"})");
  EXPECT_EQ((*updated)->created_at, 1700000000);
  EXPECT_FALSE(RunSync(store.UpdateConversation("j", "c1", "{}"))->has_value());

  EXPECT_FALSE(*RunSync(store.DeleteConversation("j", "c1")));
  EXPECT_TRUE(*RunSync(store.DeleteConversation("k", "c1")));
  EXPECT_FALSE(RunSync(store.GetConversation("k", "c1"))->has_value());
  EXPECT_FALSE(RunSync(store.ConversationItems("k", "c1", 0))->has_value());
}

TEST(MemoryConversationStoreState, FaultsApplyToTheStateToo) {
  MemoryConversationStore store;
  store.FailAppends(MakeError(ErrorKind::kStorage, "disk full"));
  EXPECT_FALSE(RunSync(store.AppendTurn(StoredTurn("k", Record("r1", "")))).ok());
  EXPECT_TRUE(store.responses().empty());
  StoredConversation conversation;
  conversation.id = "c1";
  EXPECT_FALSE(RunSync(store.CreateConversation("k", conversation, {})).ok());
  store.FailAppends(std::nullopt);
  ASSERT_TRUE(RunSync(store.CreateConversation("k", conversation, {})).ok());
  store.FailAppends(MakeError(ErrorKind::kStorage, "disk full"));
  EXPECT_FALSE(RunSync(store.AppendConversationItems("k", "c1", {Item("a")})).ok());
  EXPECT_FALSE(RunSync(store.DeleteConversation("k", "c1")).ok());
  store.FailAppends(std::nullopt);

  store.FailReads(MakeError(ErrorKind::kStorage, "down"));
  EXPECT_FALSE(RunSync(store.GetConversation("k", "c1")).ok());
  EXPECT_FALSE(RunSync(store.ConversationItems("k", "c1", 0)).ok());
  EXPECT_FALSE(RunSync(store.ResponseChain("k", "r1", 0)).ok());
  store.FailReads(std::nullopt);
  EXPECT_TRUE(RunSync(store.GetConversation("k", "c1"))->has_value());
  EXPECT_TRUE((*RunSync(store.ConversationItems("k", "c1", 0)))->items.empty());
}

}  // namespace
}  // namespace staple::store
