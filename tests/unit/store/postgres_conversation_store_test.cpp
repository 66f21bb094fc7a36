// Behaviour specific to PostgresConversationStore: the schema as psql sees it, migrations run by
// several replicas, replicas sharing one database, server outages and secrets in errors. The
// behaviour shared with other stores is in store_contract_test.cpp.

#include "store/postgres/postgres_conversation_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "postgres_test_util.h"
#include "store_test_util.h"

namespace staple::store {
namespace {

using testing::Describe;
using testing::FreshPostgresDatabase;
using ::testing::HasSubstr;
using testing::MakeTurn;
using ::testing::Not;
using testing::RunSync;
using testing::SharedPostgres;
using PgServer = ::staple::testing::PostgresServer;

std::unique_ptr<PostgresConversationStore> OpenStore(PostgresStoreOptions options) {
  auto store = PostgresConversationStore::Open(std::move(options));
  EXPECT_TRUE(store.ok()) << Describe(store);
  if (!store.ok()) return nullptr;
  return std::move(store).value();
}

std::unique_ptr<PostgresConversationStore> OpenStore(const std::string& url) {
  PostgresStoreOptions options;
  options.url = url;
  return OpenStore(std::move(options));
}

// The database name at the end of a test URL.
std::string DatabaseOf(const std::string& url) { return url.substr(url.rfind('/') + 1); }

std::vector<std::string> Contents(const std::vector<StoredMessage>& messages) {
  std::vector<std::string> contents;
  for (const StoredMessage& message : messages) contents.push_back(message.content);
  return contents;
}

std::vector<std::string> RecentContents(ConversationStore& store, const std::string& user_id) {
  auto messages = RunSync(store.RecentMessages("", user_id, 0));
  EXPECT_TRUE(messages.ok()) << Describe(messages);
  return messages.ok() ? Contents(*messages) : std::vector<std::string>{};
}

TEST(PostgresConversationStore, SeedViewAndSchemaVersionAnswerInPsql) {
  const std::string url = FreshPostgresDatabase();
  auto store = OpenStore(url);
  ASSERT_NE(store, nullptr);
  Turn turn = MakeTurn("alice", 1);
  turn.prompt_time =
      std::chrono::system_clock::time_point(std::chrono::microseconds(1709296496789012));
  ASSERT_TRUE(RunSync(store->AppendTurn(turn)).ok());

  const std::string db = DatabaseOf(url);
  EXPECT_EQ(SharedPostgres().Psql(db, "SELECT version FROM schema_version"), "2\n");
  EXPECT_EQ(SharedPostgres().Psql(db, "SELECT * FROM message ORDER BY id LIMIT 1"),
            "1|alice|2024-03-01 12:34:56.789012|user|prompt 1\n");
  EXPECT_EQ(SharedPostgres().Psql(db,
                                  "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) "
                                  "FROM information_schema.columns WHERE table_name = 'message'"),
            "id,user_id,timestamp,role,content\n");
  EXPECT_EQ(SharedPostgres().Psql(db,
                                  "SELECT count(*) FROM pg_indexes WHERE indexname = "
                                  "'messages_owner_user_id_id'"),
            "1\n");
  store->Close();
}

TEST(PostgresConversationStore, ReopeningKeepsDataAndTheSchema) {
  const std::string url = FreshPostgresDatabase();
  {
    auto store = OpenStore(url);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", 1))).ok());
  }
  // Reopened through the short scheme, which names the same database.
  const std::string short_url = "postgres://" + url.substr(url.find("://") + 3);
  auto store = OpenStore(short_url);
  ASSERT_NE(store, nullptr);
  EXPECT_THAT(RecentContents(*store, "alice"), ::testing::ElementsAre("prompt 1", "answer 1"));
  EXPECT_EQ(SharedPostgres().Psql(DatabaseOf(url), "SELECT count(*) FROM schema_version"), "1\n");
}

TEST(PostgresConversationStore, ReplicasStartingTogetherMigrateOnce) {
  const std::string url = FreshPostgresDatabase();
  constexpr int kReplicas = 6;
  std::vector<std::unique_ptr<PostgresConversationStore>> stores(kReplicas);
  std::vector<std::thread> threads;
  for (int i = 0; i < kReplicas; ++i) {
    threads.emplace_back([&, i] { stores[static_cast<std::size_t>(i)] = OpenStore(url); });
  }
  for (std::thread& thread : threads) thread.join();
  for (const auto& store : stores) ASSERT_NE(store, nullptr);
  EXPECT_EQ(
      SharedPostgres().Psql(DatabaseOf(url), "SELECT count(*), max(version) FROM schema_version"),
      "1|2\n");
}

TEST(PostgresConversationStore, TwoReplicasSeeEachOthersTurns) {
  const std::string url = FreshPostgresDatabase();
  auto a = OpenStore(url);
  auto b = OpenStore(url);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  for (int n = 0; n < 4; ++n) {
    ConversationStore& writer = n % 2 == 0 ? static_cast<ConversationStore&>(*a) : *b;
    Status appended = RunSync(writer.AppendTurn(MakeTurn("alice", n)));
    ASSERT_TRUE(appended.ok()) << Describe(appended);
  }
  const std::vector<std::string> expected = {"prompt 0", "answer 0", "prompt 1", "answer 1",
                                             "prompt 2", "answer 2", "prompt 3", "answer 3"};
  EXPECT_EQ(RecentContents(*a, "alice"), expected);
  EXPECT_EQ(RecentContents(*b, "alice"), expected);

  auto deleted = RunSync(b->DeleteMessages("", "alice"));
  ASSERT_TRUE(deleted.ok()) << Describe(deleted);
  EXPECT_EQ(*deleted, 8);
  EXPECT_TRUE(RecentContents(*a, "alice").empty());
}

TEST(PostgresConversationStore, RefusesANewerSchema) {
  const std::string url = FreshPostgresDatabase();
  ASSERT_NE(OpenStore(url), nullptr);
  SharedPostgres().Psql(DatabaseOf(url), "UPDATE schema_version SET version = 99");
  PostgresStoreOptions options;
  options.url = url;
  auto store = PostgresConversationStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(store.error().message, HasSubstr("schema version 99"));
}

TEST(PostgresConversationStore, ErrorsNeverShowThePassword) {
  const std::string good = FreshPostgresDatabase();
  const std::string secret = "wrong-SECRET-pw";
  std::string wrong = good;
  wrong.replace(wrong.find(PgServer::password()), PgServer::password().size(), secret);

  PostgresStoreOptions options;
  options.url = wrong;
  auto store = PostgresConversationStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(store.error().message, HasSubstr("127.0.0.1"));
  EXPECT_THAT(store.error().message, Not(HasSubstr(secret)));

  options.url = "postgresql://staple:" + secret + "@127.0.0.1:notaport/db";
  store = PostgresConversationStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.error().message, Not(HasSubstr(secret)));

  options.url = "postgresql://staple:" + secret +
                "@127.0.0.1:" + std::to_string(::staple::testing::FreePort()) + "/db";
  const auto started = std::chrono::steady_clock::now();
  store = PostgresConversationStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(store.error().message, Not(HasSubstr(secret)));
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(2));
}

TEST(PostgresConversationStore, ServerOutageFailsFastThenRecovers) {
  PgServer server;  // its own server: this test stops it
  const std::string url = FreshPostgresDatabase(server);
  PostgresStoreOptions options;
  options.url = url;
  options.operation_timeout = std::chrono::milliseconds(1500);
  options.max_reconnect_backoff = std::chrono::milliseconds(200);
  auto store = OpenStore(options);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", 0))).ok());
  ASSERT_TRUE(RunSync(store->Ping()).ok());

  server.Stop();
  const auto limit = options.operation_timeout + std::chrono::milliseconds(500);
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto started = std::chrono::steady_clock::now();
    Status appended = RunSync(store->AppendTurn(MakeTurn("alice", 1)));
    ASSERT_FALSE(appended.ok());
    EXPECT_EQ(appended.error().kind, ErrorKind::kStorage);
    EXPECT_THAT(appended.error().message, Not(HasSubstr(PgServer::password())));
    EXPECT_LT(std::chrono::steady_clock::now() - started, limit);

    started = std::chrono::steady_clock::now();
    auto recent = RunSync(store->RecentMessages("", "alice", 0));
    ASSERT_FALSE(recent.ok());
    EXPECT_EQ(recent.error().kind, ErrorKind::kStorage);
    EXPECT_LT(std::chrono::steady_clock::now() - started, limit);

    started = std::chrono::steady_clock::now();
    Status ping = RunSync(store->Ping());
    ASSERT_FALSE(ping.ok());
    EXPECT_EQ(ping.error().kind, ErrorKind::kStorage);
    EXPECT_LT(std::chrono::steady_clock::now() - started, limit);
  }
  EXPECT_EQ(store->PendingWrites(), 0u);

  server.Start();
  // The next calls after the backoff reconnect; give the server a few seconds to accept.
  Status appended = MakeError(ErrorKind::kStorage, "not tried");
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (!appended.ok() && std::chrono::steady_clock::now() < give_up) {
    appended = RunSync(store->AppendTurn(MakeTurn("alice", 2)));
    if (!appended.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(appended.ok()) << Describe(appended);
  Status ping = MakeError(ErrorKind::kStorage, "not tried");
  while (!ping.ok() && std::chrono::steady_clock::now() < give_up) {
    ping = RunSync(store->Ping());
    if (!ping.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(ping.ok()) << Describe(ping);
  std::vector<std::string> contents;
  while (std::chrono::steady_clock::now() < give_up) {
    auto messages = RunSync(store->RecentMessages("", "alice", 0));
    if (messages.ok()) {
      contents = Contents(*messages);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_THAT(contents, ::testing::ElementsAre("prompt 0", "answer 0", "prompt 2", "answer 2"));
  store->Close();
}

TEST(PostgresConversationStore, FailingWritesAreReportedAndClearOnTheirOwn) {
  PgServer& server = SharedPostgres();
  static std::atomic<int> counter{0};
  const std::string name =
      "staple_health_" + std::to_string(::getpid()) + "_" + std::to_string(++counter);
  server.CreateDatabase(name);
  PostgresStoreOptions options;
  options.url = server.Url(name);
  options.write_probe_interval = std::chrono::milliseconds(1);
  options.first_write_retry = std::chrono::milliseconds(20);
  options.max_write_retry = std::chrono::milliseconds(100);
  options.max_reconnect_backoff = std::chrono::milliseconds(100);
  auto store = OpenStore(options);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(RunSync(store->Ping()).ok());

  // New sessions of this database may only read; the store's sessions are made to reconnect.
  // (Changed from another database: a session of this one could not undo it.)
  server.Psql("postgres", "ALTER DATABASE " + name + " SET default_transaction_read_only = on");
  server.Psql(name, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" +
                        name + "' AND pid <> pg_backend_pid()");
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  Status appended;
  do {
    appended = RunSync(store->AppendTurn(MakeTurn("alice", 1)));
    if (!appended.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (std::chrono::steady_clock::now() < give_up);
  ASSERT_FALSE(appended.ok()) << "a write succeeded on a read-only database";
  Status health = store->WriteHealth();
  ASSERT_FALSE(health.ok());
  EXPECT_THAT(health.error().message, HasSubstr("write failing: "));
  Status ping = RunSync(store->Ping());
  ASSERT_FALSE(ping.ok()) << "ready while writes fail";
  EXPECT_THAT(ping.error().message, HasSubstr("write failing: "));

  // Writable again; nobody writes, yet the store's own retry reconnects and clears the state.
  server.Psql("postgres", "ALTER DATABASE " + name + " SET default_transaction_read_only = off");
  while (!store->WriteHealth().ok() && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(store->WriteHealth().ok()) << Describe(store->WriteHealth());
  EXPECT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", 2))).ok());
  store->Close();
}

}  // namespace
}  // namespace staple::store
