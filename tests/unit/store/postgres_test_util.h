#pragma once

#include <unistd.h>

#include <atomic>
#include <string>

#include "support/postgres_server.h"

namespace staple::store::testing {

// One throwaway PostgreSQL server per test binary, started on first use and stopped at exit.
inline ::staple::testing::PostgresServer& SharedPostgres() {
  static ::staple::testing::PostgresServer server;
  return server;
}

// A new, empty database on `server`; returns its URL.
inline std::string FreshPostgresDatabase(::staple::testing::PostgresServer& server) {
  static std::atomic<int> counter{0};
  const std::string name =
      "staple_test_" + std::to_string(::getpid()) + "_" + std::to_string(++counter);
  server.CreateDatabase(name);
  return server.Url(name);
}

inline std::string FreshPostgresDatabase() { return FreshPostgresDatabase(SharedPostgres()); }

}  // namespace staple::store::testing
