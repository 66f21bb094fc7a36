// Retention (ConversationStore::DeleteOlderThan and RetentionTask) on SQLite, PostgreSQL and the
// in-memory double, the auto-vacuum switch that lets SQLite give pages back, and online backups.

#include "store/retention.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "postgres_test_util.h"
#include "store/postgres/postgres_conversation_store.h"
#include "store/sqlite/sqlite_conversation_store.h"
#include "store/sqlite/sqlite_maintenance.h"
#include "store_test_util.h"
#include "support/memory_conversation_store.h"

namespace staple::store {
namespace {

using std::chrono::system_clock;
using testing::Contents;
using testing::Describe;
using testing::FreshPostgresDatabase;
using testing::MakeTurn;
using testing::RunSync;
using testing::TempDir;

// A fixed "now" for the cutoffs, so that which rows are old never depends on the test's speed.
const system_clock::time_point kNow = system_clock::now();
constexpr std::chrono::hours kPeriod{24};

// A plain connection to the file, as an operator's sqlite3 shell would have.
class RawConnection {
 public:
  explicit RawConnection(const std::string& path) {
    if (sqlite3_open(path.c_str(), &db_) != SQLITE_OK) {
      ADD_FAILURE() << "cannot open " << path << ": " << sqlite3_errmsg(db_);
    }
    sqlite3_busy_timeout(db_, 5000);
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

  // The first column of every row, as text.
  std::vector<std::string> Column(const std::string& sql) {
    sqlite3_stmt* stmt = nullptr;
    std::vector<std::string> values;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) {
      ADD_FAILURE() << sql << ": " << sqlite3_errmsg(db_);
      return values;
    }
    while (sqlite3_step(stmt) == SQLITE_ROW) {
      const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
      values.push_back(text != nullptr ? text : "NULL");
    }
    sqlite3_finalize(stmt);
    return values;
  }

  std::int64_t Int(const std::string& sql) {
    auto values = Column(sql);
    return values.empty() ? -1 : std::stoll(values[0]);
  }

 private:
  sqlite3* db_ = nullptr;
};

// A turn of `user_id` whose both rows are `age` old.
Turn TurnAged(const std::string& user_id, int n, system_clock::duration age) {
  Turn turn = MakeTurn(user_id, n);
  turn.prompt_time = kNow - age;
  turn.completion_time = turn.prompt_time + std::chrono::milliseconds(1);
  return turn;
}

std::vector<std::string> Recent(ConversationStore& store, const std::string& user_id,
                                std::size_t max = 0) {
  auto messages = RunSync(store.RecentMessages("", user_id, max));
  EXPECT_TRUE(messages.ok()) << Describe(messages);
  return messages.ok() ? Contents(*messages) : std::vector<std::string>{};
}

std::vector<std::string> Listed(ConversationStore& store, const std::string& user_id) {
  auto page = RunSync(store.ListMessages("", user_id, 0, 1000));
  EXPECT_TRUE(page.ok()) << Describe(page);
  return page.ok() ? Contents(page->messages) : std::vector<std::string>{};
}

RetentionOptions Options(std::size_t batch_rows = 500) {
  RetentionOptions options;
  options.period = kPeriod;
  options.batch_rows = batch_rows;
  options.now = [] { return kNow; };
  return options;
}

class SqliteRetentionTest : public ::testing::Test {
 protected:
  std::unique_ptr<SqliteConversationStore> OpenStore() {
    SqliteStoreOptions options;
    options.path = path_;
    options.synchronous = SqliteSynchronous::kNormal;  // many commits; durability is not tested
    auto store = SqliteConversationStore::Open(std::move(options));
    EXPECT_TRUE(store.ok()) << Describe(store);
    return store.ok() ? std::move(store).value() : nullptr;
  }

  // Inserts `turns` turns of `user_id` straight into the table in one transaction, the first
  // `age` old and each next one a second younger; `content_bytes` of text per row.
  void InsertRaw(const std::string& user_id, int turns, system_clock::duration age,
                 std::size_t content_bytes = 16) {
    RawConnection raw(path_);
    raw.Exec("BEGIN");
    const std::string content(content_bytes, 'x');
    for (int i = 0; i < turns; ++i) {
      const std::string at = FormatTimestamp(kNow - age + std::chrono::seconds(i));
      for (const char* role : {"user", "assistant"}) {
        raw.Exec("INSERT INTO messages (user_id, timestamp, role, content, owner) VALUES ('" +
                 user_id + "', '" + at + "', '" + role + "', '" + content + "', '')");
      }
    }
    raw.Exec("COMMIT");
  }

  TempDir dir_;
  const std::string path_ = dir_.File("chat_history.db");
};

TEST_F(SqliteRetentionTest, NewDatabasesUseIncrementalAutoVacuum) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  RawConnection raw(path_);
  EXPECT_EQ(raw.Int("PRAGMA auto_vacuum"), 2);
}

TEST_F(SqliteRetentionTest, StepsDeleteOnlyOldRowsAFullBatchAtATime) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  InsertRaw("old", 600, kPeriod + std::chrono::hours(2));  // 1200 rows, all past the cutoff
  InsertRaw("new", 10, kPeriod - std::chrono::hours(1));   // 20 rows within the period

  const auto cutoff = kNow - kPeriod;
  std::vector<std::int64_t> deleted;
  for (int i = 0; i < 4; ++i) {
    auto step = RunSync(store->DeleteOlderThan(cutoff, 500));
    ASSERT_TRUE(step.ok()) << Describe(step);
    deleted.push_back(step->deleted);
  }
  EXPECT_EQ(deleted, (std::vector<std::int64_t>{500, 500, 200, 0}));

  RawConnection raw(path_);
  EXPECT_EQ(raw.Int("SELECT count(*) FROM messages WHERE user_id = 'old'"), 0);
  EXPECT_EQ(raw.Int("SELECT count(*) FROM messages WHERE user_id = 'new'"), 20);
  EXPECT_EQ(
      raw.Int("SELECT count(*) FROM messages WHERE timestamp < '" + FormatTimestamp(cutoff) + "'"),
      0);
}

TEST_F(SqliteRetentionTest, KeysAndOtherTablesAreNotTouched) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  InsertRaw("old", 5, kPeriod * 10);
  {
    RawConnection raw(path_);
    raw.Exec("CREATE TABLE api_key_usage (key_id TEXT, day TEXT, requests INTEGER)");
    raw.Exec("INSERT INTO api_key_usage VALUES ('key_1', '2000-01-01', 3)");
  }
  RetentionTask task(*store, Options(), nullptr);
  const RetentionRun run = task.RunOnce();
  ASSERT_FALSE(run.error) << run.error->message;
  EXPECT_EQ(run.deleted, 10);
  RawConnection raw(path_);
  EXPECT_EQ(raw.Int("SELECT count(*) FROM messages"), 0);
  EXPECT_EQ(raw.Int("SELECT count(*) FROM api_key_usage"), 1);
}

TEST_F(SqliteRetentionTest, HistoryReadsAfterDeletionShowOnlyTheKeptRows) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  // alice: two old turns then two recent ones; bob: only old ones; carol: only recent ones.
  for (int n = 0; n < 2; ++n) {
    ASSERT_TRUE(RunSync(store->AppendTurn(TurnAged("alice", n, kPeriod * 3))).ok());
    ASSERT_TRUE(RunSync(store->AppendTurn(TurnAged("bob", n, kPeriod * 3))).ok());
  }
  for (int n = 2; n < 4; ++n) {
    ASSERT_TRUE(RunSync(store->AppendTurn(TurnAged("alice", n, std::chrono::hours(1)))).ok());
    ASSERT_TRUE(RunSync(store->AppendTurn(TurnAged("carol", n, std::chrono::hours(1)))).ok());
  }
  // Reads fill the history cache with every row, the old ones included.
  ASSERT_EQ(Recent(*store, "alice").size(), 8u);
  ASSERT_EQ(Recent(*store, "alice", 2).size(), 2u);
  ASSERT_EQ(Recent(*store, "bob").size(), 4u);
  ASSERT_EQ(Recent(*store, "carol").size(), 4u);

  RetentionTask task(*store, Options(), nullptr);
  const RetentionRun run = task.RunOnce();
  ASSERT_FALSE(run.error) << run.error->message;
  EXPECT_EQ(run.deleted, 8);

  const std::vector<std::string> alice = {"prompt 2", "answer 2", "prompt 3", "answer 3"};
  EXPECT_EQ(Recent(*store, "alice"), alice);
  EXPECT_EQ(Recent(*store, "alice", 2), (std::vector<std::string>{"prompt 3", "answer 3"}));
  EXPECT_EQ(Recent(*store, "alice", 6), alice);
  EXPECT_EQ(Listed(*store, "alice"), alice);
  EXPECT_TRUE(Recent(*store, "bob").empty());
  EXPECT_TRUE(Listed(*store, "bob").empty());
  EXPECT_EQ(Recent(*store, "carol"), Listed(*store, "carol"));
  EXPECT_EQ(Recent(*store, "carol").size(), 4u);
}

TEST_F(SqliteRetentionTest, RunsGiveTheFreedPagesBackToTheFileSystem) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  InsertRaw("old", 2000, kPeriod * 2, 2000);  // ~8 MB past the cutoff
  InsertRaw("new", 5, std::chrono::hours(1));
  auto raw = std::make_unique<RawConnection>(path_);
  const std::int64_t pages_before = raw->Int("PRAGMA page_count");
  ASSERT_GT(pages_before, 1000);

  RetentionTask task(*store, Options(), nullptr);
  const RetentionRun run = task.RunOnce();
  ASSERT_FALSE(run.error) << run.error->message;
  EXPECT_EQ(run.deleted, 4000);
  EXPECT_EQ(run.free_pages, 0);
  EXPECT_GE(run.steps, 9u);

  EXPECT_EQ(raw->Int("PRAGMA freelist_count"), 0);
  EXPECT_LT(raw->Int("PRAGMA page_count"), pages_before / 10);
  EXPECT_EQ(raw->Int("SELECT count(*) FROM messages"), 10);
  EXPECT_EQ(raw->Column("PRAGMA integrity_check"), (std::vector<std::string>{"ok"}));
  // The file itself shrinks once the WAL is checkpointed whole (as the last connection to close
  // does).
  raw.reset();
  store->Close();
  EXPECT_LT(std::filesystem::file_size(path_),
            static_cast<std::uintmax_t>(pages_before) * 4096 / 10);
}

TEST_F(SqliteRetentionTest, AnOlderFileIsSwitchedToIncrementalAutoVacuumKeepingItsRows) {
  {
    RawConnection raw(path_);
    raw.Exec("PRAGMA auto_vacuum = NONE");
    raw.Exec("CREATE TABLE api_keys (id TEXT)");
    raw.Exec("INSERT INTO api_keys VALUES ('key_1')");
  }
  {
    auto store = OpenStore();  // migrates, but cannot change the mode of an existing file
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", 1))).ok());
  }
  auto before = ReadAutoVacuum(path_);
  ASSERT_TRUE(before.ok()) << Describe(before);
  ASSERT_TRUE(before->has_value());
  EXPECT_EQ(**before, AutoVacuum::kNone);

  auto enabled = EnableIncrementalVacuum(path_, std::chrono::seconds(5));
  ASSERT_TRUE(enabled.ok()) << Describe(enabled);
  auto after = ReadAutoVacuum(path_);
  ASSERT_TRUE(after.ok() && after->has_value());
  EXPECT_EQ(**after, AutoVacuum::kIncremental);

  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(Recent(*store, "alice"), (std::vector<std::string>{"prompt 1", "answer 1"}));
  RawConnection raw(path_);
  EXPECT_EQ(raw.Int("SELECT count(*) FROM api_keys"), 1);
}

TEST_F(SqliteRetentionTest, NoFileMeansNothingToSwitch) {
  auto mode = ReadAutoVacuum(path_);
  ASSERT_TRUE(mode.ok()) << Describe(mode);
  EXPECT_FALSE(mode->has_value());
  EXPECT_FALSE(std::filesystem::exists(path_));
}

TEST_F(SqliteRetentionTest, TurnsKeepCommittingWhileARunDeletes) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  InsertRaw("old", 3000, kPeriod * 2);
  std::atomic<bool> done{false};
  std::atomic<int> appended{0};
  std::thread writer([&] {
    for (int n = 0; !done.load() || n < 5; ++n) {
      if (RunSync(store->AppendTurn(MakeTurn("live", n))).ok()) appended.fetch_add(1);
    }
  });
  RetentionTask task(*store, Options(100), nullptr);
  const RetentionRun run = task.RunOnce();
  done.store(true);
  writer.join();
  ASSERT_FALSE(run.error) << run.error->message;
  EXPECT_EQ(run.deleted, 6000);
  EXPECT_GE(run.steps, 60u);
  RawConnection raw(path_);
  EXPECT_EQ(raw.Int("SELECT count(*) FROM messages WHERE user_id = 'old'"), 0);
  EXPECT_EQ(raw.Int("SELECT count(*) FROM messages WHERE user_id = 'live'"), 2 * appended.load());
}

void Rethrow(std::exception_ptr e) {
  if (e) std::rethrow_exception(e);
}

TEST_F(SqliteRetentionTest, AFailedStepFailsAloneAndTheTurnsBesideItCommit) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  InsertRaw("old", 5, kPeriod * 2);
  {
    RawConnection raw(path_);
    raw.Exec(
        "CREATE TRIGGER keep_messages BEFORE DELETE ON messages "
        "BEGIN SELECT RAISE(ABORT, 'deletion refused'); END");
  }
  // Another connection holds the write lock while the writer takes a first turn, so that the
  // turn and the step queued after it wait together and share the next transaction.
  auto lock = std::make_unique<RawConnection>(path_);
  lock->Exec("BEGIN IMMEDIATE");
  net::io_context io;
  std::optional<Status> first;
  std::optional<Status> appended;
  std::optional<Result<RetentionBatch>> step;
  net::co_spawn(io, testing::StoreResultIn(store->AppendTurn(MakeTurn("first", 1)), &first),
                Rethrow);
  net::co_spawn(io, testing::StoreResultIn(store->AppendTurn(MakeTurn("alice", 1)), &appended),
                Rethrow);
  net::co_spawn(io, testing::StoreResultIn(store->DeleteOlderThan(kNow - kPeriod, 500), &step),
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
  ASSERT_TRUE(appended.has_value() && step.has_value());
  EXPECT_TRUE(appended->ok()) << Describe(*appended);
  ASSERT_FALSE(step->ok());
  EXPECT_EQ(step->error().kind, ErrorKind::kStorage);
  EXPECT_NE(step->error().message.find("deletion refused"), std::string::npos)
      << step->error().message;
  RawConnection raw(path_);
  EXPECT_EQ(raw.Int("SELECT count(*) FROM messages WHERE user_id = 'old'"), 10);
  EXPECT_EQ(raw.Int("SELECT count(*) FROM messages WHERE user_id = 'alice'"), 2);
}

// ---- The task's thread ----

TEST(RetentionTask, RunsAtStartThenEveryIntervalUntilStopped) {
  ::staple::testing::MemoryConversationStore memory;
  for (int n = 0; n < 3; ++n) {
    Turn turn = TurnAged("old", n, kPeriod * 2);
    memory.Seed(turn.user_id, turn.prompt, turn.completion);
  }
  std::mutex mu;
  std::condition_variable cv;
  std::vector<RetentionRun> runs;
  RetentionOptions options = Options();
  options.interval = std::chrono::milliseconds(10);
  RetentionTask task(memory, options, [&](const RetentionRun& run) {
    std::lock_guard lock(mu);
    runs.push_back(run);
    cv.notify_all();
  });
  ASSERT_TRUE(task.Start().ok());
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return runs.size() >= 3; }));
  }
  task.Stop();
  // Seeded rows carry the epoch as their time: all older than the period.
  EXPECT_EQ(runs[0].deleted, 6);
  EXPECT_EQ(runs[1].deleted, 0);
  EXPECT_TRUE(memory.rows().empty());
}

TEST(RetentionTask, AFailedStepEndsTheRunWithItsError) {
  ::staple::testing::MemoryConversationStore memory;
  memory.Seed("old", "p", "a");
  memory.FailAppends(MakeError(ErrorKind::kStorage, "disk full"));
  RetentionTask task(memory, Options(), nullptr);
  const RetentionRun run = task.RunOnce();
  ASSERT_TRUE(run.error.has_value());
  EXPECT_EQ(run.error->message, "disk full");
  EXPECT_EQ(run.steps, 0u);
  EXPECT_EQ(memory.rows().size(), 2u);
}

TEST(RetentionTask, RefusesOptionsOutOfBounds) {
  ::staple::testing::MemoryConversationStore memory;
  RetentionOptions options = Options();
  options.period = std::chrono::seconds(0);
  RetentionTask task(memory, options, nullptr);
  EXPECT_FALSE(task.Start().ok());
  EXPECT_TRUE(task.RunOnce().error.has_value());
}

TEST(RetentionTask, TheInMemoryStoreKeepsRowsWithinThePeriod) {
  ::staple::testing::MemoryConversationStore memory;
  memory.Seed("old", "p", "a");  // the epoch
  Turn recent = TurnAged("new", 1, std::chrono::hours(1));
  ASSERT_TRUE(RunSync(memory.AppendTurn(recent)).ok());
  RetentionTask task(memory, Options(1), nullptr);
  const RetentionRun run = task.RunOnce();
  ASSERT_FALSE(run.error);
  EXPECT_EQ(run.deleted, 2);
  ASSERT_EQ(memory.rows().size(), 2u);
  EXPECT_EQ(memory.rows()[0].user_id, "new");
}

// ---- Online backup ----

class SqliteBackupTest : public SqliteRetentionTest {};

TEST_F(SqliteBackupTest, CopiesALiveDatabaseConsistently) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  InsertRaw("bulk", 3000, std::chrono::hours(1), 500);  // enough pages for many steps
  for (int n = 0; n < 20; ++n) ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("acked", n))).ok());

  // Turns keep committing during the copy.
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (int n = 0; !done.load(); ++n) (void)RunSync(store->AppendTurn(MakeTurn("during", n)));
  });
  BackupOptions options;
  options.source = path_;
  options.destination = dir_.File("copy.db");
  options.pages_per_step = 16;
  auto copied = BackupDatabase(options);
  done.store(true);
  writer.join();
  ASSERT_TRUE(copied.ok()) << Describe(copied);
  EXPECT_GT(copied->pages, 16 * 10);

  RawConnection copy(options.destination);
  EXPECT_EQ(copy.Column("PRAGMA integrity_check"), (std::vector<std::string>{"ok"}));
  EXPECT_EQ(copy.Int("SELECT count(*) FROM messages WHERE user_id = 'acked'"), 40);
  EXPECT_EQ(copy.Int("SELECT count(*) FROM messages WHERE user_id = 'bulk'"), 6000);
  // A snapshot: turns are whole (both rows or none).
  EXPECT_EQ(copy.Int("SELECT count(*) FROM messages WHERE user_id = 'during'") % 2, 0);
  // No temporary file is left beside it.
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir_.path())) {
    names.push_back(entry.path().filename().string());
  }
  for (const auto& name : names) EXPECT_EQ(name.find(".tmp-"), std::string::npos) << name;
}

TEST_F(SqliteBackupTest, NeverReplacesAnExistingFileWithoutOverwrite) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(RunSync(store->AppendTurn(MakeTurn("alice", 1))).ok());
  const std::string destination = dir_.File("copy.db");
  std::ofstream(destination) << "precious";

  BackupOptions options;
  options.source = path_;
  options.destination = destination;
  auto refused = BackupDatabase(options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().kind, ErrorKind::kInvalidArgument);
  EXPECT_NE(refused.error().message.find("already exists"), std::string::npos);
  std::string text;
  std::getline(std::ifstream(destination), text);
  EXPECT_EQ(text, "precious");

  options.overwrite = true;
  auto replaced = BackupDatabase(options);
  ASSERT_TRUE(replaced.ok()) << Describe(replaced);
  RawConnection copy(destination);
  EXPECT_EQ(copy.Int("SELECT count(*) FROM messages WHERE user_id = 'alice'"), 2);
}

TEST_F(SqliteBackupTest, AMissingSourceIsAClearError) {
  BackupOptions options;
  options.source = dir_.File("nothing.db");
  options.destination = dir_.File("copy.db");
  auto copied = BackupDatabase(options);
  ASSERT_FALSE(copied.ok());
  EXPECT_EQ(copied.error().kind, ErrorKind::kInvalidArgument);
  EXPECT_NE(copied.error().message.find("no SQLite database"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(options.destination));
}

// ---- PostgreSQL ----

TEST(PostgresRetention, StepsDeleteOnlyOldRowsAndReadsAgree) {
  PostgresStoreOptions options;
  options.url = FreshPostgresDatabase();
  auto opened = PostgresConversationStore::Open(options);
  ASSERT_TRUE(opened.ok()) << Describe(opened);
  auto& store = **opened;
  for (int n = 0; n < 4; ++n) {
    ASSERT_TRUE(RunSync(store.AppendTurn(TurnAged("alice", n, kPeriod * 2))).ok());
  }
  for (int n = 4; n < 6; ++n) {
    ASSERT_TRUE(RunSync(store.AppendTurn(TurnAged("alice", n, std::chrono::hours(1)))).ok());
  }
  const auto cutoff = kNow - kPeriod;
  std::vector<std::int64_t> deleted;
  for (int i = 0; i < 3; ++i) {
    auto step = RunSync(store.DeleteOlderThan(cutoff, 3));
    ASSERT_TRUE(step.ok()) << Describe(step);
    EXPECT_EQ(step->free_pages, 0);
    deleted.push_back(step->deleted);
  }
  EXPECT_EQ(deleted, (std::vector<std::int64_t>{3, 3, 2}));
  const std::vector<std::string> kept = {"prompt 4", "answer 4", "prompt 5", "answer 5"};
  EXPECT_EQ(Recent(store, "alice"), kept);
  EXPECT_EQ(Listed(store, "alice"), kept);
}

}  // namespace
}  // namespace staple::store
