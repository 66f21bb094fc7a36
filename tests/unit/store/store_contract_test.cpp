// The behaviour every ConversationStore must have. An implementation joins the suite by adding a
// factory to the INSTANTIATE_TEST_SUITE_P list at the end of this file.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <ostream>
#include <regex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "postgres_test_util.h"
#include "store/conversation_store.h"
#include "store/postgres/postgres_conversation_store.h"
#include "store/sqlite/sqlite_conversation_store.h"
#include "store_test_util.h"
#include "support/history.h"

namespace staple::store {
namespace {

using testing::Contents;
using testing::Describe;
using testing::MakeTurn;
using testing::RunSync;
using testing::TempDir;

// An item whose JSON names its id.
ItemToStore Item(const std::string& id) {
  return ItemToStore{id, R"({"id":")" + id + R"(","type":"message"})"};
}

std::vector<std::string> Ids(const std::vector<StoredItem>& items) {
  std::vector<std::string> ids;
  for (const StoredItem& item : items) ids.push_back(item.id);
  return ids;
}

// A stored Responses turn of `owner`: response `id` continuing `previous` ("" = none), in
// `conversation` ("" = none), with `inputs` input items "<id>/in<n>" and `outputs` output items
// "<id>/out<n>".
Turn ResponseTurn(const std::string& owner, const std::string& id, const std::string& previous,
                  const std::string& conversation = "", int inputs = 1, int outputs = 1) {
  Turn turn = MakeTurn("responses-user", 0);
  turn.owner = owner;
  auto record = std::make_shared<ResponseRecord>();
  record->response.id = id;
  record->response.previous_response_id = previous;
  record->response.conversation_id = conversation;
  record->response.created_at = 1700000000;
  record->response.json = R"({"id":")" + id + R"(","object":"response"})";
  for (int n = 0; n < inputs; ++n) record->input.push_back(Item(id + "/in" + std::to_string(n)));
  for (int n = 0; n < outputs; ++n) {
    record->output.push_back(Item(id + "/out" + std::to_string(n)));
  }
  turn.response = std::move(record);
  return turn;
}

StoredConversation Conversation(const std::string& id,
                                const std::string& metadata_json = R"({"topic":"test"})") {
  StoredConversation conversation;
  conversation.id = id;
  conversation.created_at = 1700000100;
  conversation.metadata_json = metadata_json;
  return conversation;
}

// Opens a fresh, empty store whose files (if any) live under `dir`; after Close(), opening again
// with the same `dir` gives a store over the same data.
using StoreFactory = std::function<std::unique_ptr<ConversationStore>(const std::string& dir)>;

struct ContractParam {
  std::string name;
  StoreFactory open;
};

// A failing test names its store.
void PrintTo(const ContractParam& param, std::ostream* os) { *os << param.name; }

class ConversationStoreContract : public ::testing::TestWithParam<ContractParam> {
 protected:
  void SetUp() override {
    store_ = GetParam().open(dir_.path().string());
    ASSERT_NE(store_, nullptr);
  }
  void TearDown() override {
    if (store_) store_->Close();
  }

  Status Append(const Turn& turn) { return RunSync(store_->AppendTurn(turn)); }

  // RecentMessages, checked against the whole rows ListMessages reads: the same ids, roles and
  // contents as the newest `max` rows (all for 0).
  std::vector<HistoryMessage> Recent(const std::string& user_id, std::size_t max) {
    auto messages = RunSync(store_->RecentMessages("", user_id, max));
    EXPECT_TRUE(messages.ok()) << Describe(messages);
    if (!messages.ok()) return {};
    std::vector<HistoryMessage> recent = ::staple::testing::CopiedRows(*messages);
    std::vector<HistoryMessage> expected;
    for (const StoredMessage& row : Rows(user_id)) {
      expected.push_back(::staple::testing::HistoryOf(row));
    }
    if (max != 0 && expected.size() > max) {
      expected.erase(expected.begin(), expected.end() - static_cast<std::ptrdiff_t>(max));
    }
    EXPECT_TRUE(recent == expected) << "RecentMessages differs from the stored rows of " << user_id;
    return recent;
  }

  // Every stored row of `user_id`, whole, oldest first.
  std::vector<StoredMessage> Rows(const std::string& user_id) {
    return List(user_id, 0, std::numeric_limits<std::size_t>::max()).messages;
  }

  MessagePage List(const std::string& user_id, std::int64_t after_id, std::size_t limit) {
    auto page = RunSync(store_->ListMessages("", user_id, after_id, limit));
    EXPECT_TRUE(page.ok()) << Describe(page);
    return page.ok() ? std::move(page).value() : MessagePage{};
  }

  void AppendTurns(const std::string& user_id, int count) {
    for (int n = 0; n < count; ++n) {
      Status appended = Append(MakeTurn(user_id, n));
      ASSERT_TRUE(appended.ok()) << Describe(appended);
    }
  }

  void StoreResponse(const std::string& owner, const std::string& id, const std::string& previous,
                     const std::string& conversation = "", int inputs = 1, int outputs = 1) {
    Status appended = Append(ResponseTurn(owner, id, previous, conversation, inputs, outputs));
    ASSERT_TRUE(appended.ok()) << Describe(appended);
  }

  // The chain's item ids, or {"<none>"} when the response is not found.
  std::vector<std::string> ChainIds(const std::string& id, std::size_t max = 0,
                                    bool* has_more = nullptr, const std::string& owner = "") {
    auto chain = RunSync(store_->ResponseChain(owner, id, max));
    EXPECT_TRUE(chain.ok()) << Describe(chain);
    if (!chain.ok() || !chain->has_value()) return {"<none>"};
    if (has_more != nullptr) *has_more = (*chain)->has_more;
    return Ids((*chain)->items);
  }

  // A page of response items; ADD_FAILURE when the read fails or the response is missing.
  ItemPage ResponseItems(const std::string& id, bool output, const std::string& after,
                         std::size_t limit, ItemOrder order) {
    auto page = RunSync(store_->ListResponseItems("", id, output, after, limit, order));
    EXPECT_TRUE(page.ok()) << Describe(page);
    if (!page.ok() || !page->has_value()) {
      ADD_FAILURE() << "no response " << id;
      return {};
    }
    return std::move(**page);
  }

  void CreateConversation(const std::string& id, std::vector<ItemToStore> items = {},
                          const std::string& owner = "") {
    Status created = RunSync(store_->CreateConversation(owner, Conversation(id), std::move(items)));
    ASSERT_TRUE(created.ok()) << Describe(created);
  }

  std::vector<StoredItem> AppendItems(const std::string& id, std::vector<ItemToStore> items) {
    auto appended = RunSync(store_->AppendConversationItems("", id, std::move(items)));
    EXPECT_TRUE(appended.ok()) << Describe(appended);
    if (!appended.ok() || !appended->has_value()) {
      ADD_FAILURE() << "no conversation " << id;
      return {};
    }
    return std::move(**appended);
  }

  // The conversation's item ids, or {"<none>"} when it is not found.
  std::vector<std::string> ConversationIds(const std::string& id, std::size_t max = 0,
                                           bool* has_more = nullptr,
                                           const std::string& owner = "") {
    auto window = RunSync(store_->ConversationItems(owner, id, max));
    EXPECT_TRUE(window.ok()) << Describe(window);
    if (!window.ok() || !window->has_value()) return {"<none>"};
    if (has_more != nullptr) *has_more = (*window)->has_more;
    return Ids((*window)->items);
  }

  ItemPage ConversationPage(const std::string& id, const std::string& after, std::size_t limit,
                            ItemOrder order) {
    auto page = RunSync(store_->ListConversationItems("", id, after, limit, order));
    EXPECT_TRUE(page.ok()) << Describe(page);
    if (!page.ok() || !page->has_value()) {
      ADD_FAILURE() << "no conversation " << id;
      return {};
    }
    return std::move(**page);
  }

  TempDir dir_;
  std::unique_ptr<ConversationStore> store_;
};

std::chrono::system_clock::time_point FixedTime() {
  // 2024-03-01 12:34:56.789012 UTC
  return std::chrono::system_clock::time_point(std::chrono::microseconds(1709296496789012));
}

TEST_P(ConversationStoreContract, AppendTurnThenReadBothRowsBack) {
  Turn turn = MakeTurn("alice", 1);
  turn.prompt_time = FixedTime();
  turn.completion_time = FixedTime() + std::chrono::microseconds(1'500'001);
  turn.prompt_tokens = 12;
  turn.completion_tokens = 34;
  turn.latency_ms = 56;
  ASSERT_TRUE(Append(turn).ok());

  ASSERT_EQ(Recent("alice", 0).size(), 2u);
  const auto messages = Rows("alice");
  ASSERT_EQ(messages.size(), 2u);
  const StoredMessage& user = messages[0];
  const StoredMessage& assistant = messages[1];

  EXPECT_GT(user.id, 0);
  EXPECT_GT(assistant.id, user.id);
  EXPECT_EQ(user.user_id, "alice");
  EXPECT_EQ(assistant.user_id, "alice");
  EXPECT_EQ(user.role, "user");
  EXPECT_EQ(assistant.role, "assistant");
  EXPECT_EQ(user.content, "prompt 1");
  EXPECT_EQ(assistant.content, "answer 1");

  const std::regex timestamp_format(R"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6})");
  EXPECT_TRUE(std::regex_match(user.timestamp, timestamp_format)) << user.timestamp;
  EXPECT_TRUE(std::regex_match(assistant.timestamp, timestamp_format)) << assistant.timestamp;
  EXPECT_EQ(user.timestamp, "2024-03-01 12:34:56.789012");
  EXPECT_EQ(assistant.timestamp, "2024-03-01 12:34:58.289013");

  EXPECT_EQ(user.request_id, "req-alice-1");
  EXPECT_EQ(assistant.request_id, "req-alice-1");
  EXPECT_EQ(user.model, "test-model");
  EXPECT_EQ(assistant.model, "test-model");

  EXPECT_EQ(user.prompt_tokens, std::nullopt);
  EXPECT_EQ(user.completion_tokens, std::nullopt);
  EXPECT_EQ(user.latency_ms, std::nullopt);
  EXPECT_EQ(assistant.prompt_tokens, 12);
  EXPECT_EQ(assistant.completion_tokens, 34);
  EXPECT_EQ(assistant.latency_ms, 56);
}

TEST_P(ConversationStoreContract, MissingTokenCountsStayMissing) {
  Turn turn = MakeTurn("alice", 1);
  turn.prompt_tokens.reset();
  turn.completion_tokens.reset();
  ASSERT_TRUE(Append(turn).ok());
  const auto messages = Rows("alice");
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[1].prompt_tokens, std::nullopt);
  EXPECT_EQ(messages[1].completion_tokens, std::nullopt);
  EXPECT_EQ(messages[1].latency_ms, 250);
}

TEST_P(ConversationStoreContract, UnicodeAndLargeContentAreByteExact) {
  Turn turn = MakeTurn("ユーザー-é", 1);
  turn.prompt = "héllo wörld — 你好 🌍 \"quotes\" 'single' \\ back\tslash\n\r\nnew lines";
  // 100 KB of mixed one- to four-byte UTF-8 sequences.
  const std::string pieces[] = {"a", "é", "€", "𝄞", "\n", "z", "ß", "中"};
  std::string large;
  for (std::size_t i = 0; large.size() < 100 * 1024; ++i) large += pieces[(i * 7 + i / 3) % 8];
  turn.completion = large;
  ASSERT_TRUE(Append(turn).ok());

  ASSERT_EQ(Recent("ユーザー-é", 0).size(), 2u);
  const auto messages = Rows("ユーザー-é");
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0].user_id, "ユーザー-é");
  EXPECT_EQ(messages[0].content, turn.prompt);
  EXPECT_EQ(messages[1].content.size(), large.size());
  EXPECT_TRUE(messages[1].content == large);
}

TEST_P(ConversationStoreContract, NulBytesAndInvalidUtf8AreReplacedByReplacementCharacters) {
  const std::string replacement = "\xEF\xBF\xBD";  // U+FFFD
  Turn turn = MakeTurn("alice", 1);
  turn.prompt = std::string("a\0b", 3);
  turn.completion = "x\xffy";
  turn.request_id = std::string("req\0", 4);
  turn.model = "m\xC3\x28";  // a lead byte without its continuation
  ASSERT_TRUE(Append(turn).ok());

  ASSERT_EQ(Recent("alice", 0).size(), 2u);
  const MessagePage page = List("alice", 0, 10);
  ASSERT_EQ(page.messages.size(), 2u);
  EXPECT_EQ(page.messages[0].content, "a" + replacement + "b");
  EXPECT_EQ(page.messages[1].content, "x" + replacement + "y");
  for (const StoredMessage& message : page.messages) {
    EXPECT_EQ(message.request_id, "req" + replacement);
    EXPECT_EQ(message.model, "m" + replacement + "(");
  }
}

TEST_P(ConversationStoreContract, InvalidUserIdsAreStoredAndLookedUpReplaced) {
  const std::string raw = std::string("u\0\xfe", 3);
  const std::string stored = "u\xEF\xBF\xBD\xEF\xBF\xBD";
  ASSERT_TRUE(Append(MakeTurn(raw, 1)).ok());

  ASSERT_EQ(Recent(raw, 0).size(), 2u);
  const auto by_raw = Rows(raw);
  ASSERT_EQ(by_raw.size(), 2u);
  EXPECT_EQ(by_raw[0].user_id, stored);
  EXPECT_EQ(Recent(stored, 0).size(), 2u);
  EXPECT_EQ(List(raw, 0, 10).messages.size(), 2u);

  auto deleted = RunSync(store_->DeleteMessages("", raw));
  ASSERT_TRUE(deleted.ok()) << Describe(deleted);
  EXPECT_EQ(*deleted, 2);
  EXPECT_TRUE(Recent(stored, 0).empty());
}

TEST_P(ConversationStoreContract, EmptyContentIsStoredAsEmpty) {
  Turn turn = MakeTurn("alice", 1);
  turn.completion.clear();
  turn.request_id.clear();
  turn.model.clear();
  ASSERT_TRUE(Append(turn).ok());
  EXPECT_EQ(Recent("alice", 0).size(), 2u);
  const auto messages = Rows("alice");
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[1].content, "");
  EXPECT_EQ(messages[1].request_id, "");
  EXPECT_EQ(messages[1].model, "");
}

TEST_P(ConversationStoreContract, UsersAreIsolated) {
  AppendTurns("alice", 2);
  AppendTurns("bob", 3);

  EXPECT_EQ(Recent("alice", 0).size(), 4u);
  EXPECT_EQ(Recent("bob", 0).size(), 6u);
  const auto alice = Rows("alice");
  const auto bob = Rows("bob");
  ASSERT_EQ(alice.size(), 4u);
  ASSERT_EQ(bob.size(), 6u);
  for (const StoredMessage& message : alice) EXPECT_EQ(message.user_id, "alice");
  for (const StoredMessage& message : bob) EXPECT_EQ(message.user_id, "bob");
  EXPECT_TRUE(Recent("carol", 0).empty());
  EXPECT_TRUE(List("carol", 0, 10).messages.empty());
  // A user id that is a prefix of another is a different user.
  EXPECT_TRUE(Recent("ali", 0).empty());
}

TEST_P(ConversationStoreContract, RecentMessagesKeepsTheNewestOldestFirst) {
  AppendTurns("alice", 5);

  EXPECT_THAT(Contents(Recent("alice", 3)),
              ::testing::ElementsAre("answer 3", "prompt 4", "answer 4"));
  EXPECT_THAT(Contents(Recent("alice", 1)), ::testing::ElementsAre("answer 4"));

  const auto all = Recent("alice", 0);
  ASSERT_EQ(all.size(), 10u);
  EXPECT_EQ(all.front().content, "prompt 0");
  EXPECT_EQ(all.back().content, "answer 4");
  for (std::size_t i = 1; i < all.size(); ++i) EXPECT_LT(all[i - 1].id, all[i].id);

  EXPECT_EQ(Recent("alice", 10).size(), 10u);
  EXPECT_EQ(Recent("alice", 1000).size(), 10u);
}

TEST_P(ConversationStoreContract, ListMessagesPagesOldestFirstWithHasMore) {
  AppendTurns("alice", 5);
  AppendTurns("bob", 1);
  const auto all = Recent("alice", 0);
  ASSERT_EQ(all.size(), 10u);

  std::vector<StoredMessage> collected;
  std::vector<bool> has_more;
  std::int64_t after_id = 0;
  for (;;) {
    MessagePage page = List("alice", after_id, 4);
    has_more.push_back(page.has_more);
    ASSERT_LE(page.messages.size(), 4u);
    if (page.messages.empty()) break;
    after_id = page.messages.back().id;
    collected.insert(collected.end(), page.messages.begin(), page.messages.end());
    if (!page.has_more) break;
  }
  EXPECT_THAT(has_more, ::testing::ElementsAre(true, true, false));
  EXPECT_EQ(Contents(collected), Contents(all));
  for (std::size_t i = 0; i < all.size(); ++i) EXPECT_EQ(collected[i].id, all[i].id);

  // A page that ends exactly at the last message has nothing more.
  MessagePage exact = List("alice", 0, 10);
  EXPECT_EQ(exact.messages.size(), 10u);
  EXPECT_FALSE(exact.has_more);
  // Past the end.
  MessagePage past = List("alice", all.back().id, 10);
  EXPECT_TRUE(past.messages.empty());
  EXPECT_FALSE(past.has_more);
  // A zero limit returns nothing but still tells whether messages exist.
  MessagePage zero = List("alice", 0, 0);
  EXPECT_TRUE(zero.messages.empty());
  EXPECT_TRUE(zero.has_more);
  // Starting in the middle.
  MessagePage middle = List("alice", all[6].id, 100);
  EXPECT_THAT(Contents(middle.messages),
              ::testing::ElementsAre("answer 3", "prompt 4", "answer 4"));
  EXPECT_FALSE(middle.has_more);
}

// A conversation is (owner, user_id): two owners with the same user_id never see, continue or
// delete each other's rows, and the rows without an owner are a third conversation.
TEST_P(ConversationStoreContract, OwnersHaveSeparateConversations) {
  Turn of_a = MakeTurn("alice", 0);
  of_a.owner = "key_a";
  Turn of_b = MakeTurn("alice", 1);
  of_b.owner = "key_b";
  ASSERT_TRUE(Append(of_a).ok());
  ASSERT_TRUE(Append(of_b).ok());
  AppendTurns("alice", 1);  // no owner

  auto recent_a = RunSync(store_->RecentMessages("key_a", "alice", 0));
  ASSERT_TRUE(recent_a.ok()) << Describe(recent_a);
  EXPECT_THAT(Contents(*recent_a), ::testing::ElementsAre("prompt 0", "answer 0"));
  auto page_b = RunSync(store_->ListMessages("key_b", "alice", 0, 10));
  ASSERT_TRUE(page_b.ok()) << Describe(page_b);
  EXPECT_THAT(Contents(page_b->messages), ::testing::ElementsAre("prompt 1", "answer 1"));
  EXPECT_EQ(Recent("alice", 0).size(), 2u);
  auto none = RunSync(store_->RecentMessages("key_c", "alice", 0));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());

  auto deleted = RunSync(store_->DeleteMessages("key_b", "alice"));
  ASSERT_TRUE(deleted.ok()) << Describe(deleted);
  EXPECT_EQ(*deleted, 2);
  auto still_a = RunSync(store_->RecentMessages("key_a", "alice", 0));
  ASSERT_TRUE(still_a.ok());
  EXPECT_EQ(still_a->size(), 2u);
  EXPECT_EQ(Recent("alice", 0).size(), 2u);
}

TEST_P(ConversationStoreContract, DeleteMessagesRemovesOnlyThatUser) {
  AppendTurns("alice", 3);
  AppendTurns("bob", 2);

  auto deleted = RunSync(store_->DeleteMessages("", "alice"));
  ASSERT_TRUE(deleted.ok()) << Describe(deleted);
  EXPECT_EQ(*deleted, 6);
  EXPECT_TRUE(Recent("alice", 0).empty());
  EXPECT_EQ(Recent("bob", 0).size(), 4u);

  auto again = RunSync(store_->DeleteMessages("", "alice"));
  ASSERT_TRUE(again.ok()) << Describe(again);
  EXPECT_EQ(*again, 0);

  // The user can start a new conversation afterwards.
  ASSERT_TRUE(Append(MakeTurn("alice", 7)).ok());
  EXPECT_THAT(Contents(Recent("alice", 0)), ::testing::ElementsAre("prompt 7", "answer 7"));
}

TEST_P(ConversationStoreContract, PingAnswers) {
  Status ping = RunSync(store_->Ping());
  EXPECT_TRUE(ping.ok()) << Describe(ping);
}

// Appends `turns` turns for `user_id` one after another, counting failures.
net::awaitable<void> AppendSequentially(ConversationStore* store, std::string user_id, int turns,
                                        std::atomic<int>* failures) {
  for (int n = 0; n < turns; ++n) {
    Status appended = co_await store->AppendTurn(MakeTurn(user_id, n));
    if (!appended.ok()) failures->fetch_add(1);
  }
}

TEST_P(ConversationStoreContract, ConcurrentAppendsFromSeveralThreadsAreAllStoredInOrder) {
  // 4 threads x 10 users x 50 turns: 2000 turns, up to 40 appends in flight at once. Each user's
  // turns are appended in sequence, so each user's ids must increase in that order.
  constexpr int kThreads = 4;
  constexpr int kUsersPerThread = 10;
  constexpr int kTurnsPerUser = 50;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      net::io_context io;
      for (int u = 0; u < kUsersPerThread; ++u) {
        const std::string user_id = "user-" + std::to_string(t) + "-" + std::to_string(u);
        net::co_spawn(io, AppendSequentially(store_.get(), user_id, kTurnsPerUser, &failures),
                      [](std::exception_ptr e) {
                        if (e) std::rethrow_exception(e);
                      });
      }
      io.run();
    });
  }
  // Reads run concurrently with the writes and must always see whole turns.
  for (int i = 0; i < 20; ++i) {
    // Not Recent(): the rows it compares with are read later, after more commits.
    const auto seen = RunSync(store_->RecentMessages("", "user-0-0", 0));
    ASSERT_TRUE(seen.ok()) << Describe(seen);
    EXPECT_EQ(seen->size() % 2, 0u);
  }
  for (std::thread& thread : threads) thread.join();

  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(store_->PendingWrites(), 0u);
  for (int t = 0; t < kThreads; ++t) {
    for (int u = 0; u < kUsersPerThread; ++u) {
      const std::string user_id = "user-" + std::to_string(t) + "-" + std::to_string(u);
      const auto messages = Recent(user_id, 0);
      ASSERT_EQ(messages.size(), 2u * kTurnsPerUser) << user_id;
      for (int n = 0; n < kTurnsPerUser; ++n) {
        const HistoryMessage& prompt = messages[2 * static_cast<std::size_t>(n)];
        const HistoryMessage& answer = messages[2 * static_cast<std::size_t>(n) + 1];
        EXPECT_EQ(prompt.content, "prompt " + std::to_string(n)) << user_id;
        EXPECT_EQ(answer.content, "answer " + std::to_string(n)) << user_id;
        EXPECT_EQ(prompt.role, "user");
        EXPECT_EQ(answer.role, "assistant");
      }
      for (std::size_t i = 1; i < messages.size(); ++i) {
        ASSERT_LT(messages[i - 1].id, messages[i].id) << user_id;
      }
    }
  }
}

TEST_P(ConversationStoreContract, PendingWritesIsZeroWhenIdle) {
  EXPECT_EQ(store_->PendingWrites(), 0u);
  AppendTurns("alice", 2);
  EXPECT_EQ(store_->PendingWrites(), 0u);
}

TEST_P(ConversationStoreContract, CallsAfterCloseAreUnavailable) {
  AppendTurns("alice", 1);
  store_->Close();
  store_->Close();  // idempotent

  Status appended = Append(MakeTurn("alice", 2));
  ASSERT_FALSE(appended.ok());
  EXPECT_EQ(appended.error().kind, ErrorKind::kStorage);

  auto recent = RunSync(store_->RecentMessages("", "alice", 0));
  ASSERT_FALSE(recent.ok());
  EXPECT_EQ(recent.error().kind, ErrorKind::kStorage);

  auto page = RunSync(store_->ListMessages("", "alice", 0, 10));
  ASSERT_FALSE(page.ok());
  EXPECT_EQ(page.error().kind, ErrorKind::kStorage);

  auto deleted = RunSync(store_->DeleteMessages("", "alice"));
  ASSERT_FALSE(deleted.ok());
  EXPECT_EQ(deleted.error().kind, ErrorKind::kStorage);

  Status ping = RunSync(store_->Ping());
  ASSERT_FALSE(ping.ok());
  EXPECT_EQ(ping.error().kind, ErrorKind::kStorage);
  EXPECT_EQ(store_->PendingWrites(), 0u);
}

// ---- The Responses and Conversations state ----

using ::testing::ElementsAre;

TEST_P(ConversationStoreContract, AResponseStoredWithItsTurnIsReadable) {
  StoreResponse("", "resp_1", "", "", 2, 3);
  // The turn's own rows are there as for any turn.
  EXPECT_THAT(Contents(Recent("responses-user", 0)), ElementsAre("prompt 0", "answer 0"));

  auto response = RunSync(store_->GetResponse("", "resp_1"));
  ASSERT_TRUE(response.ok()) << Describe(response);
  ASSERT_TRUE(response->has_value());
  EXPECT_EQ((*response)->id, "resp_1");
  EXPECT_EQ((*response)->json, R"({"id":"resp_1","object":"response"})");
  EXPECT_EQ((*response)->created_at, 1700000000);
  EXPECT_EQ((*response)->previous_response_id, "");
  EXPECT_EQ((*response)->conversation_id, "");

  const ItemPage input = ResponseItems("resp_1", false, "", 10, ItemOrder::kAscending);
  EXPECT_THAT(Ids(input.items), ElementsAre("resp_1/in0", "resp_1/in1"));
  EXPECT_FALSE(input.has_more);
  for (const StoredItem& item : input.items) {
    EXPECT_FALSE(item.output);
    EXPECT_EQ(item.response_id, "resp_1");
    EXPECT_EQ(item.json, R"({"id":")" + item.id + R"(","type":"message"})");
  }
  const ItemPage output = ResponseItems("resp_1", true, "", 10, ItemOrder::kDescending);
  EXPECT_THAT(Ids(output.items), ElementsAre("resp_1/out2", "resp_1/out1", "resp_1/out0"));
  for (const StoredItem& item : output.items) EXPECT_TRUE(item.output);
  // Input items were stored before output items.
  ASSERT_EQ(output.items.size(), 3u);
  EXPECT_LT(input.items.back().seq, output.items.back().seq);
  EXPECT_GT(output.items[0].seq, output.items[1].seq);

  auto missing = RunSync(store_->GetResponse("", "resp_2"));
  ASSERT_TRUE(missing.ok()) << Describe(missing);
  EXPECT_FALSE(missing->has_value());
  auto no_items =
      RunSync(store_->ListResponseItems("", "resp_2", false, "", 10, ItemOrder::kAscending));
  ASSERT_TRUE(no_items.ok()) << Describe(no_items);
  EXPECT_FALSE(no_items->has_value());
}

TEST_P(ConversationStoreContract, ResponseItemsArePagedInEitherOrder) {
  StoreResponse("", "resp_1", "", "", 1, 5);
  ItemPage page = ResponseItems("resp_1", true, "", 2, ItemOrder::kAscending);
  EXPECT_THAT(Ids(page.items), ElementsAre("resp_1/out0", "resp_1/out1"));
  EXPECT_TRUE(page.has_more);
  page = ResponseItems("resp_1", true, "resp_1/out1", 2, ItemOrder::kAscending);
  EXPECT_THAT(Ids(page.items), ElementsAre("resp_1/out2", "resp_1/out3"));
  EXPECT_TRUE(page.has_more);
  page = ResponseItems("resp_1", true, "resp_1/out3", 2, ItemOrder::kAscending);
  EXPECT_THAT(Ids(page.items), ElementsAre("resp_1/out4"));
  EXPECT_FALSE(page.has_more);
  // A page that ends exactly at the last item has nothing more.
  page = ResponseItems("resp_1", true, "resp_1/out2", 2, ItemOrder::kAscending);
  EXPECT_THAT(Ids(page.items), ElementsAre("resp_1/out3", "resp_1/out4"));
  EXPECT_FALSE(page.has_more);

  page = ResponseItems("resp_1", true, "", 2, ItemOrder::kDescending);
  EXPECT_THAT(Ids(page.items), ElementsAre("resp_1/out4", "resp_1/out3"));
  EXPECT_TRUE(page.has_more);
  page = ResponseItems("resp_1", true, "resp_1/out2", 10, ItemOrder::kDescending);
  EXPECT_THAT(Ids(page.items), ElementsAre("resp_1/out1", "resp_1/out0"));
  EXPECT_FALSE(page.has_more);
  page = ResponseItems("resp_1", true, "resp_1/out0", 10, ItemOrder::kDescending);
  EXPECT_TRUE(page.items.empty());
  EXPECT_FALSE(page.has_more);

  // A zero limit returns nothing but still tells whether items exist.
  page = ResponseItems("resp_1", true, "", 0, ItemOrder::kAscending);
  EXPECT_TRUE(page.items.empty());
  EXPECT_TRUE(page.has_more);

  // `after` must be an item of this very list: not unknown, not an input item in the output list.
  for (const std::string after : {"resp_1/out9", "resp_1/in0"}) {
    auto unknown =
        RunSync(store_->ListResponseItems("", "resp_1", true, after, 10, ItemOrder::kAscending));
    ASSERT_FALSE(unknown.ok()) << after;
    EXPECT_EQ(unknown.error().kind, ErrorKind::kNotFound) << after;
  }
}

TEST_P(ConversationStoreContract, AResponseChainHoldsEveryResponseOfItOldestFirst) {
  StoreResponse("", "resp_1", "");
  StoreResponse("", "resp_2", "resp_1");
  StoreResponse("", "resp_3", "resp_2", "", 2, 1);

  bool has_more = true;
  EXPECT_THAT(ChainIds("resp_3", 0, &has_more),
              ElementsAre("resp_1/in0", "resp_1/out0", "resp_2/in0", "resp_2/out0", "resp_3/in0",
                          "resp_3/in1", "resp_3/out0"));
  EXPECT_FALSE(has_more);
  EXPECT_THAT(ChainIds("resp_2"),
              ElementsAre("resp_1/in0", "resp_1/out0", "resp_2/in0", "resp_2/out0"));
  EXPECT_THAT(ChainIds("resp_1"), ElementsAre("resp_1/in0", "resp_1/out0"));

  // max_items keeps the most recent items, still oldest first.
  EXPECT_THAT(ChainIds("resp_3", 4, &has_more),
              ElementsAre("resp_2/out0", "resp_3/in0", "resp_3/in1", "resp_3/out0"));
  EXPECT_TRUE(has_more);
  EXPECT_THAT(ChainIds("resp_3", 1, &has_more), ElementsAre("resp_3/out0"));
  EXPECT_TRUE(has_more);
  EXPECT_EQ(ChainIds("resp_3", 7, &has_more).size(), 7u);
  EXPECT_FALSE(has_more);
  EXPECT_EQ(ChainIds("resp_3", 100, &has_more).size(), 7u);
  EXPECT_FALSE(has_more);

  auto chain = RunSync(store_->ResponseChain("", "resp_3", 0));
  ASSERT_TRUE(chain.ok()) << Describe(chain);
  ASSERT_TRUE(chain->has_value());
  for (std::size_t i = 1; i < (*chain)->items.size(); ++i) {
    EXPECT_LT((*chain)->items[i - 1].seq, (*chain)->items[i].seq);
  }
  EXPECT_EQ((*chain)->items[0].response_id, "resp_1");
  EXPECT_FALSE((*chain)->items[0].output);
  EXPECT_TRUE((*chain)->items[1].output);

  EXPECT_THAT(ChainIds("resp_9"), ElementsAre("<none>"));
}

TEST_P(ConversationStoreContract, AResponseWithoutItemsStillHasAChain) {
  StoreResponse("", "resp_1", "", "", 0, 0);
  bool has_more = true;
  EXPECT_TRUE(ChainIds("resp_1", 0, &has_more).empty());
  EXPECT_FALSE(has_more);
}

TEST_P(ConversationStoreContract, BranchesSeeOnlyTheirOwnAncestry) {
  StoreResponse("", "resp_1", "");
  StoreResponse("", "resp_2a", "resp_1");
  StoreResponse("", "resp_2b", "resp_1");
  StoreResponse("", "resp_3a", "resp_2a");

  EXPECT_THAT(ChainIds("resp_3a"), ElementsAre("resp_1/in0", "resp_1/out0", "resp_2a/in0",
                                               "resp_2a/out0", "resp_3a/in0", "resp_3a/out0"));
  EXPECT_THAT(ChainIds("resp_2b"),
              ElementsAre("resp_1/in0", "resp_1/out0", "resp_2b/in0", "resp_2b/out0"));
}

TEST_P(ConversationStoreContract, ItemIdsMayRepeatAcrossResponses) {
  // A client may send the same item in several requests: each response keeps its own copy.
  Turn first = ResponseTurn("", "resp_1", "", "", 0, 1);
  auto record = std::make_shared<ResponseRecord>(*first.response);
  record->input = {Item("msg_same")};
  first.response = record;
  ASSERT_TRUE(Append(first).ok());
  Turn second = ResponseTurn("", "resp_2", "resp_1", "", 0, 1);
  record = std::make_shared<ResponseRecord>(*second.response);
  record->input = {Item("msg_same")};
  second.response = record;
  ASSERT_TRUE(Append(second).ok());

  EXPECT_THAT(ChainIds("resp_2"),
              ElementsAre("msg_same", "resp_1/out0", "msg_same", "resp_2/out0"));
  EXPECT_THAT(Ids(ResponseItems("resp_2", false, "", 10, ItemOrder::kAscending).items),
              ElementsAre("msg_same"));
}

TEST_P(ConversationStoreContract, DeleteResponseEndsTheChainsThroughIt) {
  StoreResponse("", "resp_1", "");
  StoreResponse("", "resp_2", "resp_1");
  StoreResponse("", "resp_3", "resp_2");

  auto deleted = RunSync(store_->DeleteResponse("", "resp_2"));
  ASSERT_TRUE(deleted.ok()) << Describe(deleted);
  EXPECT_TRUE(*deleted);

  auto response = RunSync(store_->GetResponse("", "resp_2"));
  ASSERT_TRUE(response.ok()) << Describe(response);
  EXPECT_FALSE(response->has_value());
  auto items =
      RunSync(store_->ListResponseItems("", "resp_2", false, "", 10, ItemOrder::kAscending));
  ASSERT_TRUE(items.ok()) << Describe(items);
  EXPECT_FALSE(items->has_value());
  EXPECT_THAT(ChainIds("resp_2"), ElementsAre("<none>"));
  // The chain of a later response stops where the deleted one was.
  EXPECT_THAT(ChainIds("resp_3"), ElementsAre("resp_3/in0", "resp_3/out0"));
  EXPECT_THAT(ChainIds("resp_1"), ElementsAre("resp_1/in0", "resp_1/out0"));

  auto again = RunSync(store_->DeleteResponse("", "resp_2"));
  ASSERT_TRUE(again.ok()) << Describe(again);
  EXPECT_FALSE(*again);
  auto unknown = RunSync(store_->DeleteResponse("", "resp_9"));
  ASSERT_TRUE(unknown.ok()) << Describe(unknown);
  EXPECT_FALSE(*unknown);
}

TEST_P(ConversationStoreContract, OwnersSeeOnlyTheirOwnState) {
  StoreResponse("key_a", "resp_a", "");
  CreateConversation("conv_a", {Item("item_a")}, "key_a");
  // Another owner's response cannot be continued into: its chain ends at its own response.
  StoreResponse("key_b", "resp_b", "resp_a");
  EXPECT_THAT(ChainIds("resp_b", 0, nullptr, "key_b"), ElementsAre("resp_b/in0", "resp_b/out0"));

  for (const std::string owner : {"key_b", ""}) {
    auto response = RunSync(store_->GetResponse(owner, "resp_a"));
    ASSERT_TRUE(response.ok()) << Describe(response);
    EXPECT_FALSE(response->has_value()) << owner;
    EXPECT_THAT(ChainIds("resp_a", 0, nullptr, owner), ElementsAre("<none>")) << owner;
    auto items =
        RunSync(store_->ListResponseItems(owner, "resp_a", true, "", 10, ItemOrder::kAscending));
    ASSERT_TRUE(items.ok()) << Describe(items);
    EXPECT_FALSE(items->has_value()) << owner;
    auto deleted = RunSync(store_->DeleteResponse(owner, "resp_a"));
    ASSERT_TRUE(deleted.ok()) << Describe(deleted);
    EXPECT_FALSE(*deleted) << owner;

    auto conversation = RunSync(store_->GetConversation(owner, "conv_a"));
    ASSERT_TRUE(conversation.ok()) << Describe(conversation);
    EXPECT_FALSE(conversation->has_value()) << owner;
    auto updated = RunSync(store_->UpdateConversation(owner, "conv_a", R"({"x":"y"})"));
    ASSERT_TRUE(updated.ok()) << Describe(updated);
    EXPECT_FALSE(updated->has_value()) << owner;
    auto appended = RunSync(store_->AppendConversationItems(owner, "conv_a", {Item("intruder")}));
    ASSERT_TRUE(appended.ok()) << Describe(appended);
    EXPECT_FALSE(appended->has_value()) << owner;
    EXPECT_THAT(ConversationIds("conv_a", 0, nullptr, owner), ElementsAre("<none>")) << owner;
    auto page =
        RunSync(store_->ListConversationItems(owner, "conv_a", "", 10, ItemOrder::kAscending));
    ASSERT_TRUE(page.ok()) << Describe(page);
    EXPECT_FALSE(page->has_value()) << owner;
    auto item = RunSync(store_->GetConversationItem(owner, "conv_a", "item_a"));
    ASSERT_TRUE(item.ok()) << Describe(item);
    EXPECT_FALSE(item->has_value()) << owner;
    auto item_deleted = RunSync(store_->DeleteConversationItem(owner, "conv_a", "item_a"));
    ASSERT_TRUE(item_deleted.ok()) << Describe(item_deleted);
    EXPECT_FALSE(*item_deleted) << owner;
    auto conversation_deleted = RunSync(store_->DeleteConversation(owner, "conv_a"));
    ASSERT_TRUE(conversation_deleted.ok()) << Describe(conversation_deleted);
    EXPECT_FALSE(*conversation_deleted) << owner;
  }

  // The owner's state is untouched.
  auto response = RunSync(store_->GetResponse("key_a", "resp_a"));
  ASSERT_TRUE(response.ok()) << Describe(response);
  EXPECT_TRUE(response->has_value());
  EXPECT_THAT(ChainIds("resp_a", 0, nullptr, "key_a"), ElementsAre("resp_a/in0", "resp_a/out0"));
  auto conversation = RunSync(store_->GetConversation("key_a", "conv_a"));
  ASSERT_TRUE(conversation.ok()) << Describe(conversation);
  ASSERT_TRUE(conversation->has_value());
  EXPECT_EQ((*conversation)->metadata_json, R"({"topic":"test"})");
  EXPECT_THAT(ConversationIds("conv_a", 0, nullptr, "key_a"), ElementsAre("item_a"));
}

TEST_P(ConversationStoreContract, ConversationsAreCreatedReadUpdatedAndDeleted) {
  CreateConversation("conv_1", {Item("msg_a"), Item("msg_b")});

  auto conversation = RunSync(store_->GetConversation("", "conv_1"));
  ASSERT_TRUE(conversation.ok()) << Describe(conversation);
  ASSERT_TRUE(conversation->has_value());
  EXPECT_EQ((*conversation)->id, "conv_1");
  EXPECT_EQ((*conversation)->created_at, 1700000100);
  EXPECT_EQ((*conversation)->metadata_json, R"({"topic":"test"})");
  EXPECT_THAT(ConversationIds("conv_1"), ElementsAre("msg_a", "msg_b"));

  auto updated = RunSync(store_->UpdateConversation("", "conv_1", R"({"topic":"changed"})"));
  ASSERT_TRUE(updated.ok()) << Describe(updated);
  ASSERT_TRUE(updated->has_value());
  EXPECT_EQ((*updated)->id, "conv_1");
  EXPECT_EQ((*updated)->created_at, 1700000100);
  EXPECT_EQ((*updated)->metadata_json, R"({"topic":"changed"})");
  conversation = RunSync(store_->GetConversation("", "conv_1"));
  ASSERT_TRUE(conversation.ok()) << Describe(conversation);
  ASSERT_TRUE(conversation->has_value());
  EXPECT_EQ((*conversation)->metadata_json, R"({"topic":"changed"})");

  auto deleted = RunSync(store_->DeleteConversation("", "conv_1"));
  ASSERT_TRUE(deleted.ok()) << Describe(deleted);
  EXPECT_TRUE(*deleted);
  conversation = RunSync(store_->GetConversation("", "conv_1"));
  ASSERT_TRUE(conversation.ok()) << Describe(conversation);
  EXPECT_FALSE(conversation->has_value());
  auto again = RunSync(store_->DeleteConversation("", "conv_1"));
  ASSERT_TRUE(again.ok()) << Describe(again);
  EXPECT_FALSE(*again);
  updated = RunSync(store_->UpdateConversation("", "conv_1", "{}"));
  ASSERT_TRUE(updated.ok()) << Describe(updated);
  EXPECT_FALSE(updated->has_value());
}

TEST_P(ConversationStoreContract, AppendedItemsComeBackAsStoredInOrder) {
  CreateConversation("conv_1", {Item("msg_a")});
  const std::vector<StoredItem> appended = AppendItems("conv_1", {Item("msg_b"), Item("msg_c")});
  ASSERT_EQ(appended.size(), 2u);
  EXPECT_EQ(appended[0].id, "msg_b");
  EXPECT_EQ(appended[0].json, Item("msg_b").json);
  EXPECT_EQ(appended[0].response_id, "");
  EXPECT_FALSE(appended[0].output);
  EXPECT_LT(appended[0].seq, appended[1].seq);
  const std::vector<StoredItem> more = AppendItems("conv_1", {Item("msg_d")});
  ASSERT_EQ(more.size(), 1u);
  EXPECT_GT(more[0].seq, appended[1].seq);

  auto window = RunSync(store_->ConversationItems("", "conv_1", 0));
  ASSERT_TRUE(window.ok()) << Describe(window);
  ASSERT_TRUE(window->has_value());
  EXPECT_THAT(Ids((*window)->items), ElementsAre("msg_a", "msg_b", "msg_c", "msg_d"));
  EXPECT_EQ((*window)->items[1].seq, appended[0].seq);
  EXPECT_EQ((*window)->items[3].seq, more[0].seq);

  // A conversation that does not exist takes nothing: created later, it starts empty.
  auto missing = RunSync(store_->AppendConversationItems("", "conv_2", {Item("msg_x")}));
  ASSERT_TRUE(missing.ok()) << Describe(missing);
  EXPECT_FALSE(missing->has_value());
  CreateConversation("conv_2");
  EXPECT_TRUE(ConversationIds("conv_2").empty());
}

TEST_P(ConversationStoreContract, AResponseInAConversationAppendsItsItemsToIt) {
  CreateConversation("conv_1", {Item("msg_a")});
  AppendItems("conv_1", {Item("msg_b")});
  StoreResponse("", "resp_1", "", "conv_1", 2, 1);

  EXPECT_THAT(ConversationIds("conv_1"),
              ElementsAre("msg_a", "msg_b", "resp_1/in0", "resp_1/in1", "resp_1/out0"));
  auto window = RunSync(store_->ConversationItems("", "conv_1", 0));
  ASSERT_TRUE(window.ok() && window->has_value());
  const std::vector<StoredItem>& items = (*window)->items;
  ASSERT_EQ(items.size(), 5u);
  EXPECT_EQ(items[0].response_id, "");
  EXPECT_EQ(items[2].response_id, "resp_1");
  EXPECT_FALSE(items[2].output);
  EXPECT_TRUE(items[4].output);

  auto response = RunSync(store_->GetResponse("", "resp_1"));
  ASSERT_TRUE(response.ok()) << Describe(response);
  ASSERT_TRUE(response->has_value());
  EXPECT_EQ((*response)->conversation_id, "conv_1");
  // The response's own listings hold its items as usual.
  EXPECT_THAT(Ids(ResponseItems("resp_1", false, "", 10, ItemOrder::kAscending).items),
              ElementsAre("resp_1/in0", "resp_1/in1"));
  EXPECT_THAT(Ids(ResponseItems("resp_1", true, "", 10, ItemOrder::kAscending).items),
              ElementsAre("resp_1/out0"));

  // Deleting the response leaves its items in the conversation.
  auto deleted = RunSync(store_->DeleteResponse("", "resp_1"));
  ASSERT_TRUE(deleted.ok()) << Describe(deleted);
  EXPECT_TRUE(*deleted);
  EXPECT_THAT(ConversationIds("conv_1"),
              ElementsAre("msg_a", "msg_b", "resp_1/in0", "resp_1/in1", "resp_1/out0"));
}

TEST_P(ConversationStoreContract, ConversationItemsArePagedInEitherOrder) {
  CreateConversation("conv_1", {Item("a"), Item("b"), Item("c"), Item("d"), Item("e")});

  ItemPage page = ConversationPage("conv_1", "", 2, ItemOrder::kAscending);
  EXPECT_THAT(Ids(page.items), ElementsAre("a", "b"));
  EXPECT_TRUE(page.has_more);
  page = ConversationPage("conv_1", "b", 2, ItemOrder::kAscending);
  EXPECT_THAT(Ids(page.items), ElementsAre("c", "d"));
  EXPECT_TRUE(page.has_more);
  page = ConversationPage("conv_1", "d", 2, ItemOrder::kAscending);
  EXPECT_THAT(Ids(page.items), ElementsAre("e"));
  EXPECT_FALSE(page.has_more);

  page = ConversationPage("conv_1", "", 3, ItemOrder::kDescending);
  EXPECT_THAT(Ids(page.items), ElementsAre("e", "d", "c"));
  EXPECT_TRUE(page.has_more);
  page = ConversationPage("conv_1", "c", 3, ItemOrder::kDescending);
  EXPECT_THAT(Ids(page.items), ElementsAre("b", "a"));
  EXPECT_FALSE(page.has_more);

  page = ConversationPage("conv_1", "", 0, ItemOrder::kDescending);
  EXPECT_TRUE(page.items.empty());
  EXPECT_TRUE(page.has_more);

  auto unknown =
      RunSync(store_->ListConversationItems("", "conv_1", "z", 10, ItemOrder::kAscending));
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().kind, ErrorKind::kNotFound);
  auto missing =
      RunSync(store_->ListConversationItems("", "conv_2", "", 10, ItemOrder::kAscending));
  ASSERT_TRUE(missing.ok()) << Describe(missing);
  EXPECT_FALSE(missing->has_value());

  CreateConversation("conv_empty");
  page = ConversationPage("conv_empty", "", 10, ItemOrder::kAscending);
  EXPECT_TRUE(page.items.empty());
  EXPECT_FALSE(page.has_more);
}

// An id that occurs twice: `after` means after its first occurrence in the listing's order.
TEST_P(ConversationStoreContract, AfterARepeatedItemIdMeansAfterItsFirstOccurrenceInThatOrder) {
  CreateConversation("conv_1", {Item("a"), Item("dup"), Item("b"), Item("dup"), Item("c")});
  EXPECT_THAT(Ids(ConversationPage("conv_1", "dup", 10, ItemOrder::kAscending).items),
              ElementsAre("b", "dup", "c"));
  EXPECT_THAT(Ids(ConversationPage("conv_1", "dup", 10, ItemOrder::kDescending).items),
              ElementsAre("b", "dup", "a"));
}

TEST_P(ConversationStoreContract, ConversationItemsWindowKeepsTheNewestOldestFirst) {
  CreateConversation("conv_1", {Item("a"), Item("b"), Item("c"), Item("d"), Item("e")});
  bool has_more = false;
  EXPECT_THAT(ConversationIds("conv_1", 2, &has_more), ElementsAre("d", "e"));
  EXPECT_TRUE(has_more);
  EXPECT_THAT(ConversationIds("conv_1", 5, &has_more), ElementsAre("a", "b", "c", "d", "e"));
  EXPECT_FALSE(has_more);
  EXPECT_THAT(ConversationIds("conv_1", 0, &has_more), ElementsAre("a", "b", "c", "d", "e"));
  EXPECT_FALSE(has_more);
  EXPECT_THAT(ConversationIds("conv_2"), ElementsAre("<none>"));
}

TEST_P(ConversationStoreContract, ConversationItemsAreReadAndDeletedOneByOne) {
  CreateConversation("conv_1", {Item("a"), Item("b"), Item("c")});

  auto item = RunSync(store_->GetConversationItem("", "conv_1", "b"));
  ASSERT_TRUE(item.ok()) << Describe(item);
  ASSERT_TRUE(item->has_value());
  EXPECT_EQ((*item)->id, "b");
  EXPECT_EQ((*item)->json, Item("b").json);
  EXPECT_GT((*item)->seq, 0);
  auto unknown = RunSync(store_->GetConversationItem("", "conv_1", "z"));
  ASSERT_TRUE(unknown.ok()) << Describe(unknown);
  EXPECT_FALSE(unknown->has_value());
  auto elsewhere = RunSync(store_->GetConversationItem("", "conv_2", "b"));
  ASSERT_TRUE(elsewhere.ok()) << Describe(elsewhere);
  EXPECT_FALSE(elsewhere->has_value());

  auto deleted = RunSync(store_->DeleteConversationItem("", "conv_1", "b"));
  ASSERT_TRUE(deleted.ok()) << Describe(deleted);
  EXPECT_TRUE(*deleted);
  EXPECT_THAT(ConversationIds("conv_1"), ElementsAre("a", "c"));
  item = RunSync(store_->GetConversationItem("", "conv_1", "b"));
  ASSERT_TRUE(item.ok()) << Describe(item);
  EXPECT_FALSE(item->has_value());
  auto again = RunSync(store_->DeleteConversationItem("", "conv_1", "b"));
  ASSERT_TRUE(again.ok()) << Describe(again);
  EXPECT_FALSE(*again);
  auto missing = RunSync(store_->DeleteConversationItem("", "conv_2", "a"));
  ASSERT_TRUE(missing.ok()) << Describe(missing);
  EXPECT_FALSE(*missing);
}

TEST_P(ConversationStoreContract, DeleteConversationRemovesItsItemsButNotItsResponses) {
  CreateConversation("conv_1", {Item("a")});
  StoreResponse("", "resp_1", "", "conv_1");
  CreateConversation("conv_2", {Item("other")});

  auto deleted = RunSync(store_->DeleteConversation("", "conv_1"));
  ASSERT_TRUE(deleted.ok()) << Describe(deleted);
  EXPECT_TRUE(*deleted);
  EXPECT_THAT(ConversationIds("conv_1"), ElementsAre("<none>"));
  auto item = RunSync(store_->GetConversationItem("", "conv_1", "a"));
  ASSERT_TRUE(item.ok()) << Describe(item);
  EXPECT_FALSE(item->has_value());
  auto response = RunSync(store_->GetResponse("", "resp_1"));
  ASSERT_TRUE(response.ok()) << Describe(response);
  EXPECT_TRUE(response->has_value());
  EXPECT_THAT(ConversationIds("conv_2"), ElementsAre("other"));

  // A conversation made again under the same id starts empty: the items are gone.
  CreateConversation("conv_1");
  EXPECT_TRUE(ConversationIds("conv_1").empty());
}

TEST_P(ConversationStoreContract, TheStateEpochGrowsWithEveryDeleteThatRemovedSomething) {
  auto epoch = [this] {
    auto read = RunSync(store_->StateEpoch());
    EXPECT_TRUE(read.ok()) << Describe(read);
    return read.ok() ? *read : -1;
  };
  const std::int64_t start = epoch();
  ASSERT_GE(start, 0);
  CreateConversation("conv_1", {Item("a"), Item("b")});
  StoreResponse("", "resp_1", "");
  StoreResponse("", "resp_2", "resp_1", "conv_1");
  EXPECT_EQ(epoch(), start) << "writes that delete nothing leave it";

  // Deletes that find nothing leave it too (any client can send them).
  ASSERT_FALSE(*RunSync(store_->DeleteResponse("", "resp_9")));
  ASSERT_FALSE(*RunSync(store_->DeleteConversationItem("", "conv_1", "zz")));
  ASSERT_FALSE(*RunSync(store_->DeleteConversation("", "conv_9")));
  ASSERT_FALSE(*RunSync(store_->DeleteResponse("key_b", "resp_1")));
  EXPECT_EQ(epoch(), start);

  ASSERT_TRUE(*RunSync(store_->DeleteConversationItem("", "conv_1", "a")));
  const std::int64_t after_item = epoch();
  EXPECT_GT(after_item, start);
  ASSERT_TRUE(*RunSync(store_->DeleteResponse("", "resp_1")));
  const std::int64_t after_response = epoch();
  EXPECT_GT(after_response, after_item);
  ASSERT_TRUE(*RunSync(store_->DeleteConversation("", "conv_1")));
  EXPECT_GT(epoch(), after_response);
}

TEST_P(ConversationStoreContract, StateWritesAreDurableAcrossAReopen) {
  CreateConversation("conv_1", {Item("a")});
  StoreResponse("", "resp_1", "", "conv_1");
  StoreResponse("", "resp_2", "resp_1");
  store_->Close();

  store_ = GetParam().open(dir_.path().string());
  ASSERT_NE(store_, nullptr);
  auto response = RunSync(store_->GetResponse("", "resp_2"));
  ASSERT_TRUE(response.ok()) << Describe(response);
  ASSERT_TRUE(response->has_value());
  EXPECT_EQ((*response)->previous_response_id, "resp_1");
  EXPECT_THAT(ChainIds("resp_2"),
              ElementsAre("resp_1/in0", "resp_1/out0", "resp_2/in0", "resp_2/out0"));
  EXPECT_THAT(ConversationIds("conv_1"), ElementsAre("a", "resp_1/in0", "resp_1/out0"));
  // Sequence numbers keep growing after the reopen.
  const std::vector<StoredItem> appended = AppendItems("conv_1", {Item("b")});
  auto window = RunSync(store_->ConversationItems("", "conv_1", 0));
  ASSERT_TRUE(window.ok() && window->has_value());
  ASSERT_EQ(appended.size(), 1u);
  EXPECT_GT(appended[0].seq, (*window)->items[2].seq);
}

TEST_P(ConversationStoreContract, StateCallsAfterCloseAreUnavailable) {
  store_->Close();
  auto response = RunSync(store_->GetResponse("", "resp_1"));
  ASSERT_FALSE(response.ok());
  EXPECT_EQ(response.error().kind, ErrorKind::kStorage);
  Status created = RunSync(store_->CreateConversation("", Conversation("conv_1"), {}));
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.error().kind, ErrorKind::kStorage);
}

// ---- Implementations ----

StoreFactory SqliteFactory(SqliteSynchronous synchronous, std::size_t max_batch,
                           std::size_t reader_threads) {
  return [=](const std::string& dir) -> std::unique_ptr<ConversationStore> {
    SqliteStoreOptions options;
    options.path = dir + "/instance/chat_history.db";
    options.synchronous = synchronous;
    options.max_batch = max_batch;
    options.reader_threads = reader_threads;
    auto store = SqliteConversationStore::Open(options);
    if (!store.ok()) throw std::runtime_error(store.error().message);
    return std::move(store).value();
  };
}

// Each test gets a fresh database on the binary's shared throwaway server; opening again with the
// same `dir` reopens that database.
StoreFactory PostgresFactory(std::size_t max_batch, std::size_t reader_threads) {
  return [=](const std::string& dir) -> std::unique_ptr<ConversationStore> {
    static std::mutex mutex;
    static std::map<std::string, std::string> urls;  // dir -> database
    std::string url;
    {
      std::lock_guard<std::mutex> lock(mutex);
      auto [it, fresh] = urls.try_emplace(dir);
      if (fresh) it->second = testing::FreshPostgresDatabase();
      url = it->second;
    }
    PostgresStoreOptions options;
    options.url = url;
    options.max_batch = max_batch;
    options.reader_threads = reader_threads;
    auto store = PostgresConversationStore::Open(options);
    if (!store.ok()) throw std::runtime_error(store.error().message);
    return std::move(store).value();
  };
}

INSTANTIATE_TEST_SUITE_P(
    Stores, ConversationStoreContract,
    ::testing::Values(
        ContractParam{"Sqlite", SqliteFactory(SqliteSynchronous::kFull, 256, 2)},
        ContractParam{"SqliteNormalSync", SqliteFactory(SqliteSynchronous::kNormal, 256, 2)},
        // One turn per transaction and one reader: the degenerate configuration still holds.
        ContractParam{"SqliteUnbatched", SqliteFactory(SqliteSynchronous::kNormal, 1, 1)},
        ContractParam{"Postgres", PostgresFactory(256, 2)},
        ContractParam{"PostgresUnbatched", PostgresFactory(1, 1)}),
    [](const ::testing::TestParamInfo<ContractParam>& param) { return param.param.name; });

}  // namespace
}  // namespace staple::store
