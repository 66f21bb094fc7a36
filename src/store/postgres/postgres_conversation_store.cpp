#include "store/postgres/postgres_conversation_store.h"

#include <algorithm>
#include <exception>
#include <limits>
#include <optional>
#include <string_view>
#include <system_error>
#include <utility>

#include "store/db_conversation_store_impl.h"
#include "store/postgres/pg_connection.h"
#include "store/store_errors.h"

namespace staple::store {

using postgres::Query;
using postgres::QueryResult;

namespace {

// ---- Schema ----
//
// The same tables as the SQLite store. Every schema change is one migration that moves the
// single row of `schema_version` from `version - 1` to `version`, inside the transaction that
// holds kMigrationLock: replicas starting together take turns, and the later ones find the work
// done. PostgreSQL's DDL is transactional, so a crash never leaves a half-migrated database.

// The schema version this build creates, migrates to and understands.
constexpr std::int64_t kSchemaVersion = 2;

// pg_advisory_xact_lock key reserved for Staple's migrations ("Stap" in ASCII).
constexpr std::string_view kMigrationLock = "SELECT pg_advisory_xact_lock(1400136048)";

const std::vector<std::string_view> kMigrationToVersion1 = {
    R"sql(CREATE TABLE messages (
  id BIGSERIAL PRIMARY KEY,
  user_id TEXT NOT NULL,
  "timestamp" TIMESTAMP NOT NULL,
  role TEXT NOT NULL,
  content TEXT NOT NULL,
  request_id TEXT,
  model TEXT,
  prompt_tokens BIGINT,
  completion_tokens BIGINT,
  latency_ms BIGINT
))sql",
    "CREATE INDEX messages_user_id_id ON messages (user_id, id)",
    R"sql(CREATE VIEW message AS SELECT id, user_id, "timestamp", role, content FROM messages)sql",
};

// Version 2: conversations belong to an owner (a client key's id, "" for none: every older row),
// read through an (owner, user_id, id) index.
const std::vector<std::string_view> kMigrationToVersion2 = {
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS owner TEXT NOT NULL DEFAULT ''",
    "CREATE INDEX IF NOT EXISTS messages_owner_user_id_id ON messages (owner, user_id, id)",
    "DROP INDEX IF EXISTS messages_user_id_id",
};

struct Migration {
  std::int64_t version;  // the schema version after this migration
  const std::vector<std::string_view>* statements;
};

const std::vector<Migration> kMigrations = {{1, &kMigrationToVersion1}, {2, &kMigrationToVersion2}};

Query Sql(std::string_view sql) { return Query{std::string(sql), {}}; }

// One row that the write probe updates: readiness proves that the database accepts writes
// without touching conversation rows.
constexpr std::string_view kCreateHealth =
    "CREATE TABLE IF NOT EXISTS staple_health (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "checked_at TIMESTAMPTZ NOT NULL DEFAULT now())";
constexpr std::string_view kSeedHealth =
    "INSERT INTO staple_health (id) VALUES (1) ON CONFLICT (id) DO NOTHING";
constexpr std::string_view kProbeHealth =
    "UPDATE staple_health SET checked_at = now() WHERE id = 1";

// `timestamp` is stored as TIMESTAMP (UTC, no zone) and read back in the SQLite store's format.
constexpr std::string_view kSelectColumns =
    R"sql(SELECT id, user_id, to_char("timestamp", 'YYYY-MM-DD HH24:MI:SS.US'), role, content, )sql"
    "request_id, model, prompt_tokens, completion_tokens, latency_ms FROM messages ";

constexpr std::string_view kInsertTurn =
    R"sql(INSERT INTO messages (user_id, "timestamp", role, content, request_id, model, )sql"
    "prompt_tokens, completion_tokens, latency_ms, owner) VALUES "
    "($1, $2::timestamp, 'user', $3, $4, $5, NULL, NULL, NULL, $11), "
    "($1, $6::timestamp, 'assistant', $7, $4, $5, $8::bigint, $9::bigint, $10::bigint, $11)";

StoredMessage ReadMessage(const QueryResult& rows, int row) {
  StoredMessage message;
  message.id = rows.Int64(row, 0);
  message.user_id = rows.Text(row, 1);
  message.timestamp = rows.Text(row, 2);
  message.role = rows.Text(row, 3);
  message.content = rows.Text(row, 4);
  message.request_id = rows.Text(row, 5);
  message.model = rows.Text(row, 6);
  message.prompt_tokens = rows.OptionalInt64(row, 7);
  message.completion_tokens = rows.OptionalInt64(row, 8);
  message.latency_ms = rows.OptionalInt64(row, 9);
  return message;
}

// A LIMIT parameter: NULL (no limit) beyond what a BIGINT holds.
std::optional<std::string> SqlLimit(std::size_t n) {
  constexpr auto kMax = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
  if (n >= kMax) return std::nullopt;
  return std::to_string(n);
}

std::optional<std::string> OptionalNumber(const std::optional<std::int64_t>& n) {
  if (!n) return std::nullopt;
  return std::to_string(*n);
}

}  // namespace

// ---- Session: one connection plus its reconnection policy, used by one thread ----

namespace postgres {

class Session {
 public:
  Session(const postgres::Target& target, std::chrono::milliseconds max_backoff)
      : target_(target), connection_(target), max_backoff_(max_backoff) {}

  // Runs `queries` as one pipeline, connecting first when needed. Right after a failed
  // connection attempt, fails at once until the backoff has passed.
  Result<std::vector<QueryResult>> Run(const std::vector<Query>& queries, Deadline deadline) {
    if (auto connected = EnsureConnected(deadline); !connected) return connected.error();
    return connection_.Run(queries, deadline);
  }

 private:
  Status EnsureConnected(Deadline deadline) {
    if (connection_.CheckAlive()) return Ok();
    const auto now = WorkerClock::now();
    if (now < next_attempt_) {
      const auto wait = std::chrono::ceil<std::chrono::milliseconds>(next_attempt_ - now);
      return StorageFailure(last_error_ + " (next attempt in " + std::to_string(wait.count()) +
                            " ms)");
    }
    Status connected = connection_.Connect(deadline);
    if (connected) {
      backoff_ = std::chrono::milliseconds(0);
      return Ok();
    }
    backoff_ = backoff_.count() == 0 ? std::chrono::milliseconds(100)
                                     : std::min(backoff_ * 2, max_backoff_);
    next_attempt_ = WorkerClock::now() + backoff_;
    last_error_ = connected.error().message;
    return connected;
  }

  const postgres::Target& target_;
  postgres::Connection connection_;
  const std::chrono::milliseconds max_backoff_;
  std::chrono::milliseconds backoff_{0};
  Deadline next_attempt_{};
  std::string last_error_;
};

}  // namespace postgres

namespace {

// Creates or migrates the schema through `session` (which must not be used by anything else).
template <typename Session>
Status Migrate(Session& session, Deadline deadline) {
  std::vector<Query> inspect;
  inspect.push_back(Sql("BEGIN"));
  inspect.push_back(Sql(kMigrationLock));
  inspect.push_back(Sql("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"));
  inspect.push_back(Sql("SELECT COALESCE(MAX(version), 0) FROM schema_version"));
  auto inspected = session.Run(inspect, deadline);
  if (!inspected) return inspected.error();
  const std::int64_t version = (*inspected)[3].Int64(0, 0);

  // The transaction (and the advisory lock) stays open across pipelines until COMMIT.
  std::vector<Query> migrate;
  if (version > kSchemaVersion) {
    migrate.push_back(Sql("ROLLBACK"));
    (void)session.Run(migrate, deadline);
    return StorageFailure("schema version " + std::to_string(version) +
                          " is newer than this build supports (" + std::to_string(kSchemaVersion) +
                          "); refusing to open it");
  }
  for (const Migration& migration : kMigrations) {
    if (migration.version <= version) continue;
    for (std::string_view statement : *migration.statements) migrate.push_back(Sql(statement));
  }
  if (version < kSchemaVersion) {
    migrate.push_back(Sql("DELETE FROM schema_version"));
    migrate.push_back(Query{"INSERT INTO schema_version (version) VALUES ($1::integer)",
                            {std::to_string(kSchemaVersion)}});
  }
  // The write probe's row (apart from the versioned schema: it holds no conversation data).
  migrate.push_back(Sql(kCreateHealth));
  migrate.push_back(Sql(kSeedHealth));
  migrate.push_back(Sql("COMMIT"));
  auto migrated = session.Run(migrate, deadline);
  if (!migrated) return migrated.error();
  return Ok();
}

}  // namespace

// ---- The back end of PostgresConversationStore (see DbConversationStore) ----

// One queued write: its statements run inside the batch's transaction; after a successful commit
// `results` holds one result per statement.
struct PostgresWrite {
  std::vector<Query> queries;
  std::vector<QueryResult> results;
};

class PostgresBackend : public BackendTypes<postgres::Session, postgres::Session, PostgresWrite> {
 public:
  explicit PostgresBackend(std::unique_ptr<postgres::Target> target) : target_(std::move(target)) {}

  static constexpr std::string_view kName = "PostgreSQL";

  static Result<OpenedBackend<PostgresBackend>> Open(const PostgresStoreOptions& options) {
    if (options.max_reconnect_backoff.count() < 0) {
      return MakeError(ErrorKind::kInvalidArgument,
                       "PostgreSQL store options need a non-negative max_reconnect_backoff");
    }
    auto parsed = postgres::ParseTarget(options.url);
    if (!parsed) return parsed.error();
    OpenedBackend<PostgresBackend> opened;
    opened.backend = std::make_unique<PostgresBackend>(
        std::make_unique<postgres::Target>(std::move(parsed).value()));
    const postgres::Target& target = *opened.backend->target_;

    // The writer connects and migrates first; readers connect on their first query.
    opened.writer = std::make_unique<Writer>(target, options.max_reconnect_backoff);
    if (auto migrated = Migrate(*opened.writer, WorkerClock::now() + options.operation_timeout);
        !migrated) {
      return Context("cannot open the conversation store", migrated.error());
    }
    for (std::size_t i = 0; i < options.reader_threads; ++i) {
      opened.readers.push_back(std::make_unique<Reader>(target, options.max_reconnect_backoff));
    }
    return opened;
  }

  // BEGIN, the statements of `ops` and COMMIT as one pipeline: one round trip.
  static Status RunBatch(Writer& session, std::span<WriteOp* const> ops, Deadline deadline) {
    std::vector<Query> queries;
    queries.push_back(Sql("BEGIN"));
    for (WriteOp* op : ops) {
      for (Query& query : op->queries) queries.push_back(std::move(query));
    }
    queries.push_back(Sql("COMMIT"));
    auto results = session.Run(queries, deadline);
    if (!results) return results.error();
    std::size_t next = 1;  // results[0] is BEGIN's
    for (WriteOp* op : ops) {
      for (std::size_t k = 0; k < op->queries.size(); ++k) {
        op->results.push_back(std::move((*results)[next++]));
      }
    }
    return Ok();
  }

  // One autocommitted UPDATE. A failed connection was closed by the failure; Session reconnects
  // (with its own backoff) on this call.
  static Status Probe(Writer& session, Deadline deadline) {
    std::vector<Query> queries;
    queries.push_back(Sql(kProbeHealth));
    auto results = session.Run(queries, deadline);
    if (!results) return results.error();
    return Ok();
  }

  WriteOp AppendOp(Turn turn) {
    WriteOp op;
    op.queries.push_back(Query{
        std::string(kInsertTurn),
        {turn.user_id, FormatTimestamp(turn.prompt_time), turn.prompt, turn.request_id, turn.model,
         FormatTimestamp(turn.completion_time), turn.completion, OptionalNumber(turn.prompt_tokens),
         OptionalNumber(turn.completion_tokens), std::to_string(turn.latency_ms), turn.owner}});
    return op;
  }

  Status Appended(const Status& committed, WriteOp&) { return committed; }

  WriteOp DeleteOp(std::string owner, std::string user_id) {
    WriteOp op;
    op.queries.push_back(Query{"DELETE FROM messages WHERE owner = $2 AND user_id = $1",
                               {std::move(user_id), std::move(owner)}});
    return op;
  }

  Result<std::int64_t> Deleted(const Status& committed, WriteOp& op) {
    if (!committed) return committed.error();
    return op.results.front().AffectedRows();
  }

  // The oldest rows by id come from the primary key's index (a LIMIT in id order); autovacuum
  // makes their space reusable later, so a step reports no free pages.
  WriteOp RetentionOp(std::string cutoff_timestamp, std::size_t max_rows) {
    WriteOp op;
    op.queries.push_back(
        Query{R"sql(DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id )sql"
              R"sql(LIMIT $2::bigint) AND "timestamp" < $1::timestamp)sql",
              {std::move(cutoff_timestamp), SqlLimit(max_rows)}});
    return op;
  }

  Result<RetentionBatch> Retained(const Status& committed, WriteOp& op) {
    if (!committed) return committed.error();
    RetentionBatch batch;
    batch.deleted = op.results.front().AffectedRows();
    return batch;
  }

  Result<std::vector<StoredMessage>> Recent(Reader& session, Deadline deadline,
                                            const std::string& owner, const std::string& user_id,
                                            std::size_t max_messages) {
    // Newest first with a LIMIT walks the (owner, user_id, id) index backwards; the page is then
    // reversed to the oldest-first order callers want.
    std::vector<Query> queries;
    queries.push_back(
        Query{std::string(kSelectColumns) +
                  "WHERE owner = $3 AND user_id = $1 ORDER BY id DESC LIMIT $2::bigint",
              {user_id, max_messages == 0 ? std::nullopt : SqlLimit(max_messages), owner}});
    auto results = session.Run(queries, deadline);
    if (!results) return Context("database read failed", results.error());
    const QueryResult& rows = results->front();
    std::vector<StoredMessage> messages;
    messages.reserve(static_cast<std::size_t>(rows.Rows()));
    for (int row = rows.Rows() - 1; row >= 0; --row) messages.push_back(ReadMessage(rows, row));
    return messages;
  }

  Result<MessagePage> List(Reader& session, Deadline deadline, const std::string& owner,
                           const std::string& user_id, std::int64_t after_id, std::size_t limit) {
    // One row more than asked tells whether another page exists.
    std::vector<Query> queries;
    queries.push_back(Query{
        std::string(kSelectColumns) +
            "WHERE owner = $4 AND user_id = $1 AND id > $2::bigint ORDER BY id ASC "
            "LIMIT $3::bigint",
        {user_id, std::to_string(after_id),
         SqlLimit(limit == std::numeric_limits<std::size_t>::max() ? limit : limit + 1), owner}});
    auto results = session.Run(queries, deadline);
    if (!results) return Context("database read failed", results.error());
    const QueryResult& rows = results->front();
    MessagePage page;
    for (int row = 0; row < rows.Rows(); ++row) {
      if (page.messages.size() == limit) {
        page.has_more = true;
        break;
      }
      page.messages.push_back(ReadMessage(rows, row));
    }
    return page;
  }

  Status Ping(Reader& session, Deadline deadline) {
    std::vector<Query> queries;
    queries.push_back(Sql("SELECT 1"));
    auto results = session.Run(queries, deadline);
    if (!results) return Context("database read failed", results.error());
    return Ok();
  }

 private:
  // The parsed URL the sessions connect to; outlives them (the store destroys its back end
  // after the workers and their sessions).
  const std::unique_ptr<postgres::Target> target_;
};

template class DbConversationStore<PostgresBackend, PostgresStoreOptions>;

}  // namespace staple::store
