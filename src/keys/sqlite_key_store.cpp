#include "keys/sqlite_key_store.h"

#include <sqlite3.h>

#include <filesystem>
#include <optional>
#include <system_error>
#include <utility>

#include "keys/record_codec.h"

namespace staple::keys {
namespace {

// How long a statement waits for another connection's write lock (the conversation store's
// writer, another process) before failing.
constexpr int kBusyTimeoutMs = 5000;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS api_keys (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  secret_hash TEXT NOT NULL UNIQUE,
  created_at INTEGER NOT NULL,
  expires_at INTEGER,
  revoked INTEGER NOT NULL DEFAULT 0,
  allowed_models TEXT NOT NULL DEFAULT '[]',
  request_limits TEXT NOT NULL DEFAULT '',
  token_limits TEXT NOT NULL DEFAULT '',
  metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS api_key_usage (
  key_id TEXT NOT NULL,
  day TEXT NOT NULL,
  requests INTEGER NOT NULL DEFAULT 0,
  prompt_tokens INTEGER NOT NULL DEFAULT 0,
  completion_tokens INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (key_id, day)
);
CREATE TABLE IF NOT EXISTS api_key_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  version INTEGER NOT NULL
);
INSERT OR IGNORE INTO api_key_state (id, version) VALUES (1, 0);
)sql";

constexpr const char* kColumns =
    "id, name, secret_hash, created_at, expires_at, revoked, allowed_models, request_limits, "
    "token_limits, metadata";

Error StorageError(sqlite3* db, const std::string& what) {
  return MakeError(ErrorKind::kStorage, "key store: " + what + ": " + sqlite3_errmsg(db));
}

// One prepared statement, finalized on scope exit. Bound text is copied (SQLITE_TRANSIENT), so
// callers may bind temporaries.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) {
    if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) stmt_ = nullptr;
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  bool ok() const { return stmt_ != nullptr; }
  void Text(int index, const std::string& value) {
    sqlite3_bind_text(stmt_, index, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT);
  }
  void Int(int index, std::int64_t value) { sqlite3_bind_int64(stmt_, index, value); }
  void OptionalInt(int index, std::optional<std::int64_t> value) {
    if (value) {
      sqlite3_bind_int64(stmt_, index, *value);
    } else {
      sqlite3_bind_null(stmt_, index);
    }
  }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return sqlite3_step(stmt_); }

  std::string ColumnText(int column) const {
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
    if (text == nullptr) return {};
    return std::string(text, static_cast<std::size_t>(sqlite3_column_bytes(stmt_, column)));
  }
  std::int64_t ColumnInt(int column) const { return sqlite3_column_int64(stmt_, column); }
  std::optional<std::int64_t> ColumnOptionalInt(int column) const {
    if (sqlite3_column_type(stmt_, column) == SQLITE_NULL) return std::nullopt;
    return sqlite3_column_int64(stmt_, column);
  }

 private:
  sqlite3_stmt* stmt_ = nullptr;
};

Status Exec(sqlite3* db, const char* sql, const char* what) {
  if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK) return StorageError(db, what);
  return Ok();
}

Result<KeyRecord> ReadRecord(const Stmt& stmt) {
  KeyRecord record;
  record.id = stmt.ColumnText(0);
  record.name = stmt.ColumnText(1);
  record.secret_hash = stmt.ColumnText(2);
  record.created_at = stmt.ColumnInt(3);
  record.expires_at = stmt.ColumnOptionalInt(4);
  record.revoked = stmt.ColumnInt(5) != 0;
  auto models = DecodeModels(stmt.ColumnText(6));
  if (!models) return models.error();
  record.allowed_models = std::move(models).value();
  record.request_limits = stmt.ColumnText(7);
  record.token_limits = stmt.ColumnText(8);
  record.metadata = stmt.ColumnText(9);
  return record;
}

// A write transaction that also bumps the version: BEGIN IMMEDIATE takes the write lock at
// once (waiting up to the busy timeout), so the change and its version are one commit.
class WriteTransaction {
 public:
  explicit WriteTransaction(sqlite3* db) : db_(db) {}
  ~WriteTransaction() {
    if (open_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  WriteTransaction(const WriteTransaction&) = delete;
  WriteTransaction& operator=(const WriteTransaction&) = delete;

  Status Begin() {
    if (auto ok = Exec(db_, "BEGIN IMMEDIATE", "cannot begin a transaction"); !ok) return ok;
    open_ = true;
    return Ok();
  }
  Status BumpVersionAndCommit() {
    if (auto ok = Exec(db_, "UPDATE api_key_state SET version = version + 1 WHERE id = 1",
                       "cannot bump the key version");
        !ok) {
      return ok;
    }
    if (auto ok = Exec(db_, "COMMIT", "cannot commit"); !ok) return ok;
    open_ = false;
    return Ok();
  }

 private:
  sqlite3* db_;
  bool open_ = false;
};

Error NotFound(const std::string& id) {
  return MakeError(ErrorKind::kNotFound, "no key with id '" + id + "'");
}

}  // namespace

Result<std::unique_ptr<SqliteKeyStore>> SqliteKeyStore::Open(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) {
      return MakeError(ErrorKind::kStorage,
                       "key store: cannot create " + parent.string() + ": " + ec.message());
    }
  }
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(
      path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  std::unique_ptr<SqliteKeyStore> store(new SqliteKeyStore(db));
  if (rc != SQLITE_OK) {
    return MakeError(ErrorKind::kStorage,
                     "key store: cannot open " + path + ": " +
                         (db != nullptr ? sqlite3_errmsg(db) : "out of memory"));
  }
  sqlite3_busy_timeout(db, kBusyTimeoutMs);
  // WAL as the conversation store uses it (readers never block the writer); key changes are rare
  // and each is committed durably.
  if (auto ok = Exec(db, "PRAGMA journal_mode = WAL", "cannot switch to WAL"); !ok) {
    return ok.error();
  }
  if (auto ok = Exec(db, "PRAGMA synchronous = FULL", "cannot set synchronous"); !ok) {
    return ok.error();
  }
  if (auto ok = Exec(db, kSchema, "cannot create the key tables"); !ok) return ok.error();
  return store;
}

SqliteKeyStore::~SqliteKeyStore() { sqlite3_close_v2(db_); }

Status SqliteKeyStore::Create(const KeyRecord& record) {
  if (auto valid = Validate(record); !valid) return valid;
  WriteTransaction transaction(db_);
  if (auto ok = transaction.Begin(); !ok) return ok;
  Stmt stmt(db_,
            "INSERT INTO api_keys (id, name, secret_hash, created_at, expires_at, revoked, "
            "allowed_models, request_limits, token_limits, metadata) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  if (!stmt.ok()) return StorageError(db_, "cannot prepare an insert");
  stmt.Text(1, record.id);
  stmt.Text(2, record.name);
  stmt.Text(3, record.secret_hash);
  stmt.Int(4, record.created_at);
  stmt.OptionalInt(5, record.expires_at);
  stmt.Int(6, record.revoked ? 1 : 0);
  stmt.Text(7, EncodeModels(record.allowed_models));
  stmt.Text(8, record.request_limits);
  stmt.Text(9, record.token_limits);
  stmt.Text(10, record.metadata);
  const int rc = stmt.Step();
  if (rc == SQLITE_CONSTRAINT) {
    return MakeError(ErrorKind::kInvalidArgument, "a key with this id or secret already exists");
  }
  if (rc != SQLITE_DONE) return StorageError(db_, "cannot insert the key");
  return transaction.BumpVersionAndCommit();
}

Result<std::vector<KeyRecord>> SqliteKeyStore::List() {
  const std::string sql =
      std::string("SELECT ") + kColumns + " FROM api_keys ORDER BY created_at, id";
  Stmt stmt(db_, sql.c_str());
  if (!stmt.ok()) return StorageError(db_, "cannot prepare the key list");
  std::vector<KeyRecord> records;
  for (;;) {
    const int rc = stmt.Step();
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) return StorageError(db_, "cannot list the keys");
    auto record = ReadRecord(stmt);
    if (!record) return record.error();
    records.push_back(std::move(record).value());
  }
  return records;
}

Result<KeyRecord> SqliteKeyStore::Get(const std::string& id) {
  const std::string sql = std::string("SELECT ") + kColumns + " FROM api_keys WHERE id = ?";
  Stmt stmt(db_, sql.c_str());
  if (!stmt.ok()) return StorageError(db_, "cannot prepare a key read");
  stmt.Text(1, id);
  const int rc = stmt.Step();
  if (rc == SQLITE_DONE) return NotFound(id);
  if (rc != SQLITE_ROW) return StorageError(db_, "cannot read the key");
  return ReadRecord(stmt);
}

Status SqliteKeyStore::Update(const KeyRecord& record) {
  if (auto valid = Validate(record); !valid) return valid;
  WriteTransaction transaction(db_);
  if (auto ok = transaction.Begin(); !ok) return ok;
  Stmt stmt(db_,
            "UPDATE api_keys SET name = ?, expires_at = ?, revoked = ?, allowed_models = ?, "
            "request_limits = ?, token_limits = ?, metadata = ? WHERE id = ?");
  if (!stmt.ok()) return StorageError(db_, "cannot prepare an update");
  stmt.Text(1, record.name);
  stmt.OptionalInt(2, record.expires_at);
  stmt.Int(3, record.revoked ? 1 : 0);
  stmt.Text(4, EncodeModels(record.allowed_models));
  stmt.Text(5, record.request_limits);
  stmt.Text(6, record.token_limits);
  stmt.Text(7, record.metadata);
  stmt.Text(8, record.id);
  if (stmt.Step() != SQLITE_DONE) return StorageError(db_, "cannot update the key");
  if (sqlite3_changes(db_) == 0) return NotFound(record.id);
  return transaction.BumpVersionAndCommit();
}

Status SqliteKeyStore::Revoke(const std::string& id) {
  WriteTransaction transaction(db_);
  if (auto ok = transaction.Begin(); !ok) return ok;
  Stmt stmt(db_, "UPDATE api_keys SET revoked = 1 WHERE id = ?");
  if (!stmt.ok()) return StorageError(db_, "cannot prepare a revocation");
  stmt.Text(1, id);
  if (stmt.Step() != SQLITE_DONE) return StorageError(db_, "cannot revoke the key");
  if (sqlite3_changes(db_) == 0) return NotFound(id);
  return transaction.BumpVersionAndCommit();
}

Result<std::int64_t> SqliteKeyStore::Version() {
  Stmt stmt(db_, "SELECT version FROM api_key_state WHERE id = 1");
  if (!stmt.ok()) return StorageError(db_, "cannot prepare the version read");
  const int rc = stmt.Step();
  if (rc == SQLITE_DONE) return std::int64_t{0};
  if (rc != SQLITE_ROW) return StorageError(db_, "cannot read the key version");
  return stmt.ColumnInt(0);
}

Status SqliteKeyStore::AddUsage(const std::string& id, const UsageDay& delta) {
  Stmt stmt(db_,
            "INSERT INTO api_key_usage (key_id, day, requests, prompt_tokens, completion_tokens) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id, day) DO UPDATE SET "
            "requests = requests + excluded.requests, "
            "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
            "completion_tokens = completion_tokens + excluded.completion_tokens");
  if (!stmt.ok()) return StorageError(db_, "cannot prepare a usage update");
  stmt.Text(1, id);
  stmt.Text(2, delta.day);
  stmt.Int(3, delta.requests);
  stmt.Int(4, delta.prompt_tokens);
  stmt.Int(5, delta.completion_tokens);
  if (stmt.Step() != SQLITE_DONE) return StorageError(db_, "cannot add usage");
  return Ok();
}

Result<std::vector<UsageDay>> SqliteKeyStore::Usage(const std::string& id, int days) {
  Stmt stmt(db_,
            "SELECT day, requests, prompt_tokens, completion_tokens FROM api_key_usage "
            "WHERE key_id = ? ORDER BY day DESC LIMIT ?");
  if (!stmt.ok()) return StorageError(db_, "cannot prepare a usage read");
  stmt.Text(1, id);
  stmt.Int(2, days < 0 ? 0 : days);
  std::vector<UsageDay> usage;
  for (;;) {
    const int rc = stmt.Step();
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) return StorageError(db_, "cannot read usage");
    UsageDay day;
    day.day = stmt.ColumnText(0);
    day.requests = stmt.ColumnInt(1);
    day.prompt_tokens = stmt.ColumnInt(2);
    day.completion_tokens = stmt.ColumnInt(3);
    usage.push_back(std::move(day));
  }
  return usage;
}

}  // namespace staple::keys
