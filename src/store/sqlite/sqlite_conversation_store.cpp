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

// Version 3: the state of the Responses and Conversations APIs, in three tables of their own
// (`messages` is unchanged). Every row belongs to an owner, and every lookup names it first.
//
// `responses`: one row per stored response, its JSON in `body`; `previous_response_id` links a
// chain (followed backwards by ResponseChain's recursive query through the primary key).
// `conversations`: one row per conversation, its metadata object in `metadata`.
// `items`: every item, once. An item of a response has its `response_id` (and `output` 1 for an
// output item); an item of a conversation has its `conversation_id`; a response stored in a
// conversation gives its items both, so one row serves both listings. `seq` numbers items in the
// order they were stored (AUTOINCREMENT: never reused, so a deleted item's number never comes
// back). Item ids are not unique: a client may send the same item in several requests.
// Each listing reads one partial index: (owner, response_id, output, seq) for a response's input
// or output items and for the items of a chain, (owner, conversation_id, seq) for a conversation's;
// the rows where the column is NULL are left out of the index.
constexpr std::string_view kCreateResponsesState = R"sql(
CREATE TABLE responses (
  owner TEXT NOT NULL,
  id TEXT NOT NULL,
  conversation_id TEXT,
  previous_response_id TEXT,
  created_at INTEGER NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (owner, id)
);
CREATE TABLE conversations (
  owner TEXT NOT NULL,
  id TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  metadata TEXT NOT NULL,
  PRIMARY KEY (owner, id)
);
CREATE TABLE items (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  owner TEXT NOT NULL,
  id TEXT NOT NULL,
  response_id TEXT,
  output INTEGER NOT NULL DEFAULT 0,
  conversation_id TEXT,
  body TEXT NOT NULL
);
CREATE INDEX items_owner_response_id_output_seq ON items (owner, response_id, output, seq)
  WHERE response_id IS NOT NULL;
CREATE INDEX items_owner_conversation_id_seq ON items (owner, conversation_id, seq)
  WHERE conversation_id IS NOT NULL;
)sql";

Status MigrateToVersion3(Database& db) { return db.Exec(kCreateResponsesState); }

// Version 4: which upstream answered a turn (several upstreams behind one Staple).
Status MigrateToVersion4(Database& db) {
  return db.Exec("ALTER TABLE messages ADD COLUMN upstream TEXT");
}

// Version 5: the state epoch, one row that every delete of Responses or Conversations state
// increments in its own transaction (ConversationStore::StateEpoch), so that the response chains
// a process keeps in memory are forgotten when any process deletes from them.
Status MigrateToVersion5(Database& db) {
  return db.Exec(
      "CREATE TABLE state_epoch (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);"
      "INSERT INTO state_epoch (id, value) VALUES (1, 0);");
}

// The schema version this build creates, migrates to and understands.
constexpr std::int64_t kSchemaVersion = 5;

struct Migration {
  std::int64_t version;  // the user_version after this migration
  Status (*apply)(Database&);
};

constexpr std::array<Migration, 5> kMigrations = {{{1, &MigrateToVersion1},
                                                   {2, &MigrateToVersion2},
                                                   {3, &MigrateToVersion3},
                                                   {4, &MigrateToVersion4},
                                                   {5, &MigrateToVersion5}}};
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

// The history columns of a conversation's messages (RecentMessages), read by ReadHistoryMessage.
constexpr std::string_view kSelectHistoryColumns = "SELECT id, role, content FROM messages ";

HistoryMessage ReadHistoryMessage(const Statement& row) {
  HistoryMessage message;
  message.id = row.ColumnInt64(0);
  message.role = row.ColumnText(1);
  message.content = row.ColumnText(2);
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

  // Inserts both rows of `turn`; on success `inserted` (when given) holds them as RecentMessages
  // would return them, ids included.
  Status InsertTurn(const Turn& turn, std::vector<HistoryMessage>* inserted) {
    const std::string prompt_time = FormatTimestamp(turn.prompt_time);
    if (auto ok = InsertRow(turn, prompt_time, "user", turn.prompt, std::nullopt, std::nullopt,
                            std::nullopt, nullptr);
        !ok) {
      return ok;
    }
    const std::int64_t prompt_id = sqlite3_last_insert_rowid(db_.handle());
    const std::string completion_time = FormatTimestamp(turn.completion_time);
    if (auto ok = InsertRow(turn, completion_time, "assistant", turn.completion, turn.prompt_tokens,
                            turn.completion_tokens, turn.latency_ms, &turn.upstream);
        !ok) {
      return ok;
    }
    if (inserted != nullptr) {
      const std::int64_t completion_id = sqlite3_last_insert_rowid(db_.handle());
      inserted->clear();
      inserted->push_back(HistoryMessage{prompt_id, "user", turn.prompt});
      inserted->push_back(HistoryMessage{completion_id, "assistant", turn.completion});
    }
    if (turn.response) return InsertResponse(turn.owner, *turn.response);
    return Ok();
  }

  // One change of the Responses and Conversations state inside the batch's transaction, under a
  // savepoint (as a retention step): a change that fails is undone alone, and the turns committed
  // beside it are kept.
  Result<StateOutcome> ChangeState(const StateChange& change) {
    if (auto ok = db_.Exec("SAVEPOINT state"); !ok) return ok.error();
    auto outcome = ChangeStateInSavepoint(change);
    if (!outcome) (void)db_.Exec("ROLLBACK TO state");
    if (auto ok = db_.Exec("RELEASE state"); !ok && outcome) return ok.error();
    return outcome;
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

  // The response row of a stored Responses turn, then its input and output items (in that
  // order, so that their seq numbers follow it). In a conversation, the items are the
  // conversation's too — unless it was deleted meanwhile (InsertItem's check): the response is
  // stored all the same, in no conversation's listing.
  Status InsertResponse(const std::string& owner, const ResponseRecord& record) {
    const StoredResponse& response = record.response;
    {
      StatementReset reset(insert_response_);
      const std::array<Status, 6> bound = {
          insert_response_.BindText(1, owner),
          insert_response_.BindText(2, response.id),
          insert_response_.BindTextOrNull(3, response.conversation_id),
          insert_response_.BindTextOrNull(4, response.previous_response_id),
          insert_response_.BindInt64(5, response.created_at),
          insert_response_.BindText(6, response.json),
      };
      for (const Status& status : bound) {
        if (!status) return status;
      }
      if (auto done = insert_response_.Step(); !done) return done.error();
    }
    for (const auto* items : {&record.input, &record.output}) {
      const bool output = items == &record.output;
      for (const ItemToStore& item : *items) {
        auto stored = InsertItem(owner, item, response.id, output, response.conversation_id);
        if (!stored) return stored.error();
      }
    }
    return Ok();
  }

  // Inserts one item (of response `response_id` when not empty, in conversation
  // `conversation_id` when it exists) and returns it as stored.
  Result<StoredItem> InsertItem(const std::string& owner, const ItemToStore& item,
                                const std::string& response_id, bool output,
                                const std::string& conversation_id) {
    StatementReset reset(insert_item_);
    const std::array<Status, 6> bound = {
        insert_item_.BindText(1, owner),
        insert_item_.BindText(2, item.id),
        insert_item_.BindTextOrNull(3, response_id),
        insert_item_.BindInt64(4, output ? 1 : 0),
        insert_item_.BindTextOrNull(5, conversation_id),
        insert_item_.BindText(6, item.json),
    };
    for (const Status& status : bound) {
      if (!status) return status.error();
    }
    if (auto done = insert_item_.Step(); !done) return done.error();
    StoredItem stored;
    stored.seq = sqlite3_last_insert_rowid(db_.handle());
    stored.id = item.id;
    stored.response_id = response_id;
    stored.output = output;
    stored.json = item.json;
    return stored;
  }

  // Runs `statement` (an INSERT, UPDATE or DELETE) with its owner (?1), id (?2) and, when not
  // null, `third` (?3) bound; returns the rows it changed.
  Result<std::int64_t> ChangeRows(Statement& statement, const std::string& owner,
                                  const std::string& id, const std::string* third = nullptr) {
    StatementReset reset(statement);
    if (auto ok = statement.BindText(1, owner); !ok) return ok.error();
    if (auto ok = statement.BindText(2, id); !ok) return ok.error();
    if (third != nullptr) {
      if (auto ok = statement.BindText(3, *third); !ok) return ok.error();
    }
    if (auto done = statement.Step(); !done) return done.error();
    return db_.Changes();
  }

  // Increments the state epoch when `deleted` rows were removed (ConversationStore::StateEpoch:
  // a response, or items; a conversation's own row holds nothing a chain is made of).
  Status BumpEpochIf(std::int64_t deleted) {
    if (deleted == 0) return Ok();
    StatementReset reset(bump_epoch_);
    if (auto done = bump_epoch_.Step(); !done) return done.error();
    return Ok();
  }

  // The creation time of conversation `id` of `owner`, std::nullopt when there is none.
  Result<std::optional<std::int64_t>> ConversationCreatedAt(const std::string& owner,
                                                            const std::string& id) {
    StatementReset reset(find_conversation_);
    if (auto ok = find_conversation_.BindText(1, owner); !ok) return ok.error();
    if (auto ok = find_conversation_.BindText(2, id); !ok) return ok.error();
    auto row = find_conversation_.Step();
    if (!row) return row.error();
    if (!*row) return std::optional<std::int64_t>();
    return std::optional<std::int64_t>(find_conversation_.ColumnInt64(0));
  }

  // Every existence check runs here, inside the write transaction, so that it holds when the
  // change commits.
  Result<StateOutcome> ChangeStateInSavepoint(const StateChange& change) {
    StateOutcome outcome;
    switch (change.kind) {
      case StateChange::Kind::kDeleteResponse: {
        auto deleted = ChangeRows(delete_response_, change.owner, change.id);
        if (!deleted) return deleted.error();
        outcome.found = *deleted > 0;
        // The items that are in a conversation stay there.
        auto items = ChangeRows(delete_response_items_, change.owner, change.id);
        if (!items) return items.error();
        if (auto bumped = BumpEpochIf(*deleted); !bumped) return bumped.error();
        return outcome;
      }
      case StateChange::Kind::kCreateConversation: {
        {
          StatementReset reset(insert_conversation_);
          const std::array<Status, 4> bound = {
              insert_conversation_.BindText(1, change.owner),
              insert_conversation_.BindText(2, change.id),
              insert_conversation_.BindInt64(3, change.conversation.created_at),
              insert_conversation_.BindText(4, change.conversation.metadata_json),
          };
          for (const Status& status : bound) {
            if (!status) return status.error();
          }
          if (auto done = insert_conversation_.Step(); !done) return done.error();
        }
        for (const ItemToStore& item : change.items) {
          auto stored = InsertItem(change.owner, item, "", false, change.id);
          if (!stored) return stored.error();
        }
        outcome.found = true;
        return outcome;
      }
      case StateChange::Kind::kUpdateConversation: {
        const std::string& metadata = change.conversation.metadata_json;
        auto updated = ChangeRows(update_conversation_, change.owner, change.id, &metadata);
        if (!updated) return updated.error();
        if (*updated == 0) return outcome;
        auto created_at = ConversationCreatedAt(change.owner, change.id);
        if (!created_at) return created_at.error();
        if (!*created_at) return outcome;
        outcome.found = true;
        outcome.conversation = StoredConversation{change.id, **created_at, metadata};
        return outcome;
      }
      case StateChange::Kind::kDeleteConversation: {
        auto deleted = ChangeRows(delete_conversation_, change.owner, change.id);
        if (!deleted) return deleted.error();
        outcome.found = *deleted > 0;
        auto items = ChangeRows(delete_conversation_items_, change.owner, change.id);
        if (!items) return items.error();
        if (auto bumped = BumpEpochIf(*items); !bumped) return bumped.error();
        return outcome;
      }
      case StateChange::Kind::kAppendItems: {
        auto created_at = ConversationCreatedAt(change.owner, change.id);
        if (!created_at) return created_at.error();
        if (!*created_at) return outcome;
        outcome.found = true;
        outcome.items.reserve(change.items.size());
        for (const ItemToStore& item : change.items) {
          auto stored = InsertItem(change.owner, item, "", false, change.id);
          if (!stored) return stored.error();
          outcome.items.push_back(std::move(stored).value());
        }
        return outcome;
      }
      case StateChange::Kind::kDeleteItem: {
        // Every copy of the item (a client may have sent the same item twice).
        auto deleted = ChangeRows(delete_item_, change.owner, change.id, &change.item_id);
        if (!deleted) return deleted.error();
        outcome.found = *deleted > 0;
        if (auto bumped = BumpEpochIf(*deleted); !bumped) return bumped.error();
        return outcome;
      }
    }
    return MakeError(ErrorKind::kInternal, "unknown state change");
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
                   std::optional<std::int64_t> latency_ms, const std::string* upstream) {
    StatementReset reset(insert_);
    static const std::string kNone;
    const std::array<Status, 11> bound = {
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
        insert_.BindTextOrNull(11, upstream != nullptr ? *upstream : kNone),
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
  // The Responses and Conversations state.
  Statement insert_response_;
  Statement insert_item_;
  Statement delete_response_;
  Statement delete_response_items_;
  Statement insert_conversation_;
  Statement find_conversation_;
  Statement update_conversation_;
  Statement delete_conversation_;
  Statement delete_conversation_items_;
  Statement delete_item_;
  Statement bump_epoch_;

  // Every prepared statement of the connection: PrepareStatements prepares them all and Replace
  // moves them all to a fresh connection.
  struct StatementSql {
    Statement Writer::*statement;
    std::string_view sql;
  };
  static constexpr std::array<StatementSql, 19> kStatements = {{
      {&Writer::begin_, "BEGIN IMMEDIATE"},
      {&Writer::commit_, "COMMIT"},
      {&Writer::rollback_, "ROLLBACK"},
      {&Writer::insert_,
       "INSERT INTO messages (user_id, timestamp, role, content, request_id, model, "
       "prompt_tokens, completion_tokens, latency_ms, owner, upstream) VALUES (?1, ?2, ?3, ?4, ?5, "
       "?6, ?7, ?8, ?9, ?10, ?11)"},
      {&Writer::delete_, "DELETE FROM messages WHERE owner = ?2 AND user_id = ?1"},
      {&Writer::probe_, kProbeHealth},
      // The oldest rows by id come from the table's own b-tree (a LIMIT on rowid order); the
      // deletion then finds each by its rowid.
      {&Writer::delete_oldest_,
       "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?2) AND "
       "timestamp < ?1"},
      {&Writer::free_pages_, "PRAGMA freelist_count"},
      {&Writer::insert_response_,
       "INSERT INTO responses (owner, id, conversation_id, previous_response_id, created_at, "
       "body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"},
      // An item joins conversation ?5 only when it exists: the check and the insert are one
      // statement of the write transaction.
      {&Writer::insert_item_,
       "INSERT INTO items (owner, id, response_id, output, conversation_id, body) VALUES (?1, "
       "?2, ?3, ?4, (SELECT id FROM conversations WHERE owner = ?1 AND id = ?5), ?6)"},
      {&Writer::delete_response_, "DELETE FROM responses WHERE owner = ?1 AND id = ?2"},
      {&Writer::delete_response_items_,
       "DELETE FROM items WHERE owner = ?1 AND response_id = ?2 AND conversation_id IS NULL"},
      {&Writer::insert_conversation_,
       "INSERT INTO conversations (owner, id, created_at, metadata) VALUES (?1, ?2, ?3, ?4)"},
      {&Writer::find_conversation_,
       "SELECT created_at FROM conversations WHERE owner = ?1 AND id = ?2"},
      {&Writer::update_conversation_,
       "UPDATE conversations SET metadata = ?3 WHERE owner = ?1 AND id = ?2"},
      {&Writer::delete_conversation_, "DELETE FROM conversations WHERE owner = ?1 AND id = ?2"},
      {&Writer::delete_conversation_items_,
       "DELETE FROM items WHERE owner = ?1 AND conversation_id = ?2"},
      {&Writer::delete_item_,
       "DELETE FROM items WHERE owner = ?1 AND conversation_id = ?2 AND id = ?3"},
      {&Writer::bump_epoch_, "UPDATE state_epoch SET value = value + 1 WHERE id = 1"},
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

  Result<History> Recent(const std::string& owner, const std::string& user_id, std::size_t max,
                         HistoryCache& cache) {
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

  Result<History> ReadRecent(const std::string& owner, const std::string& user_id,
                             std::size_t max) {
    // Newest first with a LIMIT uses the (owner, user_id, id) index backwards; the page is then
    // reversed to the oldest-first order callers want.
    StatementReset reset(recent_);
    if (auto ok = recent_.BindText(1, user_id); !ok) return ok.error();
    if (auto ok = recent_.BindText(3, owner); !ok) return ok.error();
    if (auto ok = recent_.BindInt64(2, max == 0 ? -1 : SqlLimit(max)); !ok) return ok.error();
    History messages;
    for (;;) {
      auto row = recent_.Step();
      if (!row) return Context("database read failed", row.error());
      if (!*row) break;
      messages.push_back(std::make_shared<const HistoryMessage>(ReadHistoryMessage(recent_)));
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

  Result<StateAnswer> QueryState(const StateQuery& query) {
    switch (query.kind) {
      case StateQuery::Kind::kResponse:
      case StateQuery::Kind::kResponseChain:
      case StateQuery::Kind::kConversation:
      case StateQuery::Kind::kStateEpoch:
        return ReadState(query);
      default: {
        // The other reads take several statements: one read transaction makes them see one
        // snapshot of the file.
        Snapshot snapshot(*this);
        if (auto ok = snapshot.Begin(); !ok) return Context("database read failed", ok.error());
        return ReadState(query);
      }
    }
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
    auto recent = db_.Prepare(std::string(kSelectHistoryColumns) +
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
    return PrepareStateStatements();
  }

  Result<StateAnswer> ReadState(const StateQuery& query) {
    if (query.kind == StateQuery::Kind::kResponseChain) {
      return Chain(query.owner, query.id, query.max_items);
    }
    StateAnswer answer;
    if (query.kind == StateQuery::Kind::kStateEpoch) {
      StatementReset reset(epoch_);
      auto row = epoch_.Step();
      if (!row) return row.error();
      answer.found = *row;
      if (*row) answer.epoch = epoch_.ColumnInt64(0);
      return answer;
    }
    if (query.kind == StateQuery::Kind::kResponse ||
        query.kind == StateQuery::Kind::kResponseItems) {
      auto response = FindResponse(query.owner, query.id);
      if (!response) return response.error();
      if (!*response) return answer;
      answer.found = true;
      if (query.kind == StateQuery::Kind::kResponse) {
        answer.response = std::move(response).value();
        return answer;
      }
      const ItemScope scope{query.owner, query.id, query.output};
      auto page = Page(response_items_, scope, query.after, query.limit, query.order);
      if (!page) return page.error();
      answer.page = std::move(page).value();
      return answer;
    }
    auto conversation = FindConversation(query.owner, query.id);
    if (!conversation) return conversation.error();
    if (!*conversation) return answer;
    answer.found = true;
    const ItemScope scope{query.owner, query.id, std::nullopt};
    switch (query.kind) {
      case StateQuery::Kind::kConversation:
        answer.conversation = std::move(conversation).value();
        return answer;
      case StateQuery::Kind::kConversationItems: {
        auto window = Window(conversation_window_, scope, query.max_items);
        if (!window) return window.error();
        answer.window = std::move(window).value();
        return answer;
      }
      case StateQuery::Kind::kConversationPage: {
        auto page = Page(conversation_items_, scope, query.after, query.limit, query.order);
        if (!page) return page.error();
        answer.page = std::move(page).value();
        return answer;
      }
      case StateQuery::Kind::kConversationItem: {
        auto item = ConversationItem(query.owner, query.id, query.item_id);
        if (!item) return item.error();
        answer.found = item->has_value();
        answer.item = std::move(item).value();
        return answer;
      }
      default:
        return MakeError(ErrorKind::kInternal, "unknown state query");
    }
  }

  // Holds one read transaction (one snapshot of the file) from Begin() to its destruction.
  class Snapshot {
   public:
    explicit Snapshot(Reader& reader) : reader_(reader) {}
    Snapshot(const Snapshot&) = delete;
    Snapshot& operator=(const Snapshot&) = delete;
    ~Snapshot() {
      if (!begun_) return;
      (void)Run(reader_.commit_);
      // A connection left inside a transaction would fail its next Begin().
      if (sqlite3_get_autocommit(reader_.db_.handle()) == 0) (void)Run(reader_.rollback_);
    }

    Status Begin() {
      if (auto ok = Run(reader_.begin_); !ok) return ok;
      begun_ = true;
      return Ok();
    }

   private:
    static Status Run(Statement& statement) {
      StatementReset reset(statement);
      auto done = statement.Step();
      if (!done) return done.error();
      return Ok();
    }

    Reader& reader_;
    bool begun_ = false;
  };

  // Whose items a listing reads: the input (or output) items of response `id`, or, without
  // `output`, the items of conversation `id`. Bound as ?1 (owner), ?2 (id) and ?3 (output).
  struct ItemScope {
    const std::string& owner;
    const std::string& id;
    std::optional<bool> output;
  };

  // The statements of one kind of listing: `anchor` finds the lowest and highest seq of an item
  // id (?4); `ascending` and `descending` read up to ?5 items past seq ?4.
  struct ListingStatements {
    Statement anchor;
    Statement ascending;
    Statement descending;
  };

  static Status BindScope(Statement& statement, const ItemScope& scope) {
    if (auto ok = statement.BindText(1, scope.owner); !ok) return ok;
    if (auto ok = statement.BindText(2, scope.id); !ok) return ok;
    if (scope.output) return statement.BindInt64(3, *scope.output ? 1 : 0);
    return Ok();
  }

  // Columns: seq, id, response_id, output, body.
  static StoredItem ReadItem(const Statement& row) {
    StoredItem item;
    item.seq = row.ColumnInt64(0);
    item.id = row.ColumnText(1);
    item.response_id = row.ColumnText(2);
    item.output = row.ColumnInt64(3) != 0;
    item.json = row.ColumnText(4);
    return item;
  }

  Result<std::optional<StoredResponse>> FindResponse(const std::string& owner,
                                                     const std::string& id) {
    StatementReset reset(response_);
    if (auto ok = response_.BindText(1, owner); !ok) return ok.error();
    if (auto ok = response_.BindText(2, id); !ok) return ok.error();
    auto row = response_.Step();
    if (!row) return Context("database read failed", row.error());
    if (!*row) return std::optional<StoredResponse>();
    StoredResponse response;
    response.id = id;
    response.conversation_id = response_.ColumnText(0);
    response.previous_response_id = response_.ColumnText(1);
    response.created_at = response_.ColumnInt64(2);
    response.json = response_.ColumnText(3);
    return std::optional<StoredResponse>(std::move(response));
  }

  Result<std::optional<StoredConversation>> FindConversation(const std::string& owner,
                                                             const std::string& id) {
    StatementReset reset(conversation_);
    if (auto ok = conversation_.BindText(1, owner); !ok) return ok.error();
    if (auto ok = conversation_.BindText(2, id); !ok) return ok.error();
    auto row = conversation_.Step();
    if (!row) return Context("database read failed", row.error());
    if (!*row) return std::optional<StoredConversation>();
    StoredConversation conversation;
    conversation.id = id;
    conversation.created_at = conversation_.ColumnInt64(0);
    conversation.metadata_json = conversation_.ColumnText(1);
    return std::optional<StoredConversation>(std::move(conversation));
  }

  // Reads the rows of `statement` (items, newest first, one more than `max` when `max` is not
  // 0) into a window: oldest first, the oldest row beyond `max` dropped and counted in has_more.
  static Result<ItemWindow> ReadWindow(Statement& statement, std::size_t max) {
    ItemWindow window;
    for (;;) {
      auto row = statement.Step();
      if (!row) return Context("database read failed", row.error());
      if (!*row) break;
      window.items.push_back(ReadItem(statement));
    }
    if (max != 0 && window.items.size() > max) {
      window.items.resize(max);
      window.has_more = true;
    }
    std::reverse(window.items.begin(), window.items.end());
    return window;
  }

  // The LIMIT that reads one row more than `max` (0 = no limit), to tell whether more exist.
  static std::int64_t OneMore(std::size_t max) {
    if (max == 0 || max == std::numeric_limits<std::size_t>::max()) return -1;
    return SqlLimit(max + 1);
  }

  // One statement whatever the chain's length (see chain_); its rows are the window's items,
  // newest first, plus one row of NULLs when response `id` exists.
  Result<StateAnswer> Chain(const std::string& owner, const std::string& id, std::size_t max) {
    StatementReset reset(chain_);
    if (auto ok = chain_.BindText(1, owner); !ok) return ok.error();
    if (auto ok = chain_.BindText(2, id); !ok) return ok.error();
    if (auto ok = chain_.BindInt64(3, OneMore(max)); !ok) return ok.error();
    StateAnswer answer;
    for (;;) {
      auto row = chain_.Step();
      if (!row) return Context("database read failed", row.error());
      if (!*row) break;
      if (chain_.ColumnIsNull(0)) {
        answer.found = true;
      } else {
        answer.window.items.push_back(ReadItem(chain_));
      }
    }
    if (!answer.found) return StateAnswer();
    // Newest first; the order of a compound's rows is not the subquery's, so sort here.
    std::sort(answer.window.items.begin(), answer.window.items.end(),
              [](const StoredItem& a, const StoredItem& b) { return a.seq > b.seq; });
    if (max != 0 && answer.window.items.size() > max) {
      answer.window.items.resize(max);
      answer.window.has_more = true;
    }
    std::reverse(answer.window.items.begin(), answer.window.items.end());
    return answer;
  }

  Result<ItemWindow> Window(Statement& statement, const ItemScope& scope, std::size_t max) {
    StatementReset reset(statement);
    if (auto ok = BindScope(statement, scope); !ok) return ok.error();
    if (auto ok = statement.BindInt64(3, OneMore(max)); !ok) return ok.error();
    return ReadWindow(statement, max);
  }

  // Up to `limit` items of `scope` in `order`, after the first item whose id is `after` in that
  // order (its lowest seq ascending, its highest descending).
  Result<ItemPage> Page(ListingStatements& listing, const ItemScope& scope,
                        const std::string& after, std::size_t limit, ItemOrder order) {
    const bool ascending = order == ItemOrder::kAscending;
    std::int64_t past = ascending ? 0 : std::numeric_limits<std::int64_t>::max();
    if (!after.empty()) {
      StatementReset reset(listing.anchor);
      if (auto ok = BindScope(listing.anchor, scope); !ok) return ok.error();
      if (auto ok = listing.anchor.BindText(4, after); !ok) return ok.error();
      auto row = listing.anchor.Step();
      if (!row) return Context("database read failed", row.error());
      if (!*row || listing.anchor.ColumnIsNull(0)) {
        return MakeError(ErrorKind::kNotFound, "`after` is not an item of this list");
      }
      past = listing.anchor.ColumnInt64(ascending ? 0 : 1);
    }
    Statement& statement = ascending ? listing.ascending : listing.descending;
    StatementReset reset(statement);
    // One row more than asked tells whether another page exists.
    const std::int64_t sql_limit =
        SqlLimit(limit == std::numeric_limits<std::size_t>::max() ? limit : limit + 1);
    if (auto ok = BindScope(statement, scope); !ok) return ok.error();
    if (auto ok = statement.BindInt64(4, past); !ok) return ok.error();
    if (auto ok = statement.BindInt64(5, sql_limit); !ok) return ok.error();
    ItemPage page;
    for (;;) {
      auto row = statement.Step();
      if (!row) return Context("database read failed", row.error());
      if (!*row) break;
      if (page.items.size() == limit) {
        page.has_more = true;
        break;
      }
      page.items.push_back(ReadItem(statement));
    }
    return page;
  }

  // The first item of the conversation whose id is `item_id`.
  Result<std::optional<StoredItem>> ConversationItem(const std::string& owner,
                                                     const std::string& id,
                                                     const std::string& item_id) {
    StatementReset reset(conversation_item_);
    if (auto ok = conversation_item_.BindText(1, owner); !ok) return ok.error();
    if (auto ok = conversation_item_.BindText(2, id); !ok) return ok.error();
    if (auto ok = conversation_item_.BindText(3, item_id); !ok) return ok.error();
    auto row = conversation_item_.Step();
    if (!row) return Context("database read failed", row.error());
    if (!*row) return std::optional<StoredItem>();
    return std::optional<StoredItem>(ReadItem(conversation_item_));
  }

  Status PrepareStateStatements() {
    struct Item {
      Statement* statement;
      std::string_view sql;
    };
    const std::array<Item, 15> items = {{
        {&begin_, "BEGIN"},
        {&epoch_, "SELECT value FROM state_epoch WHERE id = 1"},
        {&commit_, "COMMIT"},
        {&rollback_, "ROLLBACK"},
        {&response_,
         "SELECT conversation_id, previous_response_id, created_at, body FROM responses WHERE "
         "owner = ?1 AND id = ?2"},
        // The chain from response ?2 back through previous_response_id, one primary-key lookup
        // per step (a deleted response is missing, so the chain ends there; UNION rather than
        // UNION ALL ends it even if ids ever formed a cycle), joined to the items of its
        // responses through the (owner, response_id, …) index; the newest ?3 of them, plus one
        // row of NULLs when response ?2 exists.
        {&chain_,
         "WITH RECURSIVE chain (id, previous_response_id) AS ("
         " SELECT id, previous_response_id FROM responses WHERE owner = ?1 AND id = ?2"
         " UNION"
         " SELECT r.id, r.previous_response_id FROM chain"
         " JOIN responses r ON r.owner = ?1 AND r.id = chain.previous_response_id) "
         "SELECT * FROM (SELECT i.seq, i.id, i.response_id, i.output, i.body FROM chain"
         " CROSS JOIN items i ON i.owner = ?1 AND i.response_id = chain.id"
         " ORDER BY i.seq DESC LIMIT ?3) "
         "UNION ALL "
         "SELECT NULL, NULL, NULL, NULL, NULL FROM responses WHERE owner = ?1 AND id = ?2"},
        {&response_items_.anchor,
         "SELECT min(seq), max(seq) FROM items WHERE owner = ?1 AND response_id = ?2 AND "
         "output = ?3 AND id = ?4"},
        {&response_items_.ascending,
         "SELECT seq, id, response_id, output, body FROM items WHERE owner = ?1 AND "
         "response_id = ?2 AND output = ?3 AND seq > ?4 ORDER BY seq ASC LIMIT ?5"},
        {&response_items_.descending,
         "SELECT seq, id, response_id, output, body FROM items WHERE owner = ?1 AND "
         "response_id = ?2 AND output = ?3 AND seq < ?4 ORDER BY seq DESC LIMIT ?5"},
        {&conversation_,
         "SELECT created_at, metadata FROM conversations WHERE owner = ?1 AND id = ?2"},
        {&conversation_window_,
         "SELECT seq, id, response_id, output, body FROM items WHERE owner = ?1 AND "
         "conversation_id = ?2 ORDER BY seq DESC LIMIT ?3"},
        {&conversation_items_.anchor,
         "SELECT min(seq), max(seq) FROM items WHERE owner = ?1 AND conversation_id = ?2 AND "
         "id = ?4"},
        {&conversation_items_.ascending,
         "SELECT seq, id, response_id, output, body FROM items WHERE owner = ?1 AND "
         "conversation_id = ?2 AND seq > ?4 ORDER BY seq ASC LIMIT ?5"},
        {&conversation_items_.descending,
         "SELECT seq, id, response_id, output, body FROM items WHERE owner = ?1 AND "
         "conversation_id = ?2 AND seq < ?4 ORDER BY seq DESC LIMIT ?5"},
        {&conversation_item_,
         "SELECT seq, id, response_id, output, body FROM items WHERE owner = ?1 AND "
         "conversation_id = ?2 AND id = ?3 ORDER BY seq ASC LIMIT 1"},
    }};
    for (const Item& item : items) {
      auto statement = db_.Prepare(item.sql);
      if (!statement) return statement.error();
      *item.statement = std::move(statement).value();
    }
    return Ok();
  }

  Database db_;
  Statement window_;
  Statement recent_;
  Statement list_;
  Statement ping_;
  // The Responses and Conversations state.
  Statement begin_;
  Statement commit_;
  Statement rollback_;
  Statement response_;
  Statement chain_;
  Statement epoch_;
  ListingStatements response_items_;
  Statement conversation_;
  Statement conversation_window_;
  ListingStatements conversation_items_;
  Statement conversation_item_;
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
  std::vector<HistoryMessage> inserted;
  std::int64_t deleted = 0;
  // A change of the Responses and Conversations state, and what it did (read by StateChanged).
  std::optional<StateChange> state;
  Result<StateOutcome> state_outcome = StateOutcome{};
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
        } else if (op->state) {
          // Its failure is its own (see ChangeState): the batch goes on.
          op->state_outcome = writer.ChangeState(*op->state);
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

  Result<History> Recent(Reader& reader, Deadline, const std::string& owner,
                         const std::string& user_id, std::size_t max_messages) {
    return reader.Recent(owner, user_id, max_messages, history_);
  }

  Result<MessagePage> List(Reader& reader, Deadline, const std::string& owner,
                           const std::string& user_id, std::int64_t after_id, std::size_t limit) {
    return reader.List(owner, user_id, after_id, limit);
  }

  WriteOp StateOp(StateChange change) {
    WriteOp op;
    op.state = std::move(change);
    return op;
  }

  Result<StateOutcome> StateChanged(const Status& committed, WriteOp& op) {
    if (!committed) return committed.error();
    return std::move(op.state_outcome);
  }

  Result<StateAnswer> QueryState(Reader& reader, Deadline, const StateQuery& query) {
    return reader.QueryState(query);
  }

  Status Ping(Reader& reader, Deadline) { return reader.Ping(); }

 private:
  // Shared by the writer (appends committed turns) and the readers; thread-safe.
  HistoryCache history_;
};

template class DbConversationStore<SqliteBackend, SqliteStoreOptions>;

}  // namespace staple::store
