// SqliteConversationStore when its writes fail: a full disk, a file it may only read. The store
// must say so (WriteHealth, Ping for /readyz), re-open its connection and recover on its own once
// the cause is gone, and refuse to start on a file it cannot write.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "faulty_file_system.h"
#include "store/sqlite/sqlite_conversation_store.h"
#include "store_test_util.h"

namespace staple::store {
namespace {

using testing::Describe;
using testing::FaultyFileSystem;
using ::testing::HasSubstr;
using testing::MakeTurn;
using testing::RunSync;
using testing::TempDir;

// Polls `condition` until it holds or a generous time passed (the store's retries run on its own
// thread; nothing here waits for a fixed time).
bool Eventually(const std::function<bool()>& condition) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!condition()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

class SqliteWriteHealthTest : public ::testing::Test {
 protected:
  SqliteStoreOptions Options() const {
    SqliteStoreOptions options;
    options.path = path_;
    // Every readiness check probes; retries come quickly.
    options.write_probe_interval = std::chrono::milliseconds(1);
    options.first_write_retry = std::chrono::milliseconds(5);
    options.max_write_retry = std::chrono::milliseconds(20);
    return options;
  }

  std::unique_ptr<SqliteConversationStore> OpenStore(SqliteStoreOptions options) {
    auto store = SqliteConversationStore::Open(std::move(options));
    EXPECT_TRUE(store.ok()) << Describe(store);
    return store.ok() ? std::move(store).value() : nullptr;
  }

  // Declared first: destroyed after every store of the test.
  FaultyFileSystem files_;
  TempDir dir_;
  const std::string path_ = dir_.File("instance/chat_history.db");
};

TEST_F(SqliteWriteHealthTest, AnIdleStoreOnAFullDiskIsNotReadyAndRecoversOnItsOwn) {
  auto store = OpenStore(Options());
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", 1))).ok());
  Status before = RunSync(store->Ping());
  EXPECT_TRUE(before.ok()) << Describe(before);

  files_.full = true;
  // Nobody writes: only readiness's probe can find out (once the last outcome is older than the
  // probe interval, a millisecond here).
  Status full;
  ASSERT_TRUE(Eventually([&] {
    full = RunSync(store->Ping());
    return !full.ok();
  })) << "ready while no write can succeed";
  EXPECT_EQ(full.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(full.error().message, HasSubstr("write failing: "));
  EXPECT_THAT(full.error().message, HasSubstr("full"));
  EXPECT_FALSE(store->WriteHealth().ok());
  // Reads still work.
  auto read = RunSync(store->RecentMessages("", "alice", 0));
  ASSERT_TRUE(read.ok()) << Describe(read);
  EXPECT_EQ(read->size(), 2u);

  files_.full = false;
  EXPECT_TRUE(Eventually([&] { return store->WriteHealth().ok(); }))
      << "the store did not recover by itself: " << Describe(store->WriteHealth());
  Status after = RunSync(store->Ping());
  EXPECT_TRUE(after.ok()) << Describe(after);
}

TEST_F(SqliteWriteHealthTest, AFailedCommitMarksWritesFailingUntilAWriteSucceedsAgain) {
  auto store = OpenStore(Options());
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(store->WriteHealth().ok());

  files_.full = true;
  Status failed = RunSync(store->AppendTurn(MakeTurn("alice", 1)));
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.error().kind, ErrorKind::kStorage);
  // Known at once, without a probe: the caller of the next turn can be refused early.
  Status health = store->WriteHealth();
  ASSERT_FALSE(health.ok());
  EXPECT_EQ(health.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(health.error().message, HasSubstr("write failing: "));
  EXPECT_THAT(health.error().message, HasSubstr("full"));

  files_.full = false;
  // No turn is attempted meanwhile: the store's own retry must clear the state.
  EXPECT_TRUE(Eventually([&] { return store->WriteHealth().ok(); }))
      << Describe(store->WriteHealth());
  Status stored = RunSync(store->AppendTurn(MakeTurn("alice", 2)));
  ASSERT_TRUE(stored.ok()) << Describe(stored);
  auto messages = RunSync(store->RecentMessages("", "alice", 0));
  ASSERT_TRUE(messages.ok());
  ASSERT_EQ(messages->size(), 2u);
  EXPECT_EQ((*messages)[0]->content, "prompt 2");
}

TEST_F(SqliteWriteHealthTest, TheWriterReopensItsConnectionAndPicksUpRestoredPermissions) {
  auto store = OpenStore(Options());
  ASSERT_NE(store, nullptr);
  const int writable_at_start = files_.writable_opens();

  files_.full = true;
  ASSERT_FALSE(RunSync(store->AppendTurn(MakeTurn("alice", 1))).ok());
  // The disk has room again but the file lost its write permission: a fresh connection is
  // read-only, which the store must not take for a working one.
  files_.deny_write = true;
  files_.full = false;
  const int opens = files_.opens();
  ASSERT_TRUE(Eventually([&] { return files_.opens() >= opens + 2; }))
      << "the writer does not re-open its connection";
  Status health = store->WriteHealth();
  ASSERT_FALSE(health.ok()) << "a read-only connection was taken for a writable one";
  EXPECT_THAT(health.error().message, HasSubstr("read-only"));

  files_.deny_write = false;
  EXPECT_TRUE(Eventually([&] { return store->WriteHealth().ok(); }))
      << Describe(store->WriteHealth());
  EXPECT_GT(files_.writable_opens(), writable_at_start);
  Status stored = RunSync(store->AppendTurn(MakeTurn("alice", 2)));
  ASSERT_TRUE(stored.ok()) << Describe(stored);
}

// After a re-open every write goes through the fresh connection: turns, retention steps and the
// Responses state alike (a statement left on the old connection would run outside the batch's
// transaction and wait for its lock).
TEST_F(SqliteWriteHealthTest, EveryKindOfWriteWorksAfterTheConnectionWasReopened) {
  auto store = OpenStore(Options());
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", 1))).ok());

  files_.full = true;
  ASSERT_FALSE(RunSync(store->AppendTurn(MakeTurn("alice", 2))).ok());
  const int opens = files_.opens();
  files_.full = false;
  ASSERT_TRUE(Eventually([&] { return store->WriteHealth().ok(); }))
      << Describe(store->WriteHealth());
  ASSERT_GT(files_.opens(), opens) << "the writer did not re-open its connection";

  auto retained = RunSync(
      store->DeleteOlderThan(std::chrono::system_clock::now() + std::chrono::hours(1), 100));
  ASSERT_TRUE(retained.ok()) << Describe(retained);
  EXPECT_EQ(retained->deleted, 2);

  StoredConversation conversation;
  conversation.id = "conv_1";
  std::vector<ItemToStore> items = {{"msg_1", R"({"id":"msg_1"})"}};
  Status created = RunSync(store->CreateConversation("", conversation, items));
  ASSERT_TRUE(created.ok()) << Describe(created);
  auto appended = RunSync(store->AppendConversationItems("", "conv_1", items));
  ASSERT_TRUE(appended.ok()) << Describe(appended);
  ASSERT_TRUE(appended->has_value());
  auto window = RunSync(store->ConversationItems("", "conv_1", 0));
  ASSERT_TRUE(window.ok()) << Describe(window);
  ASSERT_TRUE(window->has_value());
  EXPECT_EQ((*window)->items.size(), 2u);
}

TEST_F(SqliteWriteHealthTest, ADatabaseThatOpensReadOnlyIsAStartupErrorNamingPathAndCause) {
  // An existing database (as after a crash), which Staple may no longer write.
  {
    auto store = OpenStore(Options());
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", 1))).ok());
  }
  files_.deny_write = true;
  auto opened = SqliteConversationStore::Open(Options());
  ASSERT_FALSE(opened.ok()) << "started on a database it cannot write";
  EXPECT_EQ(opened.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(opened.error().message, HasSubstr(path_));
  EXPECT_THAT(opened.error().message, HasSubstr("read-only"));
  EXPECT_THAT(opened.error().message, HasSubstr("permissions"));
}

TEST_F(SqliteWriteHealthTest, ReadinessReusesARecentOutcomeButNeverHidesAFailedCommit) {
  SqliteStoreOptions options = Options();
  options.write_probe_interval = std::chrono::hours(1);
  auto store = OpenStore(options);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(RunSync(store->Ping()).ok());  // probes once

  files_.full = true;
  // Within the interval the probe's outcome stands: no write per readiness check.
  EXPECT_TRUE(RunSync(store->Ping()).ok());
  // A commit that fails is news at once.
  ASSERT_FALSE(RunSync(store->AppendTurn(MakeTurn("alice", 1))).ok());
  Status after = RunSync(store->Ping());
  ASSERT_FALSE(after.ok());
  EXPECT_THAT(after.error().message, HasSubstr("write failing: "));
}

TEST_F(SqliteWriteHealthTest, RejectsUnusableRetryOptions) {
  SqliteStoreOptions no_interval = Options();
  no_interval.write_probe_interval = std::chrono::milliseconds(0);
  auto refused = SqliteConversationStore::Open(no_interval);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().kind, ErrorKind::kInvalidArgument);

  SqliteStoreOptions backwards = Options();
  backwards.first_write_retry = std::chrono::seconds(10);
  backwards.max_write_retry = std::chrono::seconds(1);
  EXPECT_FALSE(SqliteConversationStore::Open(backwards).ok());
}

}  // namespace
}  // namespace staple::store
