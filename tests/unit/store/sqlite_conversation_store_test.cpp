// Behaviour specific to SqliteConversationStore: the file's schema, migrations, durability and
// failures. The behaviour shared with other stores is in store_contract_test.cpp.

#include "store/sqlite/sqlite_conversation_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "store_test_util.h"

namespace staple::store {
namespace {

using testing::Describe;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::MakeTurn;
using testing::RunSync;
using testing::TempDir;

using Rows = std::vector<std::vector<std::string>>;

// An independent connection to the file, through the plain C API, as an operator's sqlite3
// shell would have.
class RawConnection {
 public:
  explicit RawConnection(const std::string& path) {
    if (sqlite3_open(path.c_str(), &db_) != SQLITE_OK) {
      ADD_FAILURE() << "cannot open " << path << ": " << sqlite3_errmsg(db_);
    }
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;
  ~RawConnection() { sqlite3_close(db_); }

  void Exec(const std::string& sql) {
    char* message = nullptr;
    if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &message) != SQLITE_OK) {
      ADD_FAILURE() << sql << ": " << (message != nullptr ? message : "?");
    }
    sqlite3_free(message);
  }

  // Every row as text ("NULL" for NULL), plus the column names of the result.
  Rows Query(const std::string& sql, std::vector<std::string>* columns = nullptr) {
    sqlite3_stmt* stmt = nullptr;
    Rows rows;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) {
      ADD_FAILURE() << sql << ": " << sqlite3_errmsg(db_);
      return rows;
    }
    const int count = sqlite3_column_count(stmt);
    if (columns != nullptr) {
      columns->clear();
      for (int i = 0; i < count; ++i) columns->push_back(sqlite3_column_name(stmt, i));
    }
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      std::vector<std::string> row;
      for (int i = 0; i < count; ++i) {
        const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, i));
        row.push_back(text != nullptr ? text : "NULL");
      }
      rows.push_back(std::move(row));
    }
    if (rc != SQLITE_DONE) ADD_FAILURE() << sql << ": " << sqlite3_errmsg(db_);
    sqlite3_finalize(stmt);
    return rows;
  }

  std::string Scalar(const std::string& sql) {
    Rows rows = Query(sql);
    return rows.empty() || rows[0].empty() ? "" : rows[0][0];
  }

 private:
  sqlite3* db_ = nullptr;
};

class SqliteConversationStoreTest : public ::testing::Test {
 protected:
  SqliteStoreOptions Options() const {
    SqliteStoreOptions options;
    options.path = path_;
    return options;
  }

  std::unique_ptr<SqliteConversationStore> OpenStore(SqliteStoreOptions options) {
    auto store = SqliteConversationStore::Open(std::move(options));
    EXPECT_TRUE(store.ok()) << Describe(store);
    return store.ok() ? std::move(store).value() : nullptr;
  }
  std::unique_ptr<SqliteConversationStore> OpenStore() { return OpenStore(Options()); }

  TempDir dir_;
  const std::string path_ = dir_.File("instance/chat_history.db");
};

TEST_F(SqliteConversationStoreTest, CreatesMissingDirectoriesAndTheVersionedSchema) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(std::filesystem::exists(path_));

  RawConnection raw(path_);
  EXPECT_EQ(raw.Scalar("PRAGMA user_version"), "5");
  EXPECT_EQ(raw.Scalar("PRAGMA journal_mode"), "wal");
  std::vector<std::string> columns;
  raw.Query("SELECT * FROM messages", &columns);
  EXPECT_THAT(columns,
              ElementsAre("id", "user_id", "timestamp", "role", "content", "request_id", "model",
                          "prompt_tokens", "completion_tokens", "latency_ms", "owner", "upstream"));
  EXPECT_EQ(raw.Scalar("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND "
                       "tbl_name = 'messages' AND sql LIKE '%(owner, user_id, id)%'"),
            "1");
  EXPECT_THAT(raw.Scalar("SELECT sql FROM sqlite_master WHERE name = 'messages'"),
              HasSubstr("AUTOINCREMENT"));
}

TEST_F(SqliteConversationStoreTest, MessageViewAnswersTheSeedQuery) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", 1))).ok());

  RawConnection raw(path_);
  std::vector<std::string> columns;
  const Rows rows = raw.Query("SELECT * FROM message;", &columns);
  EXPECT_THAT(columns, ElementsAre("id", "user_id", "timestamp", "role", "content"));
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0][1], "alice");
  EXPECT_EQ(rows[0][3], "user");
  EXPECT_EQ(rows[0][4], "prompt 1");
  EXPECT_EQ(rows[1][3], "assistant");
  EXPECT_EQ(rows[1][4], "answer 1");
}

TEST_F(SqliteConversationStoreTest, CompletedAppendIsVisibleToAnIndependentConnection) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  for (int n = 0; n < 3; ++n) {
    ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", n))).ok());
    // No Close(): the rows must already be committed when AppendTurn completes.
    RawConnection raw(path_);
    EXPECT_EQ(raw.Scalar("SELECT count(*) FROM messages WHERE user_id = 'alice'"),
              std::to_string(2 * (n + 1)));
    EXPECT_EQ(raw.Scalar("SELECT content FROM messages ORDER BY id DESC LIMIT 1"),
              "answer " + std::to_string(n));
  }
}

TEST_F(SqliteConversationStoreTest, AcknowledgedTurnsSurviveKill9) {
  // A child process appends turns one after another and reports each completed AppendTurn on a
  // pipe, as a handler would answer 200; it is then killed with SIGKILL mid-stream.
  int acks[2];
  ASSERT_EQ(pipe(acks), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(acks[0]);
    auto opened = SqliteConversationStore::Open(Options());
    if (!opened.ok()) _exit(2);
    auto& store = *opened.value();
    for (int n = 0;; ++n) {
      if (!RunSync(store.AppendTurn(MakeTurn("crash", n))).ok()) _exit(3);
      if (write(acks[1], &n, sizeof n) != static_cast<ssize_t>(sizeof n)) _exit(4);
    }
  }
  close(acks[1]);
  int last_ack = -1;
  while (last_ack < 100) {
    int n = 0;
    ASSERT_EQ(read(acks[0], &n, sizeof n), static_cast<ssize_t>(sizeof n)) << "child stopped";
    last_ack = n;
  }
  kill(child, SIGKILL);
  int wait_status = 0;
  ASSERT_EQ(waitpid(child, &wait_status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(wait_status));
  close(acks[0]);

  // Every acknowledged turn is there, and only whole turns are.
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  auto messages = RunSync(store->RecentMessages("", "crash", 0));
  ASSERT_TRUE(messages.ok()) << Describe(messages);
  ASSERT_GE(messages->size(), 2u * static_cast<std::size_t>(last_ack + 1));
  EXPECT_EQ(messages->size() % 2, 0u);
  for (int n = 0; n <= last_ack; ++n) {
    EXPECT_EQ((*messages)[2 * static_cast<std::size_t>(n)]->content, "prompt " + std::to_string(n));
    EXPECT_EQ((*messages)[2 * static_cast<std::size_t>(n) + 1]->content,
              "answer " + std::to_string(n));
  }
}

// Every field of a history message, for comparing a history read with the table.
std::string Fields(const HistoryMessage& m) {
  return std::to_string(m.id) + "|" + m.role + "|" + m.content;
}

// The newest `n` rows of `user_id` as the table holds them, oldest first (the columns of Fields).
std::vector<std::string> TableRows(RawConnection& raw, const std::string& user_id, int n) {
  std::vector<std::string> out;
  const Rows rows =
      raw.Query("SELECT id, role, content FROM (SELECT * FROM messages WHERE user_id = '" +
                user_id + "' ORDER BY id DESC LIMIT " + std::to_string(n) + ") ORDER BY id");
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) line += (i == 0 ? "" : "|") + row[i];
    out.push_back(line);
  }
  return out;
}

std::vector<std::string> HistoryRows(SqliteConversationStore& store, const std::string& user_id,
                                     std::size_t n) {
  auto read = RunSync(store.RecentMessages("", user_id, n));
  EXPECT_TRUE(read.ok()) << Describe(read);
  std::vector<std::string> out;
  if (read.ok()) {
    for (const auto& message : *read) out.push_back(Fields(*message));
  }
  return out;
}

// History reads are served from memory when nothing changed; they must still show exactly the
// table after the store's own writes and after writes by another connection.
TEST_F(SqliteConversationStoreTest, HistoryReadsShowEveryCommittedChange) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  RawConnection raw(path_);
  for (int n = 0; n < 3; ++n) ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", n))).ok());
  ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("bob", 0))).ok());

  EXPECT_EQ(HistoryRows(*store, "alice", 100), TableRows(raw, "alice", 100));
  EXPECT_EQ(HistoryRows(*store, "alice", 100), TableRows(raw, "alice", 100));  // again
  EXPECT_EQ(HistoryRows(*store, "alice", 4), TableRows(raw, "alice", 4));
  EXPECT_EQ(HistoryRows(*store, "alice", 0), TableRows(raw, "alice", 100));

  // The store's own write.
  ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", 3))).ok());
  EXPECT_EQ(HistoryRows(*store, "alice", 100), TableRows(raw, "alice", 100));
  EXPECT_EQ(HistoryRows(*store, "alice", 100).size(), 8u);

  // Another connection inserts, deletes the oldest row, then everything.
  raw.Exec(
      "INSERT INTO messages (user_id, timestamp, role, content) "
      "VALUES ('alice', '2026-01-01 00:00:00.000000', 'user', 'from elsewhere')");
  EXPECT_EQ(HistoryRows(*store, "alice", 100), TableRows(raw, "alice", 100));
  EXPECT_EQ(HistoryRows(*store, "alice", 100).size(), 9u);
  raw.Exec(
      "DELETE FROM messages WHERE id = (SELECT min(id) FROM messages WHERE user_id = 'alice')");
  EXPECT_EQ(HistoryRows(*store, "alice", 100), TableRows(raw, "alice", 100));
  EXPECT_EQ(HistoryRows(*store, "alice", 100).size(), 8u);
  raw.Exec("DELETE FROM messages WHERE user_id = 'alice'");
  EXPECT_TRUE(HistoryRows(*store, "alice", 100).empty());

  // After the store's own delete, a new conversation under the same id.
  EXPECT_EQ(HistoryRows(*store, "bob", 100), TableRows(raw, "bob", 100));
  ASSERT_TRUE(RunSync(store->DeleteMessages("", "bob")).ok());
  EXPECT_TRUE(HistoryRows(*store, "bob", 100).empty());
  ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("bob", 1))).ok());
  EXPECT_EQ(HistoryRows(*store, "bob", 100), TableRows(raw, "bob", 100));
  EXPECT_EQ(HistoryRows(*store, "bob", 100).size(), 2u);
}

// A long conversation: windows shorter and longer than what the store keeps in memory.
TEST_F(SqliteConversationStoreTest, LongHistoriesReadExactlyAtEveryWindow) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  RawConnection raw(path_);
  for (int n = 0; n < 150; ++n) ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("carol", n))).ok());
  for (int round = 0; round < 2; ++round) {
    for (std::size_t window : {1u, 10u, 100u, 256u, 299u, 300u, 500u}) {
      EXPECT_EQ(HistoryRows(*store, "carol", window),
                TableRows(raw, "carol", static_cast<int>(window)))
          << "window " << window;
    }
    EXPECT_EQ(HistoryRows(*store, "carol", 0), TableRows(raw, "carol", 1000));
    ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("carol", 150 + round))).ok());
  }
}

TEST_F(SqliteConversationStoreTest, ReopeningTheFileKeepsTheData) {
  {
    auto store = OpenStore();
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", 1))).ok());
    ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", 2))).ok());
  }  // the destructor closes
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  auto messages = RunSync(store->RecentMessages("", "alice", 0));
  ASSERT_TRUE(messages.ok()) << Describe(messages);
  ASSERT_EQ(messages->size(), 4u);
  EXPECT_EQ((*messages)[3]->content, "answer 2");
  ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", 3))).ok());
  auto more = RunSync(store->RecentMessages("", "alice", 1));
  ASSERT_TRUE(more.ok());
  EXPECT_GT((*more)[0]->id, (*messages)[3]->id);
}

TEST_F(SqliteConversationStoreTest, MigratesASeedEraTableKeepingItsRows) {
  std::filesystem::create_directories(std::filesystem::path(path_).parent_path());
  {
    // The seed's table: five columns, user_version 0.
    RawConnection raw(path_);
    raw.Exec(
        "CREATE TABLE messages (id INTEGER NOT NULL, user_id VARCHAR(36) NOT NULL, "
        "timestamp DATETIME NOT NULL, role VARCHAR(10) NOT NULL, content TEXT NOT NULL, "
        "PRIMARY KEY (id));"
        "INSERT INTO messages (user_id, timestamp, role, content) VALUES "
        "('old-user', '2024-01-02 03:04:05.000006', 'user', 'old prompt'),"
        "('old-user', '2024-01-02 03:04:06.000007', 'assistant', 'old answer');");
  }
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);

  auto recent = RunSync(store->RecentMessages("", "old-user", 0));
  ASSERT_TRUE(recent.ok()) << Describe(recent);
  ASSERT_EQ(recent->size(), 2u);
  EXPECT_EQ((*recent)[0]->content, "old prompt");
  EXPECT_EQ((*recent)[1]->role, "assistant");
  auto old = RunSync(store->ListMessages("", "old-user", 0, 10));
  ASSERT_TRUE(old.ok()) << Describe(old);
  ASSERT_EQ(old->messages.size(), 2u);
  EXPECT_EQ(old->messages[0].timestamp, "2024-01-02 03:04:05.000006");
  EXPECT_EQ(old->messages[1].request_id, "");
  EXPECT_EQ(old->messages[1].prompt_tokens, std::nullopt);

  ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("old-user", 1))).ok());
  auto all = RunSync(store->ListMessages("", "old-user", 0, 10));
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->messages.size(), 4u);
  EXPECT_GT(all->messages[2].id, all->messages[1].id);
  EXPECT_EQ(all->messages[3].completion_tokens, 21);

  RawConnection raw(path_);
  EXPECT_EQ(raw.Scalar("PRAGMA user_version"), "5");
  std::vector<std::string> columns;
  raw.Query("SELECT * FROM messages", &columns);
  EXPECT_THAT(columns,
              ElementsAre("id", "user_id", "timestamp", "role", "content", "request_id", "model",
                          "prompt_tokens", "completion_tokens", "latency_ms", "owner", "upstream"));
  EXPECT_EQ(raw.Query("SELECT * FROM message").size(), 4u);
}

TEST_F(SqliteConversationStoreTest, RefusesASchemaNewerThanThisBuild) {
  std::filesystem::create_directories(std::filesystem::path(path_).parent_path());
  {
    RawConnection raw(path_);
    raw.Exec(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, future TEXT); PRAGMA user_version = 6;");
  }
  auto store = SqliteConversationStore::Open(Options());
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(store.error().message, HasSubstr(path_));
  EXPECT_THAT(store.error().message, HasSubstr("schema version 6 is newer"));

  // The file was left as it was.
  RawConnection raw(path_);
  EXPECT_EQ(raw.Scalar("PRAGMA user_version"), "6");
}

// Schema version 3 adds the tables of the Responses and Conversations state: a version 2 file
// (as the previous build left it) keeps its rows and its schema and gains them.
TEST_F(SqliteConversationStoreTest, MigratesAVersion2FileToTheResponsesState) {
  std::filesystem::create_directories(std::filesystem::path(path_).parent_path());
  {
    RawConnection raw(path_);
    raw.Exec(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, "
        "timestamp DATETIME NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL, request_id "
        "TEXT, model TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, latency_ms "
        "INTEGER, owner TEXT NOT NULL DEFAULT '');"
        "CREATE INDEX messages_owner_user_id_id ON messages (owner, user_id, id);"
        "CREATE VIEW message AS SELECT id, user_id, timestamp, role, content FROM messages;"
        "INSERT INTO messages (user_id, timestamp, role, content, owner) VALUES "
        "('old-user', '2024-01-02 03:04:05.000006', 'user', 'old prompt', 'key_a'),"
        "('old-user', '2024-01-02 03:04:06.000007', 'assistant', 'old answer', 'key_a');"
        "PRAGMA user_version = 2;");
  }
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  auto old = RunSync(store->RecentMessages("key_a", "old-user", 0));
  ASSERT_TRUE(old.ok()) << Describe(old);
  ASSERT_EQ(old->size(), 2u);
  EXPECT_EQ((*old)[1]->content, "old answer");

  StoredConversation conversation;
  conversation.id = "conv_1";
  conversation.created_at = 1700000000;
  conversation.metadata_json = R"({"topic":"migration"})";
  std::vector<ItemToStore> items = {{"msg_1", R"({"id":"msg_1"})"}};
  ASSERT_TRUE(RunSync(store->CreateConversation("key_a", conversation, items)).ok());
  auto read = RunSync(store->ConversationItems("key_a", "conv_1", 0));
  ASSERT_TRUE(read.ok()) << Describe(read);
  ASSERT_TRUE(read->has_value());
  ASSERT_EQ((*read)->items.size(), 1u);
  EXPECT_EQ((*read)->items[0].json, R"({"id":"msg_1"})");

  RawConnection raw(path_);
  EXPECT_EQ(raw.Scalar("PRAGMA user_version"), "5");
  EXPECT_EQ(raw.Scalar("SELECT count(*) FROM messages"), "2");
  for (const char* table : {"responses", "conversations", "items"}) {
    EXPECT_EQ(
        raw.Scalar(std::string("SELECT type FROM sqlite_master WHERE name = '") + table + "'"),
        "table")
        << table;
  }
  EXPECT_EQ(raw.Scalar("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND "
                       "tbl_name = 'items'"),
            "2");
}

// The plan SQLite chooses for `sql` (EXPLAIN QUERY PLAN's details, one per line).
std::string QueryPlan(RawConnection& raw, const std::string& sql) {
  std::string plan;
  for (const auto& row : raw.Query("EXPLAIN QUERY PLAN " + sql)) plan += row.back() + "\n";
  return plan;
}

// The reads of the Responses state go through the indexes (as the store's statements are
// written: the partial indexes only serve queries that compare their column).
TEST_F(SqliteConversationStoreTest, ResponsesStateReadsUseTheirIndexes) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  RawConnection raw(path_);
  EXPECT_THAT(QueryPlan(raw,
                        "SELECT seq FROM items WHERE owner = 'a' AND response_id = 'r' AND "
                        "output = 1 AND seq > 0 ORDER BY seq ASC LIMIT 5"),
              HasSubstr("items_owner_response_id_output_seq"));
  EXPECT_THAT(QueryPlan(raw,
                        "SELECT seq FROM items WHERE owner = 'a' AND conversation_id = 'c' AND "
                        "seq < 99 ORDER BY seq DESC LIMIT 5"),
              HasSubstr("items_owner_conversation_id_seq"));
  const std::string chain_plan = QueryPlan(
      raw,
      "WITH RECURSIVE chain (id, previous_response_id) AS ("
      " SELECT id, previous_response_id FROM responses WHERE owner = 'a' AND id = 'r'"
      " UNION"
      " SELECT r.id, r.previous_response_id FROM chain"
      " JOIN responses r ON r.owner = 'a' AND r.id = chain.previous_response_id) "
      "SELECT i.seq FROM chain CROSS JOIN items i ON i.owner = 'a' AND i.response_id = chain.id "
      "ORDER BY i.seq DESC LIMIT 10");
  // The chain drives the join: a plain JOIN let the planner scan every item of the owner
  // (`items … (owner=?)`) and probe the chain for each, which made a chained request cost
  // milliseconds once the table held thousands of items.
  EXPECT_THAT(chain_plan,
              HasSubstr("items_owner_response_id_output_seq (owner=? AND response_id=?)"));
  EXPECT_THAT(chain_plan, HasSubstr("sqlite_autoindex_responses_1"));
  EXPECT_THAT(chain_plan, ::testing::Not(HasSubstr("SCAN r")));
}

void Rethrow(std::exception_ptr e) {
  if (e) std::rethrow_exception(e);
}

// A change of the Responses state that fails halfway is undone alone: the items it inserted
// before failing are gone, and a turn committed in the same transaction is kept.
TEST_F(SqliteConversationStoreTest, AFailedStateChangeIsUndoneAloneAndTheTurnsBesideItCommit) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  StoredConversation conversation;
  conversation.id = "conv_1";
  std::vector<ItemToStore> first_items = {{"msg_0", R"({"id":"msg_0"})"}};
  ASSERT_TRUE(RunSync(store->CreateConversation("", conversation, first_items)).ok());
  {
    RawConnection raw(path_);
    raw.Exec(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON items WHEN NEW.id = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'item refused'); END");
  }
  // Another connection holds the write lock while the writer takes a first turn, so that the
  // turn and the change queued after it wait together and share the next transaction.
  auto lock = std::make_unique<RawConnection>(path_);
  lock->Exec("BEGIN IMMEDIATE");
  net::io_context io;
  std::optional<Status> first;
  std::optional<Status> appended;
  std::optional<Result<std::optional<std::vector<StoredItem>>>> change;
  std::vector<ItemToStore> items = {{"msg_1", R"({"id":"msg_1"})"},
                                    {"poison", R"({"id":"poison"})"}};
  net::co_spawn(io, testing::StoreResultIn(store->AppendTurn(MakeTurn("first", 1)), &first),
                Rethrow);
  net::co_spawn(io, testing::StoreResultIn(store->AppendTurn(MakeTurn("alice", 1)), &appended),
                Rethrow);
  net::co_spawn(io,
                testing::StoreResultIn(
                    store->AppendConversationItems("", "conv_1", std::move(items)), &change),
                Rethrow);
  std::thread release([&] {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (store->PendingWrites() < 3 && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::yield();
    }
    lock->Exec("COMMIT");
  });
  io.run();
  release.join();
  lock.reset();
  ASSERT_TRUE(first.has_value() && first->ok());
  ASSERT_TRUE(appended.has_value() && change.has_value());
  EXPECT_TRUE(appended->ok()) << Describe(*appended);
  ASSERT_FALSE(change->ok());
  EXPECT_EQ(change->error().kind, ErrorKind::kStorage);
  EXPECT_THAT(change->error().message, HasSubstr("item refused"));

  RawConnection raw(path_);
  EXPECT_EQ(raw.Scalar("SELECT group_concat(id) FROM items"), "msg_0");
  EXPECT_EQ(raw.Scalar("SELECT count(*) FROM messages WHERE user_id = 'alice'"), "2");
}

TEST_F(SqliteConversationStoreTest, RefusesATableItCannotMigrate) {
  std::filesystem::create_directories(std::filesystem::path(path_).parent_path());
  {
    RawConnection raw(path_);
    raw.Exec("CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT)");
  }
  auto store = SqliteConversationStore::Open(Options());
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.error().message, HasSubstr(path_));
  EXPECT_THAT(store.error().message, HasSubstr("no column `user_id`"));
  RawConnection raw(path_);
  EXPECT_EQ(raw.Scalar("PRAGMA user_version"), "0");
}

TEST_F(SqliteConversationStoreTest, FailsClearlyOnAFileThatIsNotADatabase) {
  std::filesystem::create_directories(std::filesystem::path(path_).parent_path());
  {
    std::ofstream file(path_, std::ios::binary);
    file << std::string(8192, 'x');
  }
  auto store = SqliteConversationStore::Open(Options());
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(store.error().message, HasSubstr(path_));
  EXPECT_THAT(store.error().message, HasSubstr("not a database"));
}

TEST_F(SqliteConversationStoreTest, FailsClearlyWhenTheDirectoryCannotBeCreated) {
  {
    std::ofstream file(dir_.File("blocker"));
    file << "a file where a directory should be";
  }
  SqliteStoreOptions options = Options();
  options.path = dir_.File("blocker/chat_history.db");
  auto store = SqliteConversationStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(store.error().message, HasSubstr(options.path));
}

TEST_F(SqliteConversationStoreTest, FailsClearlyWhenTheFileCannotBeOpened) {
  // A directory where the file should be.
  std::filesystem::create_directories(path_);
  auto store = SqliteConversationStore::Open(Options());
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(store.error().message, HasSubstr("cannot open SQLite database '" + path_ + "'"));
}

TEST_F(SqliteConversationStoreTest, RejectsUnusableOptions) {
  SqliteStoreOptions memory = Options();
  memory.path = ":memory:";
  auto in_memory = SqliteConversationStore::Open(memory);
  ASSERT_FALSE(in_memory.ok());
  EXPECT_EQ(in_memory.error().kind, ErrorKind::kInvalidArgument);

  SqliteStoreOptions no_batch = Options();
  no_batch.max_batch = 0;
  auto unbatched = SqliteConversationStore::Open(no_batch);
  ASSERT_FALSE(unbatched.ok());
  EXPECT_EQ(unbatched.error().kind, ErrorKind::kInvalidArgument);

  SqliteStoreOptions no_readers = Options();
  no_readers.reader_threads = 0;
  EXPECT_FALSE(SqliteConversationStore::Open(no_readers).ok());
}

TEST_F(SqliteConversationStoreTest, AFailedBatchIsUnavailableAndTheStoreKeepsServing) {
  SqliteStoreOptions options = Options();
  options.busy_timeout = std::chrono::milliseconds(50);
  auto store = OpenStore(options);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", 1))).ok());

  RawConnection other(path_);
  other.Exec("BEGIN EXCLUSIVE");  // another process holds the write lock
  Turn secret = MakeTurn("alice", 2);
  secret.prompt = "do not leak this prompt";
  Status failed = RunSync(store->AppendTurn(secret));
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.error().kind, ErrorKind::kStorage);
  EXPECT_THAT(failed.error().message, ::testing::Not(HasSubstr("do not leak")));
  auto deleted = RunSync(store->DeleteMessages("", "alice"));
  ASSERT_FALSE(deleted.ok());
  EXPECT_EQ(deleted.error().kind, ErrorKind::kStorage);
  // Reads still work while the write lock is held (WAL).
  auto during = RunSync(store->RecentMessages("", "alice", 0));
  ASSERT_TRUE(during.ok()) << Describe(during);
  EXPECT_EQ(during->size(), 2u);
  other.Exec("COMMIT");

  Status recovered = RunSync(store->AppendTurn(MakeTurn("alice", 3)));
  ASSERT_TRUE(recovered.ok()) << Describe(recovered);
  auto messages = RunSync(store->RecentMessages("", "alice", 0));
  ASSERT_TRUE(messages.ok());
  std::vector<std::string> contents;
  for (const auto& m : *messages) contents.push_back(m->content);
  EXPECT_THAT(contents, ElementsAre("prompt 1", "answer 1", "prompt 3", "answer 3"));
  EXPECT_EQ(store->PendingWrites(), 0u);
}

net::awaitable<void> AppendAndRecord(SqliteConversationStore* store, int n,
                                     std::atomic<int>* committed, std::atomic<int>* refused,
                                     std::atomic<int>* other) {
  Status status = co_await store->AppendTurn(MakeTurn("alice", n));
  if (status.ok()) {
    committed->fetch_add(1);
  } else if (status.error().kind == ErrorKind::kStorage) {
    refused->fetch_add(1);
  } else {
    other->fetch_add(1);
  }
}

TEST_F(SqliteConversationStoreTest, CloseCommitsEveryAcceptedWrite) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  constexpr int kTurns = 2000;
  std::atomic<int> committed{0};
  std::atomic<int> refused{0};
  std::atomic<int> other{0};
  std::thread io_thread([&] {
    net::io_context io;
    for (int n = 0; n < kTurns; ++n) {
      net::co_spawn(io, AppendAndRecord(store.get(), n, &committed, &refused, &other),
                    [](std::exception_ptr e) {
                      if (e) std::rethrow_exception(e);
                    });
    }
    io.run();
  });
  // Close while appends are being accepted: each one is either committed or refused.
  while (store->PendingWrites() == 0 && committed.load() == 0) std::this_thread::yield();
  store->Close();
  io_thread.join();

  EXPECT_EQ(committed.load() + refused.load(), kTurns);
  EXPECT_EQ(other.load(), 0);
  EXPECT_GT(committed.load(), 0);
  RawConnection raw(path_);
  EXPECT_EQ(raw.Scalar("SELECT count(*) FROM messages"), std::to_string(2 * committed.load()));
}

TEST_F(SqliteConversationStoreTest, ManyAppendsInFlightAllCommit) {
  // 2000 appends in flight at once with FULL sync: group commit shares each fsync among many
  // turns. The rate is printed for reference; bench/micro/store_bench.cpp measures it properly.
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  constexpr int kTurns = 2000;
  std::atomic<int> committed{0};
  std::atomic<int> refused{0};
  std::atomic<int> other{0};
  const auto start = std::chrono::steady_clock::now();
  {
    net::io_context io;
    for (int n = 0; n < kTurns; ++n) {
      net::co_spawn(io, AppendAndRecord(store.get(), n, &committed, &refused, &other),
                    [](std::exception_ptr e) {
                      if (e) std::rethrow_exception(e);
                    });
    }
    io.run();
  }
  const auto elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start);
  EXPECT_EQ(committed.load(), kTurns);
  std::printf("[ info     ] %d turns (synchronous=FULL, all in flight) in %.3f s: %.0f turns/s\n",
              kTurns, elapsed.count(), kTurns / elapsed.count());
}

}  // namespace
}  // namespace staple::store
