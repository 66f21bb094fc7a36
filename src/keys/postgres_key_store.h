#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "keys/keys.h"

struct pg_conn;

namespace staple::keys {

// KeyStore on PostgreSQL (normally the conversation database): one connection of its own with
// libpq's blocking API, opened again on the next call after any failure. Connecting gives up
// after 10 s and every statement after 10 s (server side), unless the URL says otherwise. Error
// messages never contain the password. Not thread-safe: one thread at a time.
class PostgresKeyStore final : public KeyStore {
 public:
  // Connects and creates the key tables when missing (under an advisory lock, so replicas that
  // start together do not race). kStorage on failure.
  static Result<std::unique_ptr<PostgresKeyStore>> Open(const std::string& url);
  ~PostgresKeyStore() override;
  PostgresKeyStore(const PostgresKeyStore&) = delete;
  PostgresKeyStore& operator=(const PostgresKeyStore&) = delete;

  Status Create(const KeyRecord& record) override;
  Result<std::vector<KeyRecord>> List() override;
  Result<KeyRecord> Get(const std::string& id) override;
  Status Update(const KeyRecord& record) override;
  Status Revoke(const std::string& id) override;
  Result<std::int64_t> Version() override;
  Status AddUsage(const std::string& id, const UsageDay& delta) override;
  Result<std::vector<UsageDay>> Usage(const std::string& id, int days) override;

 private:
  class Reply;
  using Params = std::vector<std::optional<std::string>>;

  explicit PostgresKeyStore(std::string url);
  Status Connect();
  // Runs one statement (connecting first when needed). Errors: kStorage, or kInvalidArgument for
  // a unique-constraint violation.
  Result<Reply> Run(const std::string& sql, const Params& params);
  // Runs `change` (one statement that must touch a row, else kNotFound for `id`) and the version
  // bump in one transaction.
  Status Change(const std::string& sql, const Params& params, const std::string& id);
  Error Failure(const std::string& what, const std::string& detail) const;

  std::string url_;
  std::string password_;  // only to scrub it from libpq's messages
  pg_conn* conn_ = nullptr;
};

}  // namespace staple::keys
