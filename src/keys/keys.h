#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/net.h"
#include "common/result.h"
#include "ratelimit/limit.h"

namespace staple::keys {

// Client keys ("sk-staple-..."): who may use the gateway, with what limits and models. A key's
// secret is shown once, at creation; only its SHA-256 is stored.

// One key as stored (never its secret).
struct KeyRecord {
  std::string id;               // public id, "key_" + 16 lower-case hex digits; logged and shown
  std::string name;             // free text, logged and shown
  std::string secret_hash;      // SHA-256 of the secret, 64 lower-case hex digits
  std::int64_t created_at = 0;  // Unix seconds
  std::optional<std::int64_t> expires_at;  // Unix seconds; none: never expires
  bool revoked = false;
  std::vector<std::string> allowed_models;  // empty: every model
  std::string request_limits;               // limits notation ("" = none), per key
  std::string token_limits;                 // limits notation ("" = none), per key
  std::string metadata = "{}";              // a JSON object, as text
};

// A key as the running server holds it: the record, its limits parsed.
struct Key {
  KeyRecord record;
  std::vector<ratelimit::RateLimitItem> request_limits;
  std::vector<ratelimit::RateLimitItem> token_limits;
  bool AllowsModel(std::string_view model) const;  // exact names; empty list allows all
};

// Usage of one key on one UTC day.
struct UsageDay {
  std::string day;  // "YYYY-MM-DD"
  std::int64_t requests = 0;
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
};

// A new secret: "sk-staple-" followed by 43 characters of base62 (>= 256 bits from OpenSSL's
// CSPRNG, common/secure_random.h).
std::string GenerateSecret();
// A new public id: "key_" + 16 hex digits (random).
std::string GenerateId();
// SHA-256 of `secret`, 64 lower-case hex digits.
std::string HashSecret(std::string_view secret);
// Constant-time comparison of two hashes of equal length.
bool SameHash(std::string_view a, std::string_view b);

// Checks a record's fields (name length, limits notation, models, metadata is a JSON object);
// kInvalidArgument naming the field.
Status Validate(const KeyRecord& record);

// The key as the server holds it, its limits parsed; kInvalidArgument as Validate for bad
// notation.
Result<Key> MakeKey(KeyRecord record);

// Time as keys show it. UtcDay: "YYYY-MM-DD" of a Unix time (the usage day); FormatUtc:
// "YYYY-MM-DDTHH:MM:SSZ". ParseUtcTime reads "YYYY-MM-DD" (midnight UTC) or
// "YYYY-MM-DDTHH:MM[:SS[.fraction]]" followed by "Z", "+HH:MM", "-HH:MM" or nothing (UTC), into
// Unix seconds; kInvalidArgument otherwise.
std::string UtcDay(std::int64_t unix_seconds);
std::string FormatUtc(std::int64_t unix_seconds);
Result<std::int64_t> ParseUtcTime(std::string_view text);

// Durable key storage, in the conversation database (SQLite or PostgreSQL; tables `api_keys`,
// `api_key_usage`, `api_key_state`). Blocking: call from a thread of its own, never an I/O thread.
// Errors: kStorage (the database failed), kNotFound (no such key), kInvalidArgument.
class KeyStore {
 public:
  virtual ~KeyStore() = default;
  virtual Status Create(const KeyRecord& record) = 0;
  virtual Result<std::vector<KeyRecord>> List() = 0;
  virtual Result<KeyRecord> Get(const std::string& id) = 0;
  // Replaces every field but id, secret_hash and created_at.
  virtual Status Update(const KeyRecord& record) = 0;
  virtual Status Revoke(const std::string& id) = 0;
  // A number that changes with every Create, Update and Revoke, on any replica.
  virtual Result<std::int64_t> Version() = 0;
  // Adds to the usage rows of (key, day).
  virtual Status AddUsage(const std::string& id, const UsageDay& delta) = 0;
  // The key's usage, newest day first, at most `days` days.
  virtual Result<std::vector<UsageDay>> Usage(const std::string& id, int days) = 0;
};

// Opens the key tables of the database `url` names ("sqlite:///path" resolved as the conversation
// store resolves it, i.e. the same file path; or "postgresql://..."), creating them if needed.
Result<std::unique_ptr<KeyStore>> OpenKeyStore(const std::string& url,
                                               const std::string& sqlite_path);

// The running server's keys: all held in memory, so that authenticating a request costs one
// SHA-256 and a hash-map lookup and never a database round trip. A thread of its own polls the
// store's Version() every `poll` (1 s) and reloads every key when it changed, so a revocation or
// change made on any replica is in force on every replica within about a second; the same thread
// flushes the usage counted by Record() and runs the management calls (the awaitable methods), so
// no I/O thread ever waits on the database.
class KeyRegistry {
 public:
  KeyRegistry(std::unique_ptr<KeyStore> store, std::chrono::milliseconds poll);
  ~KeyRegistry();  // Stop()s

  // Loads every key (blocking; at start-up) and starts the thread.
  Status Start();
  // Flushes usage and stops the thread. Idempotent.
  void Stop();

  enum class Verdict { kValid, kUnknown, kExpired, kRevoked };
  struct Authenticated {
    Verdict verdict = Verdict::kUnknown;
    std::shared_ptr<const Key> key;  // set for kValid (and for kExpired/kRevoked)
  };
  // The key whose secret is `secret`, as of the last reload. `now` in Unix seconds. Thread-safe.
  Authenticated Authenticate(std::string_view secret, std::int64_t now) const;

  // Counts one request and its tokens for `key_id` today (flushed to the store about once a
  // second; a crash loses at most that second). Thread-safe, no I/O.
  void Record(const std::string& key_id, std::int64_t requests, std::int64_t prompt_tokens,
              std::int64_t completion_tokens);

  // Management, run on the registry's thread; the caller resumes on its own executor. After a
  // successful Create/Update/Revoke the registry reloads at once (this replica sees it
  // immediately).
  struct Created {
    KeyRecord record;
    std::string secret;  // shown once
  };
  // `record`'s id, secret_hash and created_at are filled in here.
  net::awaitable<Result<Created>> Create(KeyRecord record);
  net::awaitable<Result<std::vector<KeyRecord>>> List();
  net::awaitable<Result<KeyRecord>> Get(std::string id);
  net::awaitable<Result<KeyRecord>> Update(KeyRecord record);
  net::awaitable<Status> Revoke(std::string id);
  net::awaitable<Result<std::vector<UsageDay>>> Usage(std::string id, int days);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace staple::keys
