#include "keys/postgres_key_store.h"

#include <libpq-fe.h>

#include <utility>

#include "keys/record_codec.h"

namespace staple::keys {
namespace {

constexpr const char* kSchema = R"sql(
BEGIN;
SELECT pg_advisory_xact_lock(hashtext('staple.api_keys.schema'));
CREATE TABLE IF NOT EXISTS api_keys (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  secret_hash TEXT NOT NULL UNIQUE,
  created_at BIGINT NOT NULL,
  expires_at BIGINT,
  revoked BOOLEAN NOT NULL DEFAULT FALSE,
  allowed_models TEXT NOT NULL DEFAULT '[]',
  request_limits TEXT NOT NULL DEFAULT '',
  token_limits TEXT NOT NULL DEFAULT '',
  metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS api_key_usage (
  key_id TEXT NOT NULL,
  day TEXT NOT NULL,
  requests BIGINT NOT NULL DEFAULT 0,
  prompt_tokens BIGINT NOT NULL DEFAULT 0,
  completion_tokens BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (key_id, day)
);
CREATE TABLE IF NOT EXISTS api_key_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  version BIGINT NOT NULL
);
INSERT INTO api_key_state (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
COMMIT;
)sql";

constexpr const char* kColumns =
    "id, name, secret_hash, created_at, expires_at, revoked, allowed_models, request_limits, "
    "token_limits, metadata";

constexpr const char* kUniqueViolation = "23505";

// The password of postgresql://user:password@host/..., or "" when the URL carries none.
std::string PasswordOf(const std::string& url) {
  const std::size_t scheme = url.find("://");
  if (scheme == std::string::npos) return {};
  const std::size_t start = scheme + 3;
  const std::size_t at = url.find('@', start);
  const std::size_t slash = url.find('/', start);
  if (at == std::string::npos || (slash != std::string::npos && slash < at)) return {};
  const std::size_t colon = url.find(':', start);
  if (colon == std::string::npos || colon > at) return {};
  return url.substr(colon + 1, at - colon - 1);
}

std::string Scrub(std::string text, const std::string& secret) {
  if (secret.empty()) return text;
  for (std::size_t pos = text.find(secret); pos != std::string::npos;
       pos = text.find(secret, pos)) {
    text.replace(pos, secret.size(), "***");
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

Error NotFound(const std::string& id) {
  return MakeError(ErrorKind::kNotFound, "no key with id '" + id + "'");
}

std::string Int(std::int64_t value) { return std::to_string(value); }

}  // namespace

// Owns one PGresult.
class PostgresKeyStore::Reply {
 public:
  explicit Reply(PGresult* result) : result_(result) {}
  ~Reply() { PQclear(result_); }
  Reply(Reply&& other) noexcept : result_(std::exchange(other.result_, nullptr)) {}
  Reply& operator=(Reply&&) = delete;
  Reply(const Reply&) = delete;
  Reply& operator=(const Reply&) = delete;

  bool Succeeded() const {
    const ExecStatusType status = PQresultStatus(result_);
    return status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
  }
  std::string SqlState() const {
    const char* state = PQresultErrorField(result_, PG_DIAG_SQLSTATE);
    return state == nullptr ? std::string() : std::string(state);
  }
  int Rows() const { return PQntuples(result_); }
  std::int64_t Affected() const {
    const char* text = PQcmdTuples(result_);
    return text == nullptr || *text == '\0' ? 0 : std::stoll(text);
  }
  bool IsNull(int row, int column) const { return PQgetisnull(result_, row, column) != 0; }
  std::string Text(int row, int column) const {
    return std::string(PQgetvalue(result_, row, column),
                       static_cast<std::size_t>(PQgetlength(result_, row, column)));
  }
  std::int64_t Int64(int row, int column) const {
    return IsNull(row, column) ? 0 : std::stoll(Text(row, column));
  }

 private:
  PGresult* result_;
};

namespace {

Result<KeyRecord> ReadRecord(const auto& reply, int row) {
  KeyRecord record;
  record.id = reply.Text(row, 0);
  record.name = reply.Text(row, 1);
  record.secret_hash = reply.Text(row, 2);
  record.created_at = reply.Int64(row, 3);
  if (!reply.IsNull(row, 4)) record.expires_at = reply.Int64(row, 4);
  record.revoked = reply.Text(row, 5) == "t";
  auto models = DecodeModels(reply.Text(row, 6));
  if (!models) return models.error();
  record.allowed_models = std::move(models).value();
  record.request_limits = reply.Text(row, 7);
  record.token_limits = reply.Text(row, 8);
  record.metadata = reply.Text(row, 9);
  return record;
}

}  // namespace

PostgresKeyStore::PostgresKeyStore(std::string url)
    : url_(std::move(url)), password_(PasswordOf(url_)) {}

PostgresKeyStore::~PostgresKeyStore() {
  if (conn_ != nullptr) PQfinish(conn_);
}

Result<std::unique_ptr<PostgresKeyStore>> PostgresKeyStore::Open(const std::string& url) {
  std::unique_ptr<PostgresKeyStore> store(new PostgresKeyStore(url));
  if (auto connected = store->Connect(); !connected) return connected.error();
  Reply reply(PQexec(store->conn_, kSchema));
  if (!reply.Succeeded()) {
    Error error = store->Failure("cannot create the key tables", PQerrorMessage(store->conn_));
    PQfinish(store->conn_);
    store->conn_ = nullptr;
    return error;
  }
  return store;
}

Error PostgresKeyStore::Failure(const std::string& what, const std::string& detail) const {
  return MakeError(ErrorKind::kStorage, "key store: " + what + ": " + Scrub(detail, password_));
}

Status PostgresKeyStore::Connect() {
  if (conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK) return Ok();
  if (conn_ != nullptr) PQfinish(conn_);
  // Defaults first: the URL (expanded from dbname) overrides them.
  const char* keywords[] = {"connect_timeout", "options", "dbname", nullptr};
  const char* values[] = {"10", "-c statement_timeout=10000", url_.c_str(), nullptr};
  conn_ = PQconnectdbParams(keywords, values, 1);
  if (conn_ == nullptr) return MakeError(ErrorKind::kStorage, "key store: out of memory");
  if (PQstatus(conn_) != CONNECTION_OK) {
    Error error = Failure("cannot connect", PQerrorMessage(conn_));
    PQfinish(conn_);
    conn_ = nullptr;
    return error;
  }
  // The server's notices (e.g. "relation already exists, skipping") are not errors.
  PQsetNoticeProcessor(
      conn_, [](void*, const char*) {}, nullptr);
  return Ok();
}

Result<PostgresKeyStore::Reply> PostgresKeyStore::Run(const std::string& sql,
                                                      const Params& params) {
  if (auto connected = Connect(); !connected) return connected.error();
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& param : params) values.push_back(param ? param->c_str() : nullptr);
  Reply reply(PQexecParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr,
                           values.data(), nullptr, nullptr, 0));
  if (reply.Succeeded()) return reply;
  if (reply.SqlState() == kUniqueViolation) {
    return MakeError(ErrorKind::kInvalidArgument, "a key with this id or secret already exists");
  }
  Error error = Failure("statement failed", PQerrorMessage(conn_));
  // A broken connection is opened again by the next call.
  if (PQstatus(conn_) != CONNECTION_OK) {
    PQfinish(conn_);
    conn_ = nullptr;
  }
  return error;
}

Status PostgresKeyStore::Change(const std::string& sql, const Params& params,
                                const std::string& id) {
  if (auto begun = Run("BEGIN", {}); !begun) return begun.error();
  auto rollback = [this](Error error) -> Status {
    if (conn_ != nullptr) PQclear(PQexec(conn_, "ROLLBACK"));
    return error;
  };
  auto changed = Run(sql, params);
  if (!changed) return rollback(changed.error());
  if (changed->Affected() == 0) return rollback(NotFound(id));
  auto bumped = Run("UPDATE api_key_state SET version = version + 1 WHERE id = 1", {});
  if (!bumped) return rollback(bumped.error());
  auto committed = Run("COMMIT", {});
  if (!committed) return rollback(committed.error());
  return Ok();
}

Status PostgresKeyStore::Create(const KeyRecord& record) {
  if (auto valid = Validate(record); !valid) return valid;
  const std::string sql =
      "INSERT INTO api_keys (id, name, secret_hash, created_at, expires_at, revoked, "
      "allowed_models, request_limits, token_limits, metadata) "
      "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
  Params params{
      record.id,
      record.name,
      record.secret_hash,
      Int(record.created_at),
      record.expires_at ? std::optional<std::string>(Int(*record.expires_at)) : std::nullopt,
      std::string(record.revoked ? "true" : "false"),
      EncodeModels(record.allowed_models),
      record.request_limits,
      record.token_limits,
      record.metadata};
  return Change(sql, params, record.id);
}

Result<std::vector<KeyRecord>> PostgresKeyStore::List() {
  auto reply =
      Run(std::string("SELECT ") + kColumns + " FROM api_keys ORDER BY created_at, id", {});
  if (!reply) return reply.error();
  std::vector<KeyRecord> records;
  for (int row = 0; row < reply->Rows(); ++row) {
    auto record = ReadRecord(*reply, row);
    if (!record) return record.error();
    records.push_back(std::move(record).value());
  }
  return records;
}

Result<KeyRecord> PostgresKeyStore::Get(const std::string& id) {
  auto reply = Run(std::string("SELECT ") + kColumns + " FROM api_keys WHERE id = $1", {id});
  if (!reply) return reply.error();
  if (reply->Rows() == 0) return NotFound(id);
  return ReadRecord(*reply, 0);
}

Status PostgresKeyStore::Update(const KeyRecord& record) {
  if (auto valid = Validate(record); !valid) return valid;
  const std::string sql =
      "UPDATE api_keys SET name = $1, expires_at = $2, revoked = $3, allowed_models = $4, "
      "request_limits = $5, token_limits = $6, metadata = $7 WHERE id = $8";
  Params params{
      record.name,
      record.expires_at ? std::optional<std::string>(Int(*record.expires_at)) : std::nullopt,
      std::string(record.revoked ? "true" : "false"),
      EncodeModels(record.allowed_models),
      record.request_limits,
      record.token_limits,
      record.metadata,
      record.id};
  return Change(sql, params, record.id);
}

Status PostgresKeyStore::Revoke(const std::string& id) {
  return Change("UPDATE api_keys SET revoked = TRUE WHERE id = $1", {id}, id);
}

Result<std::int64_t> PostgresKeyStore::Version() {
  auto reply = Run("SELECT version FROM api_key_state WHERE id = 1", {});
  if (!reply) return reply.error();
  if (reply->Rows() == 0) return std::int64_t{0};
  return reply->Int64(0, 0);
}

Status PostgresKeyStore::AddUsage(const std::string& id, const UsageDay& delta) {
  const std::string sql =
      "INSERT INTO api_key_usage (key_id, day, requests, prompt_tokens, completion_tokens) "
      "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_id, day) DO UPDATE SET "
      "requests = api_key_usage.requests + EXCLUDED.requests, "
      "prompt_tokens = api_key_usage.prompt_tokens + EXCLUDED.prompt_tokens, "
      "completion_tokens = api_key_usage.completion_tokens + EXCLUDED.completion_tokens";
  auto reply = Run(sql, {id, delta.day, Int(delta.requests), Int(delta.prompt_tokens),
                         Int(delta.completion_tokens)});
  if (!reply) return reply.error();
  return Ok();
}

Result<std::vector<UsageDay>> PostgresKeyStore::Usage(const std::string& id, int days) {
  auto reply =
      Run("SELECT day, requests, prompt_tokens, completion_tokens FROM api_key_usage "
          "WHERE key_id = $1 ORDER BY day DESC LIMIT $2",
          {id, Int(days < 0 ? 0 : days)});
  if (!reply) return reply.error();
  std::vector<UsageDay> usage;
  for (int row = 0; row < reply->Rows(); ++row) {
    UsageDay day;
    day.day = reply->Text(row, 0);
    day.requests = reply->Int64(row, 1);
    day.prompt_tokens = reply->Int64(row, 2);
    day.completion_tokens = reply->Int64(row, 3);
    usage.push_back(std::move(day));
  }
  return usage;
}

}  // namespace staple::keys
