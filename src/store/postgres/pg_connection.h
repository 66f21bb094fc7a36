#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

// Forward declarations of libpq's opaque types, so that only pg_connection.cpp and the store's
// .cpp include libpq-fe.h.
struct pg_conn;
struct pg_result;

namespace staple::store::postgres {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

// Where to connect: a `postgresql://` or `postgres://` URL split into libpq's keywords.
struct Target {
  std::vector<std::string> keywords;
  std::vector<std::string> values;
  // "user@host:port/dbname" for error messages: never the password.
  std::string description;
  // The password, only to scrub it from any message libpq produces; empty when none.
  std::string password;
};

// Parses `url` (postgresql://user:password@host:port/dbname?param=value, or postgres://…).
// Fails with kInvalidArgument, without repeating the password, when libpq rejects it.
Result<Target> ParseTarget(const std::string& url);

// One statement of a pipeline; parameters in text format, std::nullopt for SQL NULL.
// Parameter values must not contain NUL bytes.
struct Query {
  std::string sql;
  std::vector<std::optional<std::string>> params;
};

// Owns one PGresult.
class QueryResult {
 public:
  QueryResult() = default;
  explicit QueryResult(pg_result* result) : result_(result) {}
  ~QueryResult();
  QueryResult(QueryResult&& other) noexcept;
  QueryResult& operator=(QueryResult&& other) noexcept;
  QueryResult(const QueryResult&) = delete;
  QueryResult& operator=(const QueryResult&) = delete;

  int Rows() const;
  bool IsNull(int row, int column) const;
  std::string_view Text(int row, int column) const;  // "" for NULL
  std::int64_t Int64(int row, int column) const;     // 0 for NULL or garbage
  std::optional<std::int64_t> OptionalInt64(int row, int column) const;
  // Rows touched by an INSERT/UPDATE/DELETE.
  std::int64_t AffectedRows() const;

 private:
  pg_result* result_ = nullptr;
};

// One libpq connection in non-blocking pipeline mode, used by one thread at a time. Every call
// that talks to the server takes a deadline and returns once it passes: a server that stops
// answering costs the caller at most that long. Any failure closes the connection (a later
// Connect() opens a new one), so a half-finished pipeline or transaction never leaks into the
// next call.
class Connection {
 public:
  explicit Connection(const Target& target) : target_(target) {}
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  bool connected() const { return conn_ != nullptr; }

  // Opens the connection; kStorage naming the server (never the password) on failure.
  Status Connect(Deadline deadline);
  void Disconnect();

  // Whether an idle open connection still looks usable: the server may have closed it (restart,
  // idle timeout) since the last call. Closes it when not.
  bool CheckAlive();

  // Sends every query as one pipeline followed by one Sync and returns one result per query.
  // Fails with kStorage (and closes the connection) when the connection breaks, the deadline
  // passes, or any query fails (its error message is included).
  Result<std::vector<QueryResult>> Run(const std::vector<Query>& queries, Deadline deadline);

 private:
  Error Fail(std::string_view what, std::string detail);
  Status WaitSocket(short events, Deadline deadline, bool* readable);
  Status Flush(Deadline deadline);
  Result<pg_result*> NextResult(Deadline deadline);

  const Target& target_;
  pg_conn* conn_ = nullptr;
};

}  // namespace staple::store::postgres
