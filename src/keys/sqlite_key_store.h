#pragma once

#include <memory>
#include <string>

#include "keys/keys.h"

struct sqlite3;

namespace staple::keys {

// KeyStore on a SQLite file (normally the conversation database): a connection of its own, WAL,
// a busy timeout so that the conversation store's writer and other processes (the `staple keys`
// command, other replicas on the same file) wait for each other instead of failing. Not
// thread-safe: one thread at a time.
class SqliteKeyStore final : public KeyStore {
 public:
  // Opens (creating the file, its folder and the key tables when missing). kStorage on failure.
  static Result<std::unique_ptr<SqliteKeyStore>> Open(const std::string& path);
  ~SqliteKeyStore() override;
  SqliteKeyStore(const SqliteKeyStore&) = delete;
  SqliteKeyStore& operator=(const SqliteKeyStore&) = delete;

  Status Create(const KeyRecord& record) override;
  Result<std::vector<KeyRecord>> List() override;
  Result<KeyRecord> Get(const std::string& id) override;
  Status Update(const KeyRecord& record) override;
  Status Revoke(const std::string& id) override;
  Result<std::int64_t> Version() override;
  Status AddUsage(const std::string& id, const UsageDay& delta) override;
  Result<std::vector<UsageDay>> Usage(const std::string& id, int days) override;

 private:
  explicit SqliteKeyStore(sqlite3* db) : db_(db) {}

  sqlite3* db_;  // owned
};

}  // namespace staple::keys
