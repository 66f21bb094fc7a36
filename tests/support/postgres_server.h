#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "process.h"
#include "temp_dir.h"

namespace staple::testing {

// A throwaway PostgreSQL 15 server (initdb + pg_ctl from /usr/lib/postgresql/15/bin, or
// $STAPLE_PG_BIN) in a fresh temp dir, listening on a free port of 127.0.0.1 and on a unix socket
// inside that dir. When the tests run as root, the server runs as the `postgres` user (PostgreSQL
// refuses root) and the dir is handed to that user.
//
// The superuser is user() with password password(): TCP connections authenticate with
// scram-sha-256, unix-socket connections are trusted. Durability settings are relaxed
// (fsync=off): it is for tests only. Use from one thread.
class PostgresServer {
 public:
  // Runs initdb and starts the server; throws std::runtime_error (with the tools' output) when
  // either fails.
  PostgresServer();
  // Stops the server (immediate mode) and removes the dir.
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  // Stops the server at once, like a crash (pg_ctl stop -m immediate). Throws on failure.
  void Stop();
  // Starts it again on the same data and port. Throws on failure.
  void Start();
  bool running() const { return running_; }

  std::uint16_t port() const { return port_; }
  std::filesystem::path socket_dir() const;
  static std::string user() { return "staple"; }
  static std::string password() { return "pg-test-SECRET-42"; }

  // postgresql://staple:<password>@127.0.0.1:<port>/<database>
  std::string Url(const std::string& database) const;

  // Creates a database owned by user(). Throws on failure.
  void CreateDatabase(const std::string& name);

  // Runs one SQL command with psql over the unix socket (unaligned, tuples only, `|` between
  // columns, one row per line). Throws when psql fails.
  std::string Psql(const std::string& database, const std::string& sql);

 private:
  // Runs a PostgreSQL tool as the server's user; throws with its output when it fails.
  RunResult RunTool(const std::string& tool, const std::vector<std::string>& args,
                    std::chrono::milliseconds timeout);

  TempDir dir_;
  std::filesystem::path bin_;
  std::uint16_t port_ = 0;
  bool running_ = false;
  int runs_ = 0;
};

}  // namespace staple::testing
