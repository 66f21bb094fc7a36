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

using testing::Contents;
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
  EXPECT_EQ(SharedPostgres().Psql(db, "SELECT version FROM schema_version"), "5\n");
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
      "1|5\n");
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

// ---- The Responses and Conversations state ----

ItemToStore Item(const std::string& id) { return ItemToStore{id, R"({"id":")" + id + R"("})"}; }

// `prefix` then `n` (built in two steps: g++ 12 warns wrongly about "x" + std::to_string(n) here).
std::string Numbered(std::string prefix, int n) {
  prefix += std::to_string(n);
  return prefix;
}

std::vector<std::string> Ids(const std::vector<StoredItem>& items) {
  std::vector<std::string> ids;
  for (const StoredItem& item : items) ids.push_back(item.id);
  return ids;
}

// A stored Responses turn of `owner`: response `id` continuing `previous`, with one input and
// one output item named after it.
Turn ResponseTurn(const std::string& owner, const std::string& id, const std::string& previous,
                  const std::string& conversation = "") {
  auto record = std::make_shared<ResponseRecord>();
  record->response.id = id;
  record->response.previous_response_id = previous;
  record->response.conversation_id = conversation;
  record->response.created_at = 1700000000;
  record->response.json = R"({"id":")" + id + R"(","object":"response"})";
  record->input = {Item(id + "-in")};
  record->output = {Item(id + "-out")};
  Turn turn = MakeTurn("resp-user", 1);
  turn.owner = owner;
  turn.response = std::move(record);
  return turn;
}

TEST(PostgresConversationStore, AChainOfThreeResponsesIsReadInOrder) {
  const std::string url = FreshPostgresDatabase();
  PostgresStoreOptions options;
  options.url = url;
  options.reader_threads = 1;
  auto store = OpenStore(options);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(RunSync(store->AppendTurn(ResponseTurn("k", "r1", ""))).ok());
  ASSERT_TRUE(RunSync(store->AppendTurn(ResponseTurn("k", "r2", "r1"))).ok());
  ASSERT_TRUE(RunSync(store->AppendTurn(ResponseTurn("k", "r3", "r2"))).ok());
  // Another owner's response of the same id is no part of the chain.
  ASSERT_TRUE(RunSync(store->AppendTurn(ResponseTurn("other", "r2", ""))).ok());

  const std::string db = DatabaseOf(url);
  auto chain = RunSync(store->ResponseChain("k", "r3", 0));
  ASSERT_TRUE(chain.ok()) << Describe(chain);
  ASSERT_TRUE(chain->has_value());
  EXPECT_THAT(Ids((*chain)->items),
              ::testing::ElementsAre("r1-in", "r1-out", "r2-in", "r2-out", "r3-in", "r3-out"));
  EXPECT_FALSE((*chain)->has_more);
  EXPECT_EQ((*chain)->items[2].response_id, "r2");
  EXPECT_FALSE((*chain)->items[2].output);
  EXPECT_TRUE((*chain)->items[3].output);
  EXPECT_EQ((*chain)->items[3].json, R"({"id":"r2-out"})");
  for (std::size_t i = 1; i < (*chain)->items.size(); ++i) {
    EXPECT_LT((*chain)->items[i - 1].seq, (*chain)->items[i].seq);
  }

  auto recent = RunSync(store->ResponseChain("k", "r3", 3));
  ASSERT_TRUE(recent.ok() && recent->has_value()) << Describe(recent);
  EXPECT_THAT(Ids((*recent)->items), ::testing::ElementsAre("r2-out", "r3-in", "r3-out"));
  EXPECT_TRUE((*recent)->has_more);
  auto exact = RunSync(store->ResponseChain("k", "r3", 6));
  ASSERT_TRUE(exact.ok() && exact->has_value()) << Describe(exact);
  EXPECT_EQ((*exact)->items.size(), 6u);
  EXPECT_FALSE((*exact)->has_more);

  auto other = RunSync(store->ResponseChain("other", "r2", 0));
  ASSERT_TRUE(other.ok() && other->has_value()) << Describe(other);
  EXPECT_THAT(Ids((*other)->items), ::testing::ElementsAre("r2-in", "r2-out"));
  auto missing = RunSync(store->ResponseChain("other", "r3", 0));
  ASSERT_TRUE(missing.ok()) << Describe(missing);
  EXPECT_FALSE(missing->has_value());

  // A deleted response ends the chain there; its items went with it.
  auto deleted = RunSync(store->DeleteResponse("k", "r2"));
  ASSERT_TRUE(deleted.ok() && *deleted) << Describe(deleted);
  auto cut = RunSync(store->ResponseChain("k", "r3", 0));
  ASSERT_TRUE(cut.ok() && cut->has_value()) << Describe(cut);
  EXPECT_THAT(Ids((*cut)->items), ::testing::ElementsAre("r3-in", "r3-out"));
  EXPECT_EQ(SharedPostgres().Psql(db, "SELECT count(*) FROM items WHERE response_id = 'r2'"),
            "2\n");  // the other owner's
  store->Close();
}

TEST(PostgresConversationStore, ALongChainIsReadByTheRecursiveQueryAlone) {
  const std::string url = FreshPostgresDatabase();
  PostgresStoreOptions options;
  options.url = url;
  options.reader_threads = 1;
  auto store = OpenStore(options);
  ASSERT_NE(store, nullptr);
  constexpr int kLength = 40;
  std::string previous;
  for (int n = 0; n < kLength; ++n) {
    std::string id = Numbered("r", n);
    ASSERT_TRUE(RunSync(store->AppendTurn(ResponseTurn("k", id, previous))).ok());
    previous = std::move(id);
  }
  const std::string db = DatabaseOf(url);
  auto chain = RunSync(store->ResponseChain("k", "r39", 0));
  ASSERT_TRUE(chain.ok() && chain->has_value()) << Describe(chain);
  EXPECT_EQ((*chain)->items.size(), 2u * kLength);
  EXPECT_EQ((*chain)->items.front().id, "r0-in");
  EXPECT_EQ((*chain)->items.back().id, "r39-out");
  // The only reader's session last ran the recursive query (the writer's last ran COMMIT): the
  // chain was not followed by one query per response.
  EXPECT_EQ(SharedPostgres().Psql(db,
                                  "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                  "current_database() AND pid <> pg_backend_pid() AND "
                                  "query LIKE 'WITH RECURSIVE%'"),
            "1\n");
  store->Close();
}

TEST(PostgresConversationStore, AResponsesItemsArePagedByKindAndOrder) {
  const std::string url = FreshPostgresDatabase();
  auto store = OpenStore(url);
  ASSERT_NE(store, nullptr);
  Turn turn = ResponseTurn("k", "r1", "");
  auto record = std::make_shared<ResponseRecord>(*turn.response);
  record->input = {Item("a"), Item("b"), Item("a"), Item("c")};
  record->output = {Item("o1"), Item("o2")};
  turn.response = record;
  ASSERT_TRUE(RunSync(store->AppendTurn(turn)).ok());

  auto page = RunSync(store->ListResponseItems("k", "r1", false, "", 3, ItemOrder::kAscending));
  ASSERT_TRUE(page.ok() && page->has_value()) << Describe(page);
  EXPECT_THAT(Ids((*page)->items), ::testing::ElementsAre("a", "b", "a"));
  EXPECT_TRUE((*page)->has_more);
  EXPECT_FALSE((*page)->items[0].output);
  EXPECT_EQ((*page)->items[0].response_id, "r1");
  // After the first "a" of each order: the lowest ascending, the highest descending.
  auto up = RunSync(store->ListResponseItems("k", "r1", false, "a", 10, ItemOrder::kAscending));
  ASSERT_TRUE(up.ok() && up->has_value()) << Describe(up);
  EXPECT_THAT(Ids((*up)->items), ::testing::ElementsAre("b", "a", "c"));
  EXPECT_FALSE((*up)->has_more);
  auto down = RunSync(store->ListResponseItems("k", "r1", false, "a", 10, ItemOrder::kDescending));
  ASSERT_TRUE(down.ok() && down->has_value()) << Describe(down);
  EXPECT_THAT(Ids((*down)->items), ::testing::ElementsAre("b", "a"));
  auto output = RunSync(store->ListResponseItems("k", "r1", true, "", 1, ItemOrder::kDescending));
  ASSERT_TRUE(output.ok() && output->has_value()) << Describe(output);
  EXPECT_THAT(Ids((*output)->items), ::testing::ElementsAre("o2"));
  EXPECT_TRUE((*output)->has_more);
  EXPECT_TRUE((*output)->items[0].output);

  // An input item's id is not in the output listing.
  auto wrong_kind =
      RunSync(store->ListResponseItems("k", "r1", true, "b", 10, ItemOrder::kAscending));
  ASSERT_FALSE(wrong_kind.ok());
  EXPECT_EQ(wrong_kind.error().kind, ErrorKind::kNotFound);
  auto elsewhere =
      RunSync(store->ListResponseItems("j", "r1", false, "", 10, ItemOrder::kAscending));
  ASSERT_TRUE(elsewhere.ok()) << Describe(elsewhere);
  EXPECT_FALSE(elsewhere->has_value());
  auto gone = RunSync(store->ListResponseItems("k", "r9", false, "zz", 10, ItemOrder::kAscending));
  ASSERT_TRUE(gone.ok()) << Describe(gone);
  EXPECT_FALSE(gone->has_value());
  store->Close();
}

TEST(PostgresConversationStore, ManyItemsKeepTheirOrderAcrossInserts) {
  const std::string url = FreshPostgresDatabase();
  auto store = OpenStore(url);
  ASSERT_NE(store, nullptr);
  // More than one INSERT's worth of items, each way in.
  std::vector<ItemToStore> initial;
  std::vector<ItemToStore> more;
  for (int n = 0; n < 2500; ++n) initial.push_back(Item(Numbered("i", n)));
  for (int n = 0; n < 2100; ++n) more.push_back(Item(Numbered("m", n)));
  StoredConversation conversation;
  conversation.id = "c1";
  ASSERT_TRUE(RunSync(store->CreateConversation("k", conversation, initial)).ok());
  auto appended = RunSync(store->AppendConversationItems("k", "c1", more));
  ASSERT_TRUE(appended.ok() && appended->has_value()) << Describe(appended);
  ASSERT_EQ((*appended)->size(), more.size());

  auto window = RunSync(store->ConversationItems("k", "c1", 0));
  ASSERT_TRUE(window.ok() && window->has_value()) << Describe(window);
  const std::vector<StoredItem>& items = (*window)->items;
  ASSERT_EQ(items.size(), initial.size() + more.size());
  for (std::size_t i = 0; i < initial.size(); ++i) ASSERT_EQ(items[i].id, initial[i].id) << i;
  for (std::size_t i = 0; i < more.size(); ++i) {
    const StoredItem& stored = items[initial.size() + i];
    ASSERT_EQ(stored.id, more[i].id) << i;
    ASSERT_EQ(stored.seq, (**appended)[i].seq) << i;
    ASSERT_EQ(stored.json, (**appended)[i].json) << i;
  }
  store->Close();
}

TEST(PostgresConversationStore, ATurnInAMissingConversationKeepsItsItemsWithTheResponseOnly) {
  const std::string url = FreshPostgresDatabase();
  auto store = OpenStore(url);
  ASSERT_NE(store, nullptr);
  // The conversation was deleted (or never was): the turn still commits, its items belong to its
  // response alone, and deleting the response deletes them.
  Status appended = RunSync(store->AppendTurn(ResponseTurn("k", "r1", "", "c_gone")));
  ASSERT_TRUE(appended.ok()) << Describe(appended);
  auto response = RunSync(store->GetResponse("k", "r1"));
  ASSERT_TRUE(response.ok() && response->has_value()) << Describe(response);
  EXPECT_EQ((*response)->conversation_id, "c_gone");
  const std::string db = DatabaseOf(url);
  EXPECT_EQ(SharedPostgres().Psql(db, "SELECT count(*) FROM items WHERE conversation_id IS NULL"),
            "2\n");
  EXPECT_THAT(RecentContents(*store, "resp-user"), ::testing::IsEmpty());  // owner "" has none
  ASSERT_TRUE(*RunSync(store->DeleteResponse("k", "r1")));
  EXPECT_EQ(SharedPostgres().Psql(db, "SELECT count(*) FROM items"), "0\n");
  EXPECT_EQ(SharedPostgres().Psql(db, "SELECT count(*) FROM messages WHERE owner = 'k'"), "2\n");
  store->Close();
}

TEST(PostgresConversationStore, AResponseRecordsNulBytesAreStoredReplaced) {
  const std::string url = FreshPostgresDatabase();
  auto store = OpenStore(url);
  ASSERT_NE(store, nullptr);
  // A NUL byte would cut a libpq parameter short: it reaches the database as U+FFFD.
  Turn turn = ResponseTurn("k", "r1", "");
  auto record = std::make_shared<ResponseRecord>(*turn.response);
  record->input = {ItemToStore{std::string("a\0b", 3), std::string("{\"t\":\"x\0y\"}", 11)}};
  turn.response = record;
  ASSERT_TRUE(RunSync(store->AppendTurn(turn)).ok());
  auto items = RunSync(store->ListResponseItems("k", "r1", false, "", 10, ItemOrder::kAscending));
  ASSERT_TRUE(items.ok() && items->has_value()) << Describe(items);
  ASSERT_EQ((*items)->items.size(), 1u);
  EXPECT_EQ((*items)->items[0].id,
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ((*items)->items[0].json, "{\"t\":\"x\xEF\xBF\xBDy\"}");
  store->Close();
}

TEST(PostgresConversationStore, AVersion2DatabaseMigratesToVersion3) {
  const std::string url = FreshPostgresDatabase();
  const std::string db = DatabaseOf(url);
  // A database as version 2 left it, with a conversation's messages.
  SharedPostgres().Psql(
      db,
      "CREATE TABLE schema_version (version INTEGER NOT NULL); "
      "INSERT INTO schema_version VALUES (2); "
      "CREATE TABLE messages (id BIGSERIAL PRIMARY KEY, user_id TEXT NOT NULL, "
      "\"timestamp\" TIMESTAMP NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL, "
      "request_id TEXT, model TEXT, prompt_tokens BIGINT, completion_tokens BIGINT, "
      "latency_ms BIGINT, owner TEXT NOT NULL DEFAULT ''); "
      "CREATE INDEX messages_owner_user_id_id ON messages (owner, user_id, id); "
      "CREATE VIEW message AS SELECT id, user_id, \"timestamp\", role, content FROM messages; "
      "INSERT INTO messages (user_id, \"timestamp\", role, content, owner) VALUES "
      "('alice', '2024-03-01 12:00:00', 'user', 'old prompt', 'k'), "
      "('alice', '2024-03-01 12:00:01', 'assistant', 'old answer', 'k')");

  auto store = OpenStore(url);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(SharedPostgres().Psql(db, "SELECT count(*), max(version) FROM schema_version"),
            "1|5\n");
  EXPECT_EQ(SharedPostgres().Psql(db,
                                  "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM "
                                  "pg_indexes WHERE tablename = 'items'"),
            "items_owner_conversation_id_seq,items_owner_response_id_output_seq,items_pkey\n");
  auto old = RunSync(store->RecentMessages("k", "alice", 0));
  ASSERT_TRUE(old.ok()) << Describe(old);
  EXPECT_THAT(Contents(*old), ::testing::ElementsAre("old prompt", "old answer"));

  ASSERT_TRUE(RunSync(store->AppendTurn(ResponseTurn("k", "r1", ""))).ok());
  auto response = RunSync(store->GetResponse("k", "r1"));
  ASSERT_TRUE(response.ok() && response->has_value()) << Describe(response);
  EXPECT_EQ((*response)->json, R"({"id":"r1","object":"response"})");
  EXPECT_EQ((*response)->created_at, 1700000000);
  EXPECT_EQ((*response)->previous_response_id, "");
  store->Close();

  // Reopening finds version 4 and changes nothing.
  auto again = OpenStore(url);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(SharedPostgres().Psql(db, "SELECT count(*) FROM responses"), "1\n");
}

TEST(PostgresConversationStore, ConversationsAppendDeleteAndStayWithTheirOwner) {
  const std::string url = FreshPostgresDatabase();
  auto store = OpenStore(url);
  ASSERT_NE(store, nullptr);
  StoredConversation conversation;
  conversation.id = "c1";
  conversation.created_at = 1700000001;
  conversation.metadata_json = R"({"topic":"x"})";
  ASSERT_TRUE(RunSync(store->CreateConversation("k", conversation, {Item("a"), Item("b")})).ok());

  // Another owner sees none of it and cannot change it.
  EXPECT_FALSE(RunSync(store->GetConversation("j", "c1"))->has_value());
  EXPECT_FALSE(RunSync(store->ConversationItems("j", "c1", 0))->has_value());
  EXPECT_FALSE(RunSync(store->AppendConversationItems("j", "c1", {Item("x")}))->has_value());
  EXPECT_FALSE(RunSync(store->UpdateConversation("j", "c1", "{}"))->has_value());
  EXPECT_FALSE(*RunSync(store->DeleteConversationItem("j", "c1", "a")));
  EXPECT_FALSE(*RunSync(store->DeleteConversation("j", "c1")));
  EXPECT_FALSE(
      RunSync(store->ListConversationItems("j", "c1", "", 10, ItemOrder::kAscending))->has_value());
  EXPECT_FALSE(RunSync(store->GetConversationItem("j", "c1", "a"))->has_value());

  // A missing conversation takes no items (and fails no other write of the batch).
  auto nowhere = RunSync(store->AppendConversationItems("k", "c2", {Item("x")}));
  ASSERT_TRUE(nowhere.ok()) << Describe(nowhere);
  EXPECT_FALSE(nowhere->has_value());
  EXPECT_EQ(SharedPostgres().Psql(DatabaseOf(url), "SELECT count(*) FROM items WHERE id = 'x'"),
            "0\n");

  // A stored turn in the conversation appends its input then output items.
  ASSERT_TRUE(RunSync(store->AppendTurn(ResponseTurn("k", "r1", "", "c1"))).ok());
  auto appended = RunSync(store->AppendConversationItems("k", "c1", {Item("c"), Item("c")}));
  ASSERT_TRUE(appended.ok() && appended->has_value()) << Describe(appended);
  ASSERT_EQ((*appended)->size(), 2u);
  EXPECT_EQ((**appended)[0].id, "c");
  EXPECT_LT((**appended)[0].seq, (**appended)[1].seq);
  auto none = RunSync(store->AppendConversationItems("k", "c1", {}));
  ASSERT_TRUE(none.ok() && none->has_value()) << Describe(none);
  EXPECT_TRUE((*none)->empty());

  auto window = RunSync(store->ConversationItems("k", "c1", 0));
  ASSERT_TRUE(window.ok() && window->has_value()) << Describe(window);
  EXPECT_THAT(Ids((*window)->items), ::testing::ElementsAre("a", "b", "r1-in", "r1-out", "c", "c"));
  EXPECT_EQ((*window)->items[2].response_id, "r1");
  EXPECT_EQ((*window)->items[0].response_id, "");
  auto last = RunSync(store->ConversationItems("k", "c1", 4));
  ASSERT_TRUE(last.ok() && last->has_value());
  EXPECT_THAT(Ids((*last)->items), ::testing::ElementsAre("r1-in", "r1-out", "c", "c"));
  EXPECT_TRUE((*last)->has_more);

  // Pages in either order, after the first item with that id in the listing's order.
  auto up = RunSync(store->ListConversationItems("k", "c1", "b", 2, ItemOrder::kAscending));
  ASSERT_TRUE(up.ok() && up->has_value()) << Describe(up);
  EXPECT_THAT(Ids((*up)->items), ::testing::ElementsAre("r1-in", "r1-out"));
  EXPECT_TRUE((*up)->has_more);
  auto down = RunSync(store->ListConversationItems("k", "c1", "c", 10, ItemOrder::kDescending));
  ASSERT_TRUE(down.ok() && down->has_value()) << Describe(down);
  EXPECT_THAT(Ids((*down)->items), ::testing::ElementsAre("c", "r1-out", "r1-in", "b", "a"));
  EXPECT_FALSE((*down)->has_more);
  auto unknown = RunSync(store->ListConversationItems("k", "c1", "zz", 10, ItemOrder::kAscending));
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().kind, ErrorKind::kNotFound);

  auto updated = RunSync(store->UpdateConversation("k", "c1", R"({"topic":"y"})"));
  ASSERT_TRUE(updated.ok() && updated->has_value()) << Describe(updated);
  EXPECT_EQ((*updated)->metadata_json, R"({"topic":"y"})");
  EXPECT_EQ((*updated)->created_at, 1700000001);
  EXPECT_EQ((*updated)->id, "c1");

  // The response's items stay in the conversation when the response goes.
  ASSERT_TRUE(*RunSync(store->DeleteResponse("k", "r1")));
  EXPECT_EQ((*RunSync(store->ConversationItems("k", "c1", 0)))->items.size(), 6u);
  EXPECT_TRUE(*RunSync(store->DeleteConversationItem("k", "c1", "b")));
  EXPECT_FALSE(*RunSync(store->DeleteConversationItem("k", "c1", "b")));
  EXPECT_FALSE(RunSync(store->GetConversationItem("k", "c1", "b"))->has_value());

  // Deleting the conversation deletes its items; another owner's conversation of that id stays.
  ASSERT_TRUE(RunSync(store->CreateConversation("j", conversation, {Item("a")})).ok());
  ASSERT_TRUE(RunSync(store->AppendTurn(ResponseTurn("k", "r2", ""))).ok());
  EXPECT_TRUE(*RunSync(store->DeleteConversation("k", "c1")));
  EXPECT_FALSE(*RunSync(store->DeleteConversation("k", "c1")));
  EXPECT_FALSE(RunSync(store->GetConversation("k", "c1"))->has_value());
  EXPECT_EQ(SharedPostgres().Psql(
                DatabaseOf(url), "SELECT owner, count(*) FROM items GROUP BY owner ORDER BY owner"),
            "j|1\nk|2\n");
  auto theirs = RunSync(store->ConversationItems("j", "c1", 0));
  ASSERT_TRUE(theirs.ok() && theirs->has_value());
  EXPECT_THAT(Ids((*theirs)->items), ::testing::ElementsAre("a"));
  store->Close();
}

}  // namespace
}  // namespace staple::store
