// The behaviour every ConversationStore must have. An implementation joins the suite by adding a
// factory to the INSTANTIATE_TEST_SUITE_P list at the end of this file.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
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

namespace staple::store {
namespace {

using testing::Describe;
using testing::MakeTurn;
using testing::RunSync;
using testing::TempDir;

// Opens a fresh, empty store whose files (if any) live under `dir`.
using StoreFactory = std::function<std::unique_ptr<ConversationStore>(const std::string& dir)>;

struct ContractParam {
  std::string name;
  StoreFactory open;
};

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

  std::vector<StoredMessage> Recent(const std::string& user_id, std::size_t max) {
    auto messages = RunSync(store_->RecentMessages("", user_id, max));
    EXPECT_TRUE(messages.ok()) << Describe(messages);
    return messages.ok() ? std::move(messages).value() : std::vector<StoredMessage>{};
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

  TempDir dir_;
  std::unique_ptr<ConversationStore> store_;
};

std::vector<std::string> Contents(const std::vector<StoredMessage>& messages) {
  std::vector<std::string> contents;
  for (const StoredMessage& message : messages) contents.push_back(message.content);
  return contents;
}

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

  const auto messages = Recent("alice", 0);
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
  const auto messages = Recent("alice", 0);
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

  const auto messages = Recent("ユーザー-é", 0);
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

  const std::vector<StoredMessage> recent = Recent("alice", 0);
  const MessagePage page = List("alice", 0, 10);
  for (const std::vector<StoredMessage>* messages : {&recent, &page.messages}) {
    ASSERT_EQ(messages->size(), 2u);
    EXPECT_EQ((*messages)[0].content, "a" + replacement + "b");
    EXPECT_EQ((*messages)[1].content, "x" + replacement + "y");
    for (const StoredMessage& message : *messages) {
      EXPECT_EQ(message.request_id, "req" + replacement);
      EXPECT_EQ(message.model, "m" + replacement + "(");
    }
  }
}

TEST_P(ConversationStoreContract, InvalidUserIdsAreStoredAndLookedUpReplaced) {
  const std::string raw = std::string("u\0\xfe", 3);
  const std::string stored = "u\xEF\xBF\xBD\xEF\xBF\xBD";
  ASSERT_TRUE(Append(MakeTurn(raw, 1)).ok());

  const auto by_raw = Recent(raw, 0);
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
  const auto messages = Recent("alice", 0);
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[1].content, "");
  EXPECT_EQ(messages[1].request_id, "");
  EXPECT_EQ(messages[1].model, "");
}

TEST_P(ConversationStoreContract, UsersAreIsolated) {
  AppendTurns("alice", 2);
  AppendTurns("bob", 3);

  const auto alice = Recent("alice", 0);
  const auto bob = Recent("bob", 0);
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
    const auto seen = Recent("user-0-0", 0);
    EXPECT_EQ(seen.size() % 2, 0u);
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
        const StoredMessage& prompt = messages[2 * static_cast<std::size_t>(n)];
        const StoredMessage& answer = messages[2 * static_cast<std::size_t>(n) + 1];
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

// Each store gets a fresh database on the binary's shared throwaway server.
StoreFactory PostgresFactory(std::size_t max_batch, std::size_t reader_threads) {
  return [=](const std::string&) -> std::unique_ptr<ConversationStore> {
    PostgresStoreOptions options;
    options.url = testing::FreshPostgresDatabase();
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
