#include "store/sqlite/sqlite_conversation_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <exception>
#include <filesystem>
#include <limits>
#include <optional>
#include <string_view>
#include <system_error>
#include <utility>

#include "store/db_conversation_store_impl.h"
#include "store/sqlite/history_cache.h"
#include "store/sqlite/sqlite_db.h"
#include "store/store_errors.h"

namespace staple::store {

using sqlite::Database;
using sqlite::Statement;
using sqlite::StatementReset;

namespace {

// ---- Schema ----
//
// Every schema change is one migration that moves PRAGMA user_version from `version - 1` to
// `version`. A migration runs inside the same IMMEDIATE transaction as the version bump, so a
// crash or a concurrent opener never sees a half-migrated file.

// The seed's columns, which every `messages` table must already have.
constexpr std::array<std::string_view, 5> kSeedColumns = {"id", "user_id", "timestamp", "role",
                                                          "content"};

struct AddedColumn {
  std::string_view name;
  std::string_view type;
};

// Staple's columns, added to a seed-era table by ALTER TABLE.
constexpr std::array<AddedColumn, 5> kStapleColumns = {{{"request_id", "TEXT"},
                                                        {"model", "TEXT"},
                                                        {"prompt_tokens", "INTEGER"},
                                                        {"completion_tokens", "INTEGER"},
                                                        {"latency_ms", "INTEGER"}}};

constexpr std::string_view kCreateMessages = R"sql(
CREATE TABLE messages (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  user_id TEXT NOT NULL,
  timestamp DATETIME NOT NULL,
  role TEXT NOT NULL,
  content TEXT NOT NULL,
  request_id TEXT,
  model TEXT,
  prompt_tokens INTEGER,
  completion_tokens INTEGER,
  latency_ms INTEGER
))sql";

Result<std::vector<std::string>> TableColumns(Database& db, std::string_view table) {
  auto info = db.Prepare("SELECT name FROM pragma_table_info(?1)");
  if (!info) return info.error();
  if (auto bound = info->BindText(1, table); !bound) return bound.error();
  std::vector<std::string> columns;
  for (;;) {
    auto row = info->Step();
    if (!row) return row.error();
    if (!*row) break;
    columns.push_back(info->ColumnText(0));
  }
  return columns;
}

// "table", "view", "index"… or empty when no schema object has that name.
Result<std::string> SchemaObjectType(Database& db, std::string_view name) {
  auto query = db.Prepare("SELECT type FROM sqlite_master WHERE name = ?1");
  if (!query) return query.error();
  if (auto bound = query->BindText(1, name); !bound) return bound.error();
  auto row = query->Step();
  if (!row) return row.error();
  if (!*row) return std::string();
  return query->ColumnText(0);
}

// Version 1: the `messages` table with Staple's columns, its (user_id, id) index and the seed's
// `message` view. A seed-era file (a five-column `messages` table, user_version 0) keeps its rows
// and gains the new columns.
Status MigrateToVersion1(Database& db) {
  auto messages_type = SchemaObjectType(db, "messages");
  if (!messages_type) return messages_type.error();
  if (messages_type->empty()) {
    if (auto created = db.Exec(kCreateMessages); !created) return created;
  } else if (*messages_type != "table") {
    return StorageFailure("`messages` is a " + *messages_type + ", expected a table");
  } else {
    auto columns = TableColumns(db, "messages");
    if (!columns) return columns.error();
    const auto has = [&](std::string_view name) {
      return std::find(columns->begin(), columns->end(), name) != columns->end();
    };
    for (std::string_view name : kSeedColumns) {
      if (!has(name)) {
        return StorageFailure("table `messages` has no column `" + std::string(name) +
                              "`; it is not a conversation table this build can migrate");
      }
    }
    for (const AddedColumn& column : kStapleColumns) {
      if (has(column.name)) continue;
      std::string sql = "ALTER TABLE messages ADD COLUMN ";
      sql.append(column.name).append(" ").append(column.type);
      if (auto added = db.Exec(sql); !added) return added;
    }
  }
  if (auto indexed =
          db.Exec("CREATE INDEX IF NOT EXISTS messages_user_id_id ON messages (user_id, id)");
      !indexed) {
    return indexed;
  }
  auto view_type = SchemaObjectType(db, "message");
  if (!view_type) return view_type.error();
  if (view_type->empty()) {
    return db.Exec(
        "CREATE VIEW message AS SELECT id, user_id, timestamp, role, content FROM messages");
  }
  if (*view_type != "view") {
    return StorageFailure("`message` is a " + *view_type + ", expected the view over `messages`");
  }
  return Ok();
}

// Version 2: conversations belong to an owner (a client key's id; "" for none, which every row of
// an older database gets), and history reads go through an (owner, user_id, id) index instead of
// (user_id, id), so one key's rows never lengthen another key's reads.
Status MigrateToVersion2(Database& db) {
  auto columns = TableColumns(db, "messages");
  if (!columns) return columns.error();
  if (std::find(columns->begin(), columns->end(), "owner") == columns->end()) {
    if (auto added = db.Exec("ALTER TABLE messages ADD COLUMN owner TEXT NOT NULL DEFAULT ''");
        !added) {
      return added;
    }
  }
  if (auto indexed = db.Exec(
          "CREATE INDEX IF NOT EXISTS messages_owner_user_id_id ON messages (owner, user_id, id)");
      !indexed) {
    return indexed;
  }
  return db.Exec("DROP INDEX IF EXISTS messages_user_id_id");
}

// The schema version this build creates, migrates to and understands.
constexpr std::int64_t kSchemaVersion = 2;

struct Migration {
  std::int64_t version;  // the user_version after this migration
  Status (*apply)(Database&);
};

constexpr std::array<Migration, 2> kMigrations = {
    {{1, &MigrateToVersion1}, {2, &MigrateToVersion2}}};
static_assert(kMigrations.back().version == kSchemaVersion);

Status MigrateInTransaction(Database& db) {
  auto version = db.QueryInt("PRAGMA user_version");
  if (!version) return version.error();
  if (*version > kSchemaVersion) {
    return StorageFailure("schema version " + std::to_string(*version) +
                          " is newer than this build supports (" + std::to_string(kSchemaVersion) +
                          "); refusing to open it");
  }
  for (const Migration& migration : kMigrations) {
    if (migration.version <= *version) continue;
    if (auto applied = migration.apply(db); !applied) {
      return Context("migration to schema version " + std::to_string(migration.version),
                     applied.error());
    }
    if (auto bumped = db.Exec("PRAGMA user_version = " + std::to_string(migration.version));
        !bumped) {
      return bumped;
    }
  }
  return Ok();
}

Status Migrate(Database& db) {
  // IMMEDIATE takes the write lock before reading user_version, so two processes opening the
  // same new file migrate it once.
  if (auto begun = db.Exec("BEGIN IMMEDIATE"); !begun) return begun;
  Status migrated = MigrateInTransaction(db);
  if (!migrated) {
    (void)db.Exec("ROLLBACK");
    return migrated;
  }
  return db.Exec("COMMIT");
}

// One row that the write probe updates: readiness proves the database accepts writes without
// touching conversation rows. Created apart from the versioned migrations (it is not conversation
// data, and a file without it works with older builds).
constexpr std::string_view kCreateHealth =
    "CREATE TABLE IF NOT EXISTS staple_health (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "checked_at TEXT NOT NULL); "
    "INSERT OR IGNORE INTO staple_health (id, checked_at) VALUES (1, '')";

constexpr std::string_view kProbeHealth =
    "UPDATE staple_health SET checked_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = 1";

// Failures after which the writer's connection is closed and opened again before its next write:
// the file became read-only to it, the disk or a file system failed or filled up, or a file could
// not be opened. A fresh connection picks up restored permissions and a recreated WAL or -shm file.
bool CallsForReopen(int code) {
  switch (code & 0xff) {
    case SQLITE_READONLY:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CANTOPEN:
      return true;
    default:
      return false;
  }
}

// `reason` with a hint at the usual cause when `code` says the file could not be written.
std::string WithPermissionHint(std::string reason, int code, const std::string& path) {
  if ((code & 0xff) == SQLITE_READONLY || (code & 0xff) == SQLITE_CANTOPEN) {
    const std::filesystem::path parent = std::filesystem::path(path).parent_path();
    reason += " (Staple must be able to write the file and its directory '" +
              (parent.empty() ? std::string(".") : parent.string()) +
              "', where SQLite creates its -wal and -shm files: check their permissions and "
              "owner, and that the file system is not mounted read-only)";
  }
  return reason;
}

// Settings every connection gets once, right after opening.
Status ConfigureConnection(Database& db, const SqliteStoreOptions& options) {
  db.SetBusyTimeout(static_cast<int>(std::min<std::chrono::milliseconds::rep>(
      options.busy_timeout.count(), std::numeric_limits<int>::max())));
  if (auto ok = db.Exec("PRAGMA mmap_size = " + std::to_string(options.mmap_size)); !ok) return ok;
  if (options.page_cache_bytes == 0) return Ok();
  // A negative cache_size is KiB rather than pages.
  const std::size_t kib = std::max<std::size_t>(1, options.page_cache_bytes / 1024);
  return db.Exec("PRAGMA cache_size = -" + std::to_string(kib));
}

constexpr std::string_view kSelectColumns =
    "SELECT id, user_id, timestamp, role, content, request_id, model, prompt_tokens, "
    "completion_tokens, latency_ms FROM messages ";

StoredMessage ReadMessage(const Statement& row) {
  StoredMessage message;
  message.id = row.ColumnInt64(0);
  message.user_id = row.ColumnText(1);
  message.timestamp = row.ColumnText(2);
  message.role = row.ColumnText(3);
  message.content = row.ColumnText(4);
  message.request_id = row.ColumnText(5);
  message.model = row.ColumnText(6);
  message.prompt_tokens = row.ColumnOptionalInt64(7);
  message.completion_tokens = row.ColumnOptionalInt64(8);
  message.latency_ms = row.ColumnOptionalInt64(9);
  return message;
}

// The HistoryCache key of a conversation (stored text holds no NUL, see ToStorableText).
std::string CacheKey(const std::string& owner, const std::string& user_id) {
  std::string key;
  key.reserve(owner.size() + 1 + user_id.size());
  key.append(owner).push_back('\0');
  key.append(user_id);
  return key;
}

// HistoryCache rows per conversation: more than any default context window (100 messages). Its
// memory is SqliteStoreOptions::history_cache_bytes.
constexpr std::size_t kCachedRowsPerConversation = 256;

// A row as InsertRow stores it and ReadMessage reads it back (empty request_id and model are NULL,
// which reads back as empty).
StoredMessage RowOf(const Turn& turn, std::int64_t id, const std::string& timestamp,
                    std::string_view role, const std::string& content,
                    std::optional<std::int64_t> prompt_tokens,
                    std::optional<std::int64_t> completion_tokens,
                    std::optional<std::int64_t> latency_ms) {
  StoredMessage message;
  message.id = id;
  message.user_id = turn.user_id;
  message.timestamp = timestamp;
  message.role = std::string(role);
  message.content = content;
  message.request_id = turn.request_id;
  message.model = turn.model;
  message.prompt_tokens = prompt_tokens;
  message.completion_tokens = completion_tokens;
  message.latency_ms = latency_ms;
  return message;
}

// Pages one retention step gives back to the file system at most (1 MiB of 4 KiB pages): enough
// to keep up with the rows a step deletes, short enough not to hold the writer.
constexpr std::string_view kIncrementalVacuum = "PRAGMA incremental_vacuum(256)";

// SQLite's LIMIT takes a signed 64-bit value; a negative one means "no limit".
std::int64_t SqlLimit(std::size_t n) {
  constexpr auto kMax = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
  return n >= kMax ? -1 : static_cast<std::int64_t>(n);
}

}  // namespace

// ---- Writer: the read-write connection, used only by the writer thread after Open() ----

namespace sqlite {

class Writer {
 public:
  // Opens the read-write connection, migrates the schema and proves that the file accepts a write:
  // a file SQLite could only open read-only (it falls back to that silently when the file or its
  // directory is not writable) is an error naming the path and the cause.
  static Result<std::unique_ptr<Writer>> Open(const SqliteStoreOptions& options) {
    auto writer = Connect(options, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, /*hint=*/true);
    if (!writer) return writer.error();
    Database& db = (*writer)->db_;
    if (auto ok = Migrate(db); !ok) {
      return Context("cannot migrate SQLite database '" + options.path + "'",
                     MakeError(ok.error().kind,
                               WithPermissionHint(ok.error().message, sqlite3_errcode(db.handle()),
                                                  options.path)));
    }
    // Both statements are idempotent, each in a transaction of its own.
    if (auto ok = db.Exec(kCreateHealth); !ok) {
      return StorageFailure(
          "cannot write SQLite database '" + options.path + "': " +
          WithPermissionHint(ok.error().message, sqlite3_errcode(db.handle()), options.path));
    }
    if (auto ok = (*writer)->PrepareStatements(); !ok) {
      return Context("cannot prepare statements on SQLite database '" + options.path + "'",
                     ok.error());
    }
    // A write that reaches the file (the migration may have had nothing to write).
    if (auto ok = (*writer)->Probe(); !ok) {
      return StorageFailure(
          "cannot write SQLite database '" + options.path +
          "': " + WithPermissionHint(ok.error().message, (*writer)->failure_code_, options.path));
    }
    return writer;
  }

  // One tiny write transaction (the staple_health row), re-opening the connection first when an
  // earlier failure called for it.
  Status Probe() {
    if (auto reopened = ReopenIfNeeded(); !reopened) return reopened;
    return Transaction([this] { return Run(probe_); });
  }

  // Runs `work` (returning Status) in one IMMEDIATE transaction, rolled back when anything fails.
  // A failure that calls for a fresh connection marks it for ReopenIfNeeded.
  template <typename Work>
  Status Transaction(Work work) {
    Status status = Begin();
    if (status) {
      try {
        status = work();
      } catch (const std::exception& e) {
        status = MakeError(ErrorKind::kInternal, e.what());
      }
    }
    if (status) status = Commit();
    if (!status) {
      // Read before the rollback, which sets the connection's error code again.
      failure_code_ = sqlite3_errcode(db_.handle());
      if (CallsForReopen(failure_code_)) reopen_ = true;
      Rollback();
    }
    return status;
  }

  // Closes the connection and opens it again when the last failure called for it. Fails, keeping
  // the need, while the file still cannot be opened for writing; the writer thread's retries
  // (DbWorkers) space the attempts out.
  Status ReopenIfNeeded() {
    if (!reopen_) return Ok();
    // Without SQLITE_OPEN_CREATE: a file that vanished must not come back empty.
    auto fresh = Connect(options_, SQLITE_OPEN_READWRITE, /*hint=*/false);
    if (!fresh) return fresh.error();
    if (auto ok = (*fresh)->PrepareStatements(); !ok) {
      return Context("cannot prepare statements on SQLite database '" + options_.path + "'",
                     ok.error());
    }
    Replace(std::move(**fresh));
    reopen_ = false;
    return Ok();
  }

  Status Begin() { return Run(begin_); }
  Status Commit() { return Run(commit_); }
  void Rollback() {
    // After a failed COMMIT SQLite may already have rolled back; then there is nothing to do.
    if (sqlite3_get_autocommit(db_.handle()) == 0) (void)Run(rollback_);
  }

  // Inserts both rows of `turn`; on success `inserted` (when given) holds them as a read would
  // return them, ids included.
  Status InsertTurn(const Turn& turn, std::vector<StoredMessage>* inserted) {
    const std::string prompt_time = FormatTimestamp(turn.prompt_time);
    if (auto ok = InsertRow(turn, prompt_time, "user", turn.prompt, std::nullopt, std::nullopt,
                            std::nullopt);
        !ok) {
      return ok;
    }
    const std::int64_t prompt_id = sqlite3_last_insert_rowid(db_.handle());
    const std::string completion_time = FormatTimestamp(turn.completion_time);
    if (auto ok = InsertRow(turn, completion_time, "assistant", turn.completion, turn.prompt_tokens,
                            turn.completion_tokens, turn.latency_ms);
        !ok) {
      return ok;
    }
    if (inserted != nullptr) {
      const std::int64_t completion_id = sqlite3_last_insert_rowid(db_.handle());
      inserted->clear();
      inserted->push_back(RowOf(turn, prompt_id, prompt_time, "user", turn.prompt, std::nullopt,
                                std::nullopt, std::nullopt));
      inserted->push_back(RowOf(turn, completion_id, completion_time, "assistant", turn.completion,
                                turn.prompt_tokens, turn.completion_tokens, turn.latency_ms));
    }
    return Ok();
  }

  Result<std::int64_t> DeleteUser(const std::string& owner, const std::string& user_id) {
    StatementReset reset(delete_);
    if (auto ok = delete_.BindText(1, user_id); !ok) return ok.error();
    if (auto ok = delete_.BindText(2, owner); !ok) return ok.error();
    if (auto done = delete_.Step(); !done) return done.error();
    return db_.Changes();
  }

  // One retention step inside the batch's transaction, under a savepoint: a failed step is undone
  // alone and the turns committed beside it are not lost with it.
  Result<RetentionBatch> DeleteOldest(const std::string& cutoff, std::size_t max_rows) {
    if (auto ok = db_.Exec("SAVEPOINT retention"); !ok) return ok.error();
    auto batch = DeleteOldestInSavepoint(cutoff, max_rows);
    if (!batch) (void)db_.Exec("ROLLBACK TO retention");
    if (auto ok = db_.Exec("RELEASE retention"); !ok && batch) return ok.error();
    return batch;
  }

 private:
  Writer(Database db, const SqliteStoreOptions& options) : options_(options), db_(std::move(db)) {}

  // Opens and configures a connection (statements not prepared). A connection SQLite could only
  // open read-only is refused. `hint`: a failure to write names the likely cause (at start-up;
  // later failures are reported briefly, through /readyz).
  static Result<std::unique_ptr<Writer>> Connect(const SqliteStoreOptions& options, int flags,
                                                 bool hint) {
    auto db = Database::Open(options.path, flags);
    if (!db) return db.error();
    if (sqlite3_db_readonly(db->handle(), "main") == 1) {
      std::string message = "SQLite database '" + options.path + "' could only be opened read-only";
      if (hint) message = WithPermissionHint(std::move(message), SQLITE_READONLY, options.path);
      return StorageFailure(std::move(message));
    }
    auto writer = std::unique_ptr<Writer>(new Writer(std::move(db).value(), options));
    if (auto ok = writer->Configure(options); !ok) {
      std::string reason = ok.error().message;
      if (hint) {
        reason = WithPermissionHint(std::move(reason), sqlite3_errcode(writer->db_.handle()),
                                    options.path);
      }
      return StorageFailure("cannot open SQLite database '" + options.path + "': " + reason);
    }
    return writer;
  }

  // Takes `fresh`'s connection and statements; this one's statements are finalized before its
  // connection closes.
  void Replace(Writer&& fresh) {
    for (const StatementSql& item : kStatements) this->*item.statement = Statement();
    db_ = std::move(fresh.db_);
    for (const StatementSql& item : kStatements) {
      this->*item.statement = std::move(fresh.*item.statement);
    }
  }

  // Deletes the rows older than `cutoff` among the `max_rows` oldest, then moves at most
  // kIncrementalVacuum's pages from the end of the file into free ones and truncates it (a no-op
  // unless auto_vacuum is INCREMENTAL).
  Result<RetentionBatch> DeleteOldestInSavepoint(const std::string& cutoff, std::size_t max_rows) {
    RetentionBatch batch;
    {
      StatementReset reset(delete_oldest_);
      if (auto ok = delete_oldest_.BindText(1, cutoff); !ok) return ok.error();
      if (auto ok = delete_oldest_.BindInt64(2, SqlLimit(max_rows)); !ok) return ok.error();
      if (auto done = delete_oldest_.Step(); !done) return done.error();
      batch.deleted = db_.Changes();
    }
    if (auto ok = db_.Exec(kIncrementalVacuum); !ok) return ok.error();
    StatementReset reset(free_pages_);
    auto row = free_pages_.Step();
    if (!row) return row.error();
    if (*row) batch.free_pages = free_pages_.ColumnInt64(0);
    return batch;
  }

  Status Configure(const SqliteStoreOptions& options) {
    if (auto ok = ConfigureConnection(db_, options); !ok) return ok;
    // The first statement that reads the file: a non-database file fails here. A new file gets
    // incremental auto-vacuum, so that retention can give freed pages back to the file system;
    // it must come before anything (the switch to WAL included) writes the file's first page, and
    // on an existing file it changes nothing (see EnableIncrementalVacuum).
    if (auto ok = db_.Exec("PRAGMA auto_vacuum = INCREMENTAL"); !ok) return ok;
    auto mode = db_.QueryText("PRAGMA journal_mode = WAL");
    if (!mode) return mode.error();
    if (*mode != "wal")
      return StorageFailure("cannot switch to WAL journal mode (got " + *mode + ")");
    const char* synchronous = options.synchronous == SqliteSynchronous::kFull ? "FULL" : "NORMAL";
    if (auto ok = db_.Exec(std::string("PRAGMA synchronous = ") + synchronous); !ok) return ok;
    return db_.Exec("PRAGMA foreign_keys = ON");
  }

  Status PrepareStatements() {
    for (const StatementSql& item : kStatements) {
      auto statement = db_.Prepare(item.sql);
      if (!statement) return statement.error();
      this->*item.statement = std::move(statement).value();
    }
    return Ok();
  }

  static Status Run(Statement& statement) {
    StatementReset reset(statement);
    auto done = statement.Step();
    if (!done) return done.error();
    return Ok();
  }

  Status InsertRow(const Turn& turn, const std::string& timestamp, std::string_view role,
                   const std::string& content, std::optional<std::int64_t> prompt_tokens,
                   std::optional<std::int64_t> completion_tokens,
                   std::optional<std::int64_t> latency_ms) {
    StatementReset reset(insert_);
    const std::array<Status, 10> bound = {
        insert_.BindText(1, turn.user_id),
        insert_.BindText(2, timestamp),
        insert_.BindText(3, role),
        insert_.BindText(4, content),
        insert_.BindTextOrNull(5, turn.request_id),
        insert_.BindTextOrNull(6, turn.model),
        insert_.BindInt64OrNull(7, prompt_tokens),
        insert_.BindInt64OrNull(8, completion_tokens),
        insert_.BindInt64OrNull(9, latency_ms),
        insert_.BindText(10, turn.owner),
    };
    for (const Status& status : bound) {
      if (!status) return status;
    }
    auto done = insert_.Step();
    if (!done) return done.error();
    return Ok();
  }

  const SqliteStoreOptions options_;
  // Statements are declared after the connection so that they are finalized before it closes.
  Database db_;
  Statement begin_;
  Statement commit_;
  Statement rollback_;
  Statement insert_;
  Statement delete_;
  Statement probe_;
  // Set by a failure that calls for a fresh connection, cleared by ReopenIfNeeded.
  bool reopen_ = false;
  // SQLite's error code of the last failed transaction.
  int failure_code_ = SQLITE_OK;
  Statement delete_oldest_;
  Statement free_pages_;

  // Every prepared statement of the connection: PrepareStatements prepares them all and Replace
  // moves them all to a fresh connection.
  struct StatementSql {
    Statement Writer::*statement;
    std::string_view sql;
  };
  static constexpr std::array<StatementSql, 8> kStatements = {{
      {&Writer::begin_, "BEGIN IMMEDIATE"},
      {&Writer::commit_, "COMMIT"},
      {&Writer::rollback_, "ROLLBACK"},
      {&Writer::insert_,
       "INSERT INTO messages (user_id, timestamp, role, content, request_id, model, "
       "prompt_tokens, completion_tokens, latency_ms, owner) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "
       "?8, ?9, ?10)"},
      {&Writer::delete_, "DELETE FROM messages WHERE owner = ?2 AND user_id = ?1"},
      {&Writer::probe_, kProbeHealth},
      // The oldest rows by id come from the table's own b-tree (a LIMIT on rowid order); the
      // deletion then finds each by its rowid.
      {&Writer::delete_oldest_,
       "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?2) AND "
       "timestamp < ?1"},
      {&Writer::free_pages_, "PRAGMA freelist_count"},
  }};
};

// ---- Reader: one read-only connection, used only by its reader thread after Open() ----

class Reader {
 public:
  static Result<std::unique_ptr<Reader>> Open(const SqliteStoreOptions& options) {
    auto db = Database::Open(options.path, SQLITE_OPEN_READONLY);
    if (!db) return db.error();
    auto reader = std::unique_ptr<Reader>(new Reader(std::move(db).value()));
    if (auto ok = reader->Prepare(options); !ok) {
      return Context("cannot open SQLite database '" + options.path + "' for reading", ok.error());
    }
    return reader;
  }

  Result<std::vector<StoredMessage>> Recent(const std::string& owner, const std::string& user_id,
                                            std::size_t max, HistoryCache& cache) {
    // With a cached window, its row count and newest id come from the (owner, user_id, id) index
    // alone (a few pages); they decide whether the cached rows are the stored ones (see
    // HistoryCache).
    const std::string key = CacheKey(owner, user_id);
    if (const auto oldest = cache.OldestId(key)) {
      StatementReset reset(window_);
      if (auto ok = window_.BindText(1, user_id); !ok) return ok.error();
      if (auto ok = window_.BindInt64(2, *oldest); !ok) return ok.error();
      if (auto ok = window_.BindText(3, owner); !ok) return ok.error();
      auto row = window_.Step();
      if (!row) return Context("database read failed", row.error());
      if (*row) {
        auto cached = cache.Get(key, *oldest, window_.ColumnInt64(0), window_.ColumnInt64(1), max);
        if (cached) return std::move(*cached);
      }
    }
    auto messages = ReadRecent(owner, user_id, max);
    // Fewer rows than the limit: the read saw the whole conversation.
    if (messages) cache.Put(key, *messages, max == 0 || messages->size() < max);
    return messages;
  }

  Result<std::vector<StoredMessage>> ReadRecent(const std::string& owner,
                                                const std::string& user_id, std::size_t max) {
    // Newest first with a LIMIT uses the (owner, user_id, id) index backwards; the page is then
    // reversed to the oldest-first order callers want.
    StatementReset reset(recent_);
    if (auto ok = recent_.BindText(1, user_id); !ok) return ok.error();
    if (auto ok = recent_.BindText(3, owner); !ok) return ok.error();
    if (auto ok = recent_.BindInt64(2, max == 0 ? -1 : SqlLimit(max)); !ok) return ok.error();
    std::vector<StoredMessage> messages;
    for (;;) {
      auto row = recent_.Step();
      if (!row) return Context("database read failed", row.error());
      if (!*row) break;
      messages.push_back(ReadMessage(recent_));
    }
    std::reverse(messages.begin(), messages.end());
    return messages;
  }

  Result<MessagePage> List(const std::string& owner, const std::string& user_id,
                           std::int64_t after_id, std::size_t limit) {
    // One row more than asked tells whether another page exists.
    StatementReset reset(list_);
    const std::int64_t sql_limit =
        SqlLimit(limit == std::numeric_limits<std::size_t>::max() ? limit : limit + 1);
    if (auto ok = list_.BindText(1, user_id); !ok) return ok.error();
    if (auto ok = list_.BindInt64(2, after_id); !ok) return ok.error();
    if (auto ok = list_.BindInt64(3, sql_limit); !ok) return ok.error();
    if (auto ok = list_.BindText(4, owner); !ok) return ok.error();
    MessagePage page;
    for (;;) {
      auto row = list_.Step();
      if (!row) return Context("database read failed", row.error());
      if (!*row) break;
      if (page.messages.size() == limit) {
        page.has_more = true;
        break;
      }
      page.messages.push_back(ReadMessage(list_));
    }
    return page;
  }

  Status Ping() {
    StatementReset reset(ping_);
    auto row = ping_.Step();
    if (!row) return Context("database read failed", row.error());
    return Ok();
  }

 private:
  explicit Reader(Database db) : db_(std::move(db)) {}

  Status Prepare(const SqliteStoreOptions& options) {
    if (auto ok = ConfigureConnection(db_, options); !ok) return ok;
    auto recent = db_.Prepare(std::string(kSelectColumns) +
                              "WHERE owner = ?3 AND user_id = ?1 ORDER BY id DESC LIMIT ?2");
    if (!recent) return recent.error();
    recent_ = std::move(recent).value();
    auto window = db_.Prepare(
        "SELECT count(*), max(id) FROM messages WHERE owner = ?3 AND user_id = ?1 AND id >= ?2");
    if (!window) return window.error();
    window_ = std::move(window).value();
    auto list =
        db_.Prepare(std::string(kSelectColumns) +
                    "WHERE owner = ?4 AND user_id = ?1 AND id > ?2 ORDER BY id ASC LIMIT ?3");
    if (!list) return list.error();
    list_ = std::move(list).value();
    auto ping = db_.Prepare("SELECT 1 FROM messages LIMIT 1");
    if (!ping) return ping.error();
    ping_ = std::move(ping).value();
    return Ok();
  }

  Database db_;
  Statement window_;
  Statement recent_;
  Statement list_;
  Statement ping_;
};

}  // namespace sqlite

// ---- The back end of SqliteConversationStore (see DbConversationStore) ----

// One queued write: a turn to insert, a conversation to delete or a retention step, and what it
// did.
struct SqliteWrite {
  std::optional<Turn> turn;
  std::optional<std::string> retention_cutoff;  // a retention step: delete rows older than this
  std::size_t retention_rows = 0;               // among this many oldest rows
  Result<RetentionBatch> retained = RetentionBatch{};
  std::string delete_owner;
  std::string delete_user_id;
  // Filled inside the batch, read by Appended and Deleted on the writer thread.
  std::vector<StoredMessage> inserted;
  std::int64_t deleted = 0;
};

class SqliteBackend : public BackendTypes<sqlite::Writer, sqlite::Reader, SqliteWrite> {
 public:
  static constexpr std::string_view kName = "SQLite";

  explicit SqliteBackend(std::size_t history_cache_bytes)
      : history_(kCachedRowsPerConversation, history_cache_bytes) {}

  static Result<OpenedBackend<SqliteBackend>> Open(const SqliteStoreOptions& options) {
    if (options.path.empty() || options.path == ":memory:") {
      return MakeError(ErrorKind::kInvalidArgument,
                       "SQLite database path must name a file, got '" + options.path + "'");
    }
    if (options.busy_timeout.count() < 0 || options.mmap_size < 0 ||
        options.history_cache_bytes == 0) {
      return MakeError(ErrorKind::kInvalidArgument,
                       "SQLite store options need non-negative busy_timeout and mmap_size and a "
                       "positive history_cache_bytes");
    }
    const std::filesystem::path parent = std::filesystem::path(options.path).parent_path();
    if (!parent.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(parent, ec);
      if (ec) {
        return StorageFailure("cannot create directory '" + parent.string() +
                              "' for SQLite database '" + options.path + "': " + ec.message());
      }
    }
    // The writer creates and migrates the schema first; readers open read-only afterwards.
    OpenedBackend<SqliteBackend> opened;
    auto writer = Writer::Open(options);
    if (!writer) return writer.error();
    opened.writer = std::move(writer).value();
    for (std::size_t i = 0; i < options.reader_threads; ++i) {
      auto reader = Reader::Open(options);
      if (!reader) return reader.error();
      opened.readers.push_back(std::move(reader).value());
    }
    opened.backend = std::make_unique<SqliteBackend>(options.history_cache_bytes);
    return opened;
  }

  // One IMMEDIATE transaction, rolled back when any operation fails. SQLite has no deadline of its
  // own: a lock held by another process costs at most busy_timeout per statement.
  static Status RunBatch(Writer& writer, std::span<WriteOp* const> ops, Deadline) {
    if (auto reopened = writer.ReopenIfNeeded(); !reopened) return reopened;
    return writer.Transaction([&]() -> Status {
      for (WriteOp* op : ops) {
        if (op->turn) {
          if (auto ok = writer.InsertTurn(*op->turn, &op->inserted); !ok) return ok;
        } else if (op->retention_cutoff) {
          // Its failure is its own (see DeleteOldest): the batch goes on.
          op->retained = writer.DeleteOldest(*op->retention_cutoff, op->retention_rows);
        } else {
          auto deleted = writer.DeleteUser(op->delete_owner, op->delete_user_id);
          if (!deleted) return deleted.error();
          op->deleted = *deleted;
        }
      }
      return Ok();
    });
  }

  static Status Probe(Writer& writer, Deadline) { return writer.Probe(); }

  WriteOp AppendOp(Turn turn) {
    WriteOp op;
    op.turn = std::move(turn);
    return op;
  }

  Status Appended(const Status& committed, WriteOp& op) {
    // Before the caller resumes, so that its next read of the conversation finds the turn there;
    // also when the caller stopped waiting, since the turn is committed all the same.
    if (committed && !op.inserted.empty() && op.turn) {
      history_.Append(CacheKey(op.turn->owner, op.turn->user_id), std::move(op.inserted));
    }
    return committed;
  }

  WriteOp DeleteOp(std::string owner, std::string user_id) {
    WriteOp op;
    op.delete_owner = std::move(owner);
    op.delete_user_id = std::move(user_id);
    return op;
  }

  Result<std::int64_t> Deleted(const Status& committed, WriteOp& op) {
    if (!committed) return committed.error();
    history_.Erase(CacheKey(op.delete_owner, op.delete_user_id));
    return op.deleted;
  }

  WriteOp RetentionOp(std::string cutoff_timestamp, std::size_t max_rows) {
    WriteOp op;
    op.retention_cutoff = std::move(cutoff_timestamp);
    op.retention_rows = max_rows;
    return op;
  }

  // The history cache needs no update: a deletion changes the row count that validates every
  // entry holding a deleted row (see HistoryCache), and entries whose rows all remain stay right.
  Result<RetentionBatch> Retained(const Status& committed, WriteOp& op) {
    if (!committed) return committed.error();
    if (!op.retained) return Context("retention step failed", op.retained.error());
    return op.retained;
  }

  Result<std::vector<StoredMessage>> Recent(Reader& reader, Deadline, const std::string& owner,
                                            const std::string& user_id, std::size_t max_messages) {
    return reader.Recent(owner, user_id, max_messages, history_);
  }

  Result<MessagePage> List(Reader& reader, Deadline, const std::string& owner,
                           const std::string& user_id, std::int64_t after_id, std::size_t limit) {
    return reader.List(owner, user_id, after_id, limit);
  }

  Status Ping(Reader& reader, Deadline) { return reader.Ping(); }

 private:
  // Shared by the writer (appends committed turns) and the readers; thread-safe.
  HistoryCache history_;
};

template class DbConversationStore<SqliteBackend, SqliteStoreOptions>;

}  // namespace staple::store
