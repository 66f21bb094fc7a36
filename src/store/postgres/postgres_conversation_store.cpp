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
constexpr std::int64_t kSchemaVersion = 5;

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

// Version 3: the Responses and Conversations APIs' state. Every stored item is one `items` row,
// numbered by `seq` in insertion order: a response's input or output item (response_id), in a
// conversation (conversation_id), or both (a stored turn's items in its response's
// conversation). Item ids are not unique: a client may send the same id twice.
const std::vector<std::string_view> kMigrationToVersion3 = {
    R"sql(CREATE TABLE IF NOT EXISTS responses (
  id TEXT,
  owner TEXT NOT NULL,
  conversation_id TEXT,
  previous_response_id TEXT,
  created_at BIGINT NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (owner, id)
))sql",
    R"sql(CREATE TABLE IF NOT EXISTS conversations (
  id TEXT,
  owner TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  metadata TEXT NOT NULL,
  PRIMARY KEY (owner, id)
))sql",
    R"sql(CREATE TABLE IF NOT EXISTS items (
  seq BIGSERIAL PRIMARY KEY,
  owner TEXT NOT NULL,
  id TEXT NOT NULL,
  response_id TEXT,
  output BOOLEAN NOT NULL DEFAULT false,
  conversation_id TEXT,
  body TEXT NOT NULL
))sql",
    "CREATE INDEX IF NOT EXISTS items_owner_response_id_output_seq ON items "
    "(owner, response_id, output, seq)",
    "CREATE INDEX IF NOT EXISTS items_owner_conversation_id_seq ON items "
    "(owner, conversation_id, seq)",
};

// Version 4: which upstream answered a turn (several upstreams behind one Staple).
const std::vector<std::string_view> kMigrationToVersion4 = {
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS upstream TEXT",
};

// Version 5: the state epoch, one row that every delete of a response or of items increments in
// its own transaction (ConversationStore::StateEpoch), so that the response chains a replica keeps
// in memory are forgotten when any replica deletes from them.
const std::vector<std::string_view> kMigrationToVersion5 = {
    "CREATE TABLE IF NOT EXISTS state_epoch (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "value BIGINT NOT NULL)",
    "INSERT INTO state_epoch (id, value) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
};

struct Migration {
  std::int64_t version;  // the schema version after this migration
  const std::vector<std::string_view>* statements;
};

const std::vector<Migration> kMigrations = {{1, &kMigrationToVersion1},
                                            {2, &kMigrationToVersion2},
                                            {3, &kMigrationToVersion3},
                                            {4, &kMigrationToVersion4},
                                            {5, &kMigrationToVersion5}};

Query Sql(std::string_view sql) { return Query{std::string(sql), {}}; }

// The part of a delete's statement (`WITH gone AS (DELETE … RETURNING 1), <this> SELECT …`) that
// increments the state epoch when the delete removed rows, in the same statement and so the same
// transaction (a data-modifying WITH runs whether or not the SELECT reads it).
constexpr std::string_view kBumpEpochIfGone =
    "bump AS (UPDATE state_epoch SET value = value + 1 WHERE id = 1 AND EXISTS (SELECT 1 FROM "
    "gone))";

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
    "prompt_tokens, completion_tokens, latency_ms, owner, upstream) VALUES "
    "($1, $2::timestamp, 'user', $3, $4, $5, NULL, NULL, NULL, $11, NULL), "
    "($1, $6::timestamp, 'assistant', $7, $4, $5, $8::bigint, $9::bigint, $10::bigint, $11, $12)";

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

// The history columns of a conversation's messages (RecentMessages), read by ReadHistoryMessage.
constexpr std::string_view kSelectHistoryColumns = "SELECT id, role, content FROM messages ";

HistoryMessage ReadHistoryMessage(const QueryResult& rows, int row) {
  HistoryMessage message;
  message.id = rows.Int64(row, 0);
  message.role = rows.Text(row, 1);
  message.content = rows.Text(row, 2);
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

// "" as SQL NULL (the optional text columns of the state).
std::optional<std::string> NullIfEmpty(const std::string& text) {
  if (text.empty()) return std::nullopt;
  return text;
}

// ---- The Responses and Conversations state ----

// Items inserted by one statement at most: two parameters each, well below the protocol's 65535.
constexpr std::size_t kItemsPerInsert = 1000;

// The columns a StoredItem is read from, in this order.
constexpr std::string_view kItemColumns = "seq, id, response_id, output, body";

StoredItem ReadItem(const QueryResult& rows, int row) {
  StoredItem item;
  item.seq = rows.Int64(row, 0);
  item.id = rows.Text(row, 1);
  item.response_id = rows.Text(row, 2);
  item.output = rows.Text(row, 3) == "t";
  item.json = rows.Text(row, 4);
  return item;
}

// Where inserted items go: `conversation` is the SQL of their conversation_id (over parameters
// $1 owner, $2 response_id, $3 conversation id); `condition` a WHERE clause that may stop the
// whole insert ("" for none).
struct ItemTarget {
  std::string_view conversation;
  std::string_view condition;
};

// A stored turn's items join its response's conversation only if that conversation exists. The
// key-share lock (which a DELETE waits for, a metadata UPDATE does not) keeps a concurrent delete
// from leaving them behind it.
constexpr ItemTarget kTurnItems = {
    "(SELECT c.id FROM conversations c WHERE c.owner = $1 AND c.id = $3 FOR KEY SHARE)", ""};
// The initial items of a conversation created in the same transaction.
constexpr ItemTarget kNewConversationItems = {"$3", ""};
// Items appended to a conversation: nothing is inserted when it does not exist (locked as above).
constexpr ItemTarget kAppendedItems = {
    "$3",
    " WHERE EXISTS (SELECT 1 FROM conversations c WHERE c.owner = $1 AND c.id = $3 FOR KEY SHARE)"};

// Appends to `queries` the INSERTs of `items` (output items from `first_output` on), in order:
// the VALUES rows are numbered and inserted in that order, so `seq` grows with it. Each INSERT
// returns the seq of its rows.
void InsertItems(std::vector<Query>& queries, const std::string& owner,
                 const std::optional<std::string>& response_id,
                 const std::optional<std::string>& conversation_id,
                 const std::vector<const ItemToStore*>& items, std::size_t first_output,
                 const ItemTarget& target) {
  for (std::size_t start = 0; start < items.size(); start += kItemsPerInsert) {
    const std::size_t end = std::min(items.size(), start + kItemsPerInsert);
    Query query;
    query.sql =
        "INSERT INTO items (owner, id, response_id, output, conversation_id, body) "
        "SELECT $1, v.id, $2, v.output, ";
    query.sql += target.conversation;
    query.sql += ", v.body FROM (VALUES ";
    query.params = {owner, response_id, conversation_id};
    for (std::size_t i = start; i < end; ++i) {
      const std::size_t param = query.params.size() + 1;
      if (i != start) query.sql += ", ";
      query.sql += "($" + std::to_string(param) + "::text, " +
                   (i >= first_output ? "true" : "false") + ", $" + std::to_string(param + 1) +
                   "::text, " + std::to_string(i) + ")";
      query.params.push_back(items[i]->id);
      query.params.push_back(items[i]->json);
    }
    query.sql += ") AS v (id, output, body, ord)";
    query.sql += target.condition;
    query.sql += " ORDER BY v.ord RETURNING seq";
    queries.push_back(std::move(query));
  }
}

std::vector<const ItemToStore*> Pointers(const std::vector<ItemToStore>& items) {
  std::vector<const ItemToStore*> pointers;
  pointers.reserve(items.size());
  for (const ItemToStore& item : items) pointers.push_back(&item);
  return pointers;
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
  // A StateChange's write: what StateChanged reads `results` for.
  StateChange change;
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

  // The turn's two rows; for a stored Responses turn, also its response row and its items
  // (input then output), all in the batch's transaction.
  WriteOp AppendOp(Turn turn) {
    WriteOp op;
    op.queries.push_back(
        Query{std::string(kInsertTurn),
              {turn.user_id, FormatTimestamp(turn.prompt_time), turn.prompt, turn.request_id,
               turn.model, FormatTimestamp(turn.completion_time), turn.completion,
               OptionalNumber(turn.prompt_tokens), OptionalNumber(turn.completion_tokens),
               std::to_string(turn.latency_ms), turn.owner, NullIfEmpty(turn.upstream)}});
    if (turn.response) {
      const ResponseRecord* record = turn.response.get();
      const StoredResponse& response = record->response;
      op.queries.push_back(
          Query{"INSERT INTO responses (id, owner, conversation_id, previous_response_id, "
                "created_at, body) VALUES ($1, $2, $3, $4, $5::bigint, $6)",
                {response.id, turn.owner, NullIfEmpty(response.conversation_id),
                 NullIfEmpty(response.previous_response_id), std::to_string(response.created_at),
                 response.json}});
      std::vector<const ItemToStore*> items = Pointers(record->input);
      for (const ItemToStore& item : record->output) items.push_back(&item);
      InsertItems(op.queries, turn.owner, response.id, NullIfEmpty(response.conversation_id), items,
                  record->input.size(), kTurnItems);
    }
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

  Result<History> Recent(Reader& session, Deadline deadline, const std::string& owner,
                         const std::string& user_id, std::size_t max_messages) {
    // Newest first with a LIMIT walks the (owner, user_id, id) index backwards; the page is then
    // reversed to the oldest-first order callers want.
    std::vector<Query> queries;
    queries.push_back(
        Query{std::string(kSelectHistoryColumns) +
                  "WHERE owner = $3 AND user_id = $1 ORDER BY id DESC LIMIT $2::bigint",
              {user_id, max_messages == 0 ? std::nullopt : SqlLimit(max_messages), owner}});
    auto results = session.Run(queries, deadline);
    if (!results) return Context("database read failed", results.error());
    const QueryResult& rows = results->front();
    History messages;
    messages.reserve(static_cast<std::size_t>(rows.Rows()));
    for (int row = rows.Rows() - 1; row >= 0; --row) {
      messages.push_back(std::make_shared<const HistoryMessage>(ReadHistoryMessage(rows, row)));
    }
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

  // ---- The Responses and Conversations state ----

  // Every statement is decided inside the transaction (a missing conversation inserts nothing
  // rather than failing), so one change never fails the other writes of its batch.
  WriteOp StateOp(StateChange change) {
    WriteOp op;
    const std::string& owner = change.owner;
    switch (change.kind) {
      case StateChange::Kind::kDeleteResponse:
        // The state epoch grows with the deletion (ConversationStore::StateEpoch).
        op.queries.push_back(
            Query{std::string("WITH gone AS (DELETE FROM responses WHERE owner = $1 AND id = $2 "
                              "RETURNING 1), ") +
                      std::string(kBumpEpochIfGone) + " SELECT count(*) FROM gone",
                  {owner, change.id}});
        // Its items that a conversation holds stay there.
        op.queries.push_back(Query{
            "DELETE FROM items WHERE owner = $1 AND response_id = $2 AND conversation_id IS NULL",
            {owner, change.id}});
        break;
      case StateChange::Kind::kCreateConversation:
        op.queries.push_back(
            Query{"INSERT INTO conversations (id, owner, created_at, metadata) "
                  "VALUES ($1, $2, $3::bigint, $4)",
                  {change.conversation.id, owner, std::to_string(change.conversation.created_at),
                   change.conversation.metadata_json}});
        InsertItems(op.queries, owner, std::nullopt, change.conversation.id, Pointers(change.items),
                    change.items.size(), kNewConversationItems);
        break;
      case StateChange::Kind::kUpdateConversation:
        op.queries.push_back(
            Query{"UPDATE conversations SET metadata = $3 WHERE owner = $1 AND id = $2 "
                  "RETURNING id, created_at, metadata",
                  {owner, change.id, change.conversation.metadata_json}});
        break;
      case StateChange::Kind::kDeleteConversation:
        // The conversation first: its row lock makes a concurrent append (which key-share locks it)
        // either commit before the items are deleted or find no conversation.
        op.queries.push_back(
            Query{"DELETE FROM conversations WHERE owner = $1 AND id = $2", {owner, change.id}});
        op.queries.push_back(Query{
            std::string("WITH gone AS (DELETE FROM items WHERE owner = $1 AND conversation_id = $2 "
                        "RETURNING 1), ") +
                std::string(kBumpEpochIfGone) + " SELECT count(*) FROM gone",
            {owner, change.id}});
        break;
      case StateChange::Kind::kAppendItems:
        // Whether it exists, locked until the commit so that the inserts below agree.
        op.queries.push_back(
            Query{"SELECT 1 FROM conversations WHERE owner = $1 AND id = $2 FOR KEY SHARE",
                  {owner, change.id}});
        InsertItems(op.queries, owner, std::nullopt, change.id, Pointers(change.items),
                    change.items.size(), kAppendedItems);
        break;
      case StateChange::Kind::kDeleteItem:
        op.queries.push_back(Query{
            std::string("WITH gone AS (DELETE FROM items WHERE owner = $1 AND conversation_id = $2 "
                        "AND id = $3 RETURNING 1), ") +
                std::string(kBumpEpochIfGone) + " SELECT count(*) FROM gone",
            {owner, change.id, change.item_id}});
        break;
    }
    op.change = std::move(change);
    return op;
  }

  Result<StateOutcome> StateChanged(const Status& committed, WriteOp& op) {
    if (!committed) return committed.error();
    StateOutcome outcome;
    switch (op.change.kind) {
      case StateChange::Kind::kDeleteResponse:
      case StateChange::Kind::kDeleteItem:
        outcome.found = op.results.front().Int64(0, 0) > 0;  // count(*) of `gone`
        break;
      case StateChange::Kind::kDeleteConversation:
        outcome.found = op.results.front().AffectedRows() > 0;
        break;
      case StateChange::Kind::kCreateConversation:
        outcome.found = true;
        break;
      case StateChange::Kind::kUpdateConversation: {
        const QueryResult& rows = op.results.front();
        outcome.found = rows.Rows() > 0;
        if (outcome.found) {
          StoredConversation conversation;
          conversation.id = rows.Text(0, 0);
          conversation.created_at = rows.Int64(0, 1);
          conversation.metadata_json = rows.Text(0, 2);
          outcome.conversation = std::move(conversation);
        }
        break;
      }
      case StateChange::Kind::kAppendItems: {
        outcome.found = op.results.front().Rows() > 0;
        if (!outcome.found) break;
        // The items in order, with the seq each INSERT returned (its rows were numbered in
        // order; RETURNING need not list them so).
        std::vector<std::int64_t> seqs;
        for (std::size_t r = 1; r < op.results.size(); ++r) {
          const QueryResult& rows = op.results[r];
          std::vector<std::int64_t> chunk;
          for (int row = 0; row < rows.Rows(); ++row) chunk.push_back(rows.Int64(row, 0));
          std::sort(chunk.begin(), chunk.end());
          seqs.insert(seqs.end(), chunk.begin(), chunk.end());
        }
        if (seqs.size() != op.change.items.size()) {
          return StorageFailure("appended " + std::to_string(seqs.size()) + " of " +
                                std::to_string(op.change.items.size()) + " items");
        }
        for (std::size_t i = 0; i < seqs.size(); ++i) {
          StoredItem item;
          item.seq = seqs[i];
          item.id = std::move(op.change.items[i].id);
          item.json = std::move(op.change.items[i].json);
          outcome.items.push_back(std::move(item));
        }
        break;
      }
    }
    return outcome;
  }

  // Each query is one statement: one snapshot, one round trip.
  Result<StateAnswer> QueryState(Reader& session, Deadline deadline, const StateQuery& query) {
    std::vector<Query> queries;
    const std::string& owner = query.owner;
    const bool ascending = query.order == ItemOrder::kAscending;
    switch (query.kind) {
      case StateQuery::Kind::kResponse:
        queries.push_back(
            Query{"SELECT id, conversation_id, previous_response_id, created_at, body "
                  "FROM responses WHERE owner = $1 AND id = $2",
                  {owner, query.id}});
        break;
      case StateQuery::Kind::kResponseChain:
        // The chain's responses (UNION stops at a repeated row, so even a cycle ends), the most
        // recent of their items newest first (one more than asked: has_more), and one row with a
        // NULL item when the response exists but has none.
        queries.push_back(Query{
            std::string("WITH RECURSIVE chain (id, previous_response_id) AS ("
                        "SELECT id, previous_response_id FROM responses "
                        "WHERE owner = $1 AND id = $2 "
                        "UNION SELECT r.id, r.previous_response_id FROM chain c "
                        "JOIN responses r ON r.owner = $1 AND r.id = c.previous_response_id), "
                        "picked AS (SELECT i.seq, i.id, i.response_id, i.output, i.body "
                        "FROM chain c JOIN items i ON i.owner = $1 AND i.response_id = c.id "
                        "ORDER BY i.seq DESC LIMIT $3::bigint) "
                        "SELECT p.seq, p.id, p.response_id, p.output, p.body "
                        "FROM (SELECT 1 FROM responses WHERE owner = $1 AND id = $2) head "
                        "LEFT JOIN picked p ON true ORDER BY p.seq"),
            {owner, query.id, WindowLimit(query.max_items)}});
        break;
      case StateQuery::Kind::kConversationItems:
        queries.push_back(Query{std::string("SELECT p.seq, p.id, p.response_id, p.output, p.body "
                                            "FROM conversations c LEFT JOIN LATERAL (SELECT ") +
                                    std::string(kItemColumns) +
                                    " FROM items WHERE owner = $1 AND conversation_id = $2 "
                                    "ORDER BY seq DESC LIMIT $3::bigint) p ON true "
                                    "WHERE c.owner = $1 AND c.id = $2 ORDER BY p.seq",
                                {owner, query.id, WindowLimit(query.max_items)}});
        break;
      case StateQuery::Kind::kResponseItems:
        queries.push_back(
            ListingQuery("responses", "response_id = $2 AND output = $5::boolean", ascending));
        queries.back().params = {owner, query.id, query.after, SqlLimit(PageLimit(query.limit)),
                                 query.output ? "true" : "false"};
        break;
      case StateQuery::Kind::kConversationPage:
        queries.push_back(ListingQuery("conversations", "conversation_id = $2", ascending));
        queries.back().params = {owner, query.id, query.after, SqlLimit(PageLimit(query.limit))};
        break;
      case StateQuery::Kind::kConversation:
        queries.push_back(
            Query{"SELECT id, created_at, metadata FROM conversations WHERE owner = $1 AND id = $2",
                  {owner, query.id}});
        break;
      case StateQuery::Kind::kStateEpoch:
        queries.push_back(Sql("SELECT value FROM state_epoch WHERE id = 1"));
        break;
      case StateQuery::Kind::kConversationItem:
        queries.push_back(Query{
            std::string("SELECT ") + std::string(kItemColumns) +
                " FROM items WHERE owner = $1 AND conversation_id = $2 AND id = $3 AND EXISTS "
                "(SELECT 1 FROM conversations c WHERE c.owner = $1 AND c.id = $2) "
                "ORDER BY seq LIMIT 1",
            {owner, query.id, query.item_id}});
        break;
    }
    auto results = session.Run(queries, deadline);
    if (!results) return Context("database read failed", results.error());
    const QueryResult& rows = results->front();

    StateAnswer answer;
    switch (query.kind) {
      case StateQuery::Kind::kResponse:
        answer.found = rows.Rows() > 0;
        if (answer.found) {
          StoredResponse response;
          response.id = rows.Text(0, 0);
          response.conversation_id = rows.Text(0, 1);
          response.previous_response_id = rows.Text(0, 2);
          response.created_at = rows.Int64(0, 3);
          response.json = rows.Text(0, 4);
          answer.response = std::move(response);
        }
        break;
      case StateQuery::Kind::kResponseChain:
      case StateQuery::Kind::kConversationItems:
        answer.found = rows.Rows() > 0;
        for (int row = 0; row < rows.Rows(); ++row) {
          if (!rows.IsNull(row, 0)) answer.window.items.push_back(ReadItem(rows, row));
        }
        // Oldest first; the extra (oldest) row only says that more exist.
        if (query.max_items != 0 && answer.window.items.size() > query.max_items) {
          answer.window.items.erase(answer.window.items.begin());
          answer.window.has_more = true;
        }
        break;
      case StateQuery::Kind::kResponseItems:
      case StateQuery::Kind::kConversationPage: {
        bool after_found = query.after.empty();
        for (int row = 0; row < rows.Rows(); ++row) {
          if (rows.IsNull(row, 0)) {
            answer.found = true;
            if (!rows.IsNull(row, 5)) after_found = true;
          } else {
            answer.page.items.push_back(ReadItem(rows, row));
          }
        }
        if (!answer.found) break;
        if (!after_found) {
          return MakeError(ErrorKind::kNotFound, "no item '" + query.after + "' in this list");
        }
        std::sort(answer.page.items.begin(), answer.page.items.end(),
                  [ascending](const StoredItem& a, const StoredItem& b) {
                    return ascending ? a.seq < b.seq : a.seq > b.seq;
                  });
        if (answer.page.items.size() > query.limit) {
          answer.page.items.resize(query.limit);
          answer.page.has_more = true;
        }
        break;
      }
      case StateQuery::Kind::kConversation:
        answer.found = rows.Rows() > 0;
        if (answer.found) {
          StoredConversation conversation;
          conversation.id = rows.Text(0, 0);
          conversation.created_at = rows.Int64(0, 1);
          conversation.metadata_json = rows.Text(0, 2);
          answer.conversation = std::move(conversation);
        }
        break;
      case StateQuery::Kind::kConversationItem:
        answer.found = rows.Rows() > 0;
        if (answer.found) answer.item = ReadItem(rows, 0);
        break;
      case StateQuery::Kind::kStateEpoch:
        answer.found = rows.Rows() > 0;
        if (answer.found) answer.epoch = rows.Int64(0, 0);
        break;
    }
    return answer;
  }

 private:
  // A window's LIMIT: one row more than `max_items` (the extra one tells has_more), NULL for all.
  static std::optional<std::string> WindowLimit(std::size_t max_items) {
    if (max_items == 0) return std::nullopt;
    return SqlLimit(PageLimit(max_items));
  }

  // One row more than `limit` (the extra one tells has_more).
  static std::size_t PageLimit(std::size_t limit) {
    return limit == std::numeric_limits<std::size_t>::max() ? limit : limit + 1;
  }

  // One page of the items of a response or conversation (`parent`, the table the listing belongs
  // to, and `filter`, its items' condition over $2): a header row (NULL item; its sixth column
  // the position of `after`, NULL when `after` is not in the listing) when the parent exists,
  // then the items after that position in the listing's order, one more than asked. Parameters:
  // $1 owner, $2 the parent's id, $3 after ("" = from the start), $4 the LIMIT, then those of
  // `filter`. `after` is the first item with that id in the listing's order: the lowest seq
  // ascending, the highest descending.
  static Query ListingQuery(std::string_view parent, std::string_view filter, bool ascending) {
    const std::string items = "FROM items WHERE owner = $1 AND " + std::string(filter);
    const std::string anchor =
        "(SELECT " + std::string(ascending ? "min" : "max") + "(seq) " + items + " AND id = $3)";
    Query query;
    query.sql = "SELECT NULL::bigint, NULL::text, NULL::text, NULL::boolean, NULL::text, " +
                anchor + " FROM " + std::string(parent) + " WHERE owner = $1 AND id = $2 " +
                "UNION ALL (SELECT " + std::string(kItemColumns) + ", NULL::bigint " + items +
                " AND ($3 = '' OR seq " + (ascending ? ">" : "<") + " " + anchor +
                ") ORDER BY seq " + (ascending ? "ASC" : "DESC") + " LIMIT $4::bigint)";
    return query;
  }

  // The parsed URL the sessions connect to; outlives them (the store destroys its back end
  // after the workers and their sessions).
  const std::unique_ptr<postgres::Target> target_;
};

template class DbConversationStore<PostgresBackend, PostgresStoreOptions>;

}  // namespace staple::store
