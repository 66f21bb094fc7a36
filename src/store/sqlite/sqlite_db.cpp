#include "store/sqlite/sqlite_db.h"

#include <sqlite3.h>

#include <utility>

namespace staple::store::sqlite {

namespace {

Error StorageFailure(std::string message) {
  return MakeError(ErrorKind::kStorage, std::move(message));
}

std::string MessageOf(sqlite3* db, int rc) {
  // The connection's message is more specific ("no such table: x") than the code's, but only
  // when the connection exists and the failure was its last one.
  if (db != nullptr && sqlite3_errcode(db) == rc) return sqlite3_errmsg(db);
  return sqlite3_errstr(rc);
}

}  // namespace

// ---- Database ----

Database::Database(Database&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}

Database& Database::operator=(Database&& other) noexcept {
  if (this != &other) {
    if (db_ != nullptr) sqlite3_close_v2(db_);
    db_ = std::exchange(other.db_, nullptr);
  }
  return *this;
}

Database::~Database() {
  if (db_ != nullptr) sqlite3_close_v2(db_);
}

Result<Database> Database::Open(const std::string& path, int flags) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db, flags | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    // sqlite3_open_v2 usually allocates a handle even on failure; it carries the message.
    std::string reason = MessageOf(db, rc);
    sqlite3_close_v2(db);
    return StorageFailure("cannot open SQLite database '" + path + "': " + reason);
  }
  sqlite3_extended_result_codes(db, 1);
  return Database(db);
}

Status Database::Exec(std::string_view sql) {
  const std::string text(sql);
  char* message = nullptr;
  const int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &message);
  if (rc != SQLITE_OK) {
    std::string reason = message != nullptr ? message : sqlite3_errstr(rc);
    sqlite3_free(message);
    return StorageFailure(std::move(reason));
  }
  return Ok();
}

Result<Statement> Database::Prepare(std::string_view sql) {
  sqlite3_stmt* stmt = nullptr;
  const int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()),
                                    SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(stmt);
    return StorageFailure(MessageOf(db_, rc));
  }
  return Statement(stmt, db_);
}

Result<std::int64_t> Database::QueryInt(std::string_view sql) {
  auto statement = Prepare(sql);
  if (!statement) return statement.error();
  auto row = statement->Step();
  if (!row) return row.error();
  if (!*row) return StorageFailure("query returned no row");
  return statement->ColumnInt64(0);
}

Result<std::string> Database::QueryText(std::string_view sql) {
  auto statement = Prepare(sql);
  if (!statement) return statement.error();
  auto row = statement->Step();
  if (!row) return row.error();
  if (!*row) return StorageFailure("query returned no row");
  return statement->ColumnText(0);
}

void Database::SetBusyTimeout(int milliseconds) { sqlite3_busy_timeout(db_, milliseconds); }

std::int64_t Database::Changes() const { return sqlite3_changes64(db_); }

std::string Database::LastError() const { return sqlite3_errmsg(db_); }

// ---- Statement ----

Statement::Statement(Statement&& other) noexcept
    : stmt_(std::exchange(other.stmt_, nullptr)), db_(std::exchange(other.db_, nullptr)) {}

Statement& Statement::operator=(Statement&& other) noexcept {
  if (this != &other) {
    sqlite3_finalize(stmt_);
    stmt_ = std::exchange(other.stmt_, nullptr);
    db_ = std::exchange(other.db_, nullptr);
  }
  return *this;
}

Statement::~Statement() { sqlite3_finalize(stmt_); }

Status Statement::BindResult(int rc) const {
  if (rc != SQLITE_OK) return StorageFailure(MessageOf(db_, rc));
  return Ok();
}

Status Statement::BindText(int index, std::string_view text) {
  // A zero-length text needs a non-null pointer, or SQLite binds NULL instead of ''.
  const char* data = text.data() != nullptr ? text.data() : "";
  return BindResult(
      sqlite3_bind_text64(stmt_, index, data, text.size(), SQLITE_STATIC, SQLITE_UTF8));
}

Status Statement::BindTextOrNull(int index, std::string_view text) {
  if (text.empty()) return BindNull(index);
  return BindText(index, text);
}

Status Statement::BindInt64(int index, std::int64_t value) {
  return BindResult(sqlite3_bind_int64(stmt_, index, value));
}

Status Statement::BindInt64OrNull(int index, std::optional<std::int64_t> value) {
  if (!value) return BindNull(index);
  return BindInt64(index, *value);
}

Status Statement::BindNull(int index) { return BindResult(sqlite3_bind_null(stmt_, index)); }

Result<bool> Statement::Step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return StorageFailure(MessageOf(db_, rc));
}

void Statement::Reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

int Statement::ColumnCount() const { return sqlite3_column_count(stmt_); }

std::string Statement::ColumnName(int column) const {
  const char* name = sqlite3_column_name(stmt_, column);
  return name != nullptr ? name : "";
}

bool Statement::ColumnIsNull(int column) const {
  return sqlite3_column_type(stmt_, column) == SQLITE_NULL;
}

std::int64_t Statement::ColumnInt64(int column) const {
  return sqlite3_column_int64(stmt_, column);
}

std::optional<std::int64_t> Statement::ColumnOptionalInt64(int column) const {
  if (ColumnIsNull(column)) return std::nullopt;
  return sqlite3_column_int64(stmt_, column);
}

std::string Statement::ColumnText(int column) const {
  // sqlite3_column_text must come before sqlite3_column_bytes: the latter then reports the
  // length of the UTF-8 form just produced.
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
  const int size = sqlite3_column_bytes(stmt_, column);
  if (text == nullptr) return {};
  return std::string(text, static_cast<std::size_t>(size));
}

}  // namespace staple::store::sqlite
