#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

struct sqlite3;
struct sqlite3_stmt;

namespace staple::store::sqlite {

class Statement;

// Owns one sqlite3 connection. Not thread-safe: a connection is used by one thread at a time
// (connections are opened with SQLITE_OPEN_NOMUTEX). Moving transfers ownership; the moved-from
// object holds no connection. Errors are kStorage with SQLite's message; no error message
// contains bound values.
class Database {
 public:
  Database() = default;
  Database(Database&& other) noexcept;
  Database& operator=(Database&& other) noexcept;
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;
  ~Database();

  // Opens `path` with SQLite `flags` (SQLITE_OPEN_*; SQLITE_OPEN_NOMUTEX is always added).
  // The error message names the path and SQLite's reason.
  static Result<Database> Open(const std::string& path, int flags);

  // Runs one or more SQL statements that return no rows needed by the caller.
  Status Exec(std::string_view sql);

  // Compiles one SQL statement. The statement must be destroyed before this connection.
  Result<Statement> Prepare(std::string_view sql);

  // Runs a statement expected to return one integer (e.g. `PRAGMA user_version`).
  Result<std::int64_t> QueryInt(std::string_view sql);

  // Runs a statement expected to return one text value (e.g. `PRAGMA journal_mode=WAL`).
  Result<std::string> QueryText(std::string_view sql);

  // Sets how long a statement waits for another connection's lock before failing with BUSY.
  void SetBusyTimeout(int milliseconds);

  // Rows changed by the most recent INSERT, UPDATE or DELETE on this connection.
  std::int64_t Changes() const;

  // SQLite's message for the most recent failure on this connection.
  std::string LastError() const;

  bool is_open() const { return db_ != nullptr; }
  sqlite3* handle() const { return db_; }

 private:
  explicit Database(sqlite3* db) : db_(db) {}

  sqlite3* db_ = nullptr;
};

// Owns one prepared statement. Bind indexes start at 1, column indexes at 0. After the last
// Step(), call Reset() (or let a StatementReset guard do it) so the statement releases its read
// snapshot and can be reused.
class Statement {
 public:
  Statement() = default;
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&& other) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement();

  // Text is not copied: it must stay alive until the statement is reset.
  Status BindText(int index, std::string_view text);
  // Binds NULL for an empty string.
  Status BindTextOrNull(int index, std::string_view text);
  Status BindInt64(int index, std::int64_t value);
  Status BindInt64OrNull(int index, std::optional<std::int64_t> value);
  Status BindNull(int index);

  // Advances: true when a row is available, false when the statement has finished.
  Result<bool> Step();

  // Rewinds the statement and clears its bindings.
  void Reset();

  int ColumnCount() const;
  std::string ColumnName(int column) const;
  bool ColumnIsNull(int column) const;
  std::int64_t ColumnInt64(int column) const;
  std::optional<std::int64_t> ColumnOptionalInt64(int column) const;
  // The column's bytes exactly (embedded NULs kept); NULL reads as an empty string.
  std::string ColumnText(int column) const;

 private:
  friend class Database;
  Statement(sqlite3_stmt* stmt, sqlite3* db) : stmt_(stmt), db_(db) {}
  Status BindResult(int rc) const;

  sqlite3_stmt* stmt_ = nullptr;
  sqlite3* db_ = nullptr;  // the owning connection, for error messages
};

// Resets a statement when leaving a scope, so that an early return never leaves a read
// transaction open.
class StatementReset {
 public:
  explicit StatementReset(Statement& statement) : statement_(statement) {}
  StatementReset(const StatementReset&) = delete;
  StatementReset& operator=(const StatementReset&) = delete;
  ~StatementReset() { statement_.Reset(); }

 private:
  Statement& statement_;
};

}  // namespace staple::store::sqlite
