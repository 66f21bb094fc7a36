#include "store/postgres/postgres_conversation_store.h"

#include <algorithm>
#include <exception>
#include <limits>
#include <optional>
#include <string_view>
#include <system_error>
#include <utility>

#include "common/await.h"

namespace staple::store {

using postgres::Clock;
using postgres::Deadline;
using postgres::Query;
using postgres::QueryResult;

namespace {

Error Unavailable(std::string message) {
  return MakeError(ErrorKind::kUnavailable, std::move(message));
}

Error ClosedError() { return Unavailable("conversation store is closed"); }

Error TimedOut() { return Unavailable("PostgreSQL operation timed out before it could run"); }

// Prefixes a back-end error with what was being done, keeping its kind.
Error Context(std::string_view what, const Error& error) {
  return MakeError(error.kind, std::string(what) + ": " + error.message);
}

// ---- Schema ----
//
// The same tables as the SQLite store. Every schema change is one migration that moves the
// single row of `schema_version` from `version - 1` to `version`, inside the transaction that
// holds kMigrationLock: replicas starting together take turns, and the later ones find the work
// done. PostgreSQL's DDL is transactional, so a crash never leaves a half-migrated database.

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

struct Migration {
  std::int64_t version;  // the schema version after this migration
  const std::vector<std::string_view>* statements;
};

const std::vector<Migration> kMigrations = {{1, &kMigrationToVersion1}};

Query Sql(std::string_view sql) { return Query{std::string(sql), {}}; }

// `timestamp` is stored as TIMESTAMP (UTC, no zone) and read back in the SQLite store's format.
constexpr std::string_view kSelectColumns =
    R"sql(SELECT id, user_id, to_char("timestamp", 'YYYY-MM-DD HH24:MI:SS.US'), role, content, )sql"
    "request_id, model, prompt_tokens, completion_tokens, latency_ms FROM messages ";

constexpr std::string_view kInsertTurn =
    R"sql(INSERT INTO messages (user_id, "timestamp", role, content, request_id, model, )sql"
    "prompt_tokens, completion_tokens, latency_ms) VALUES "
    "($1, $2::timestamp, 'user', $3, $4, $5, NULL, NULL, NULL), "
    "($1, $6::timestamp, 'assistant', $7, $4, $5, $8::bigint, $9::bigint, $10::bigint)";

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

// Whether PostgreSQL accepts `text` in a UTF-8 TEXT column: well-formed UTF-8 without NUL.
bool StorableText(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte == 0) return false;
    if (byte < 0x80) {
      ++i;
      continue;
    }
    std::size_t length = 0;
    std::uint32_t code = 0;
    if ((byte & 0xE0) == 0xC0) {
      length = 2;
      code = byte & 0x1Fu;
    } else if ((byte & 0xF0) == 0xE0) {
      length = 3;
      code = byte & 0x0Fu;
    } else if ((byte & 0xF8) == 0xF0) {
      length = 4;
      code = byte & 0x07u;
    } else {
      return false;
    }
    if (i + length > text.size()) return false;
    for (std::size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80) return false;
      code = (code << 6) | (next & 0x3Fu);
    }
    constexpr std::uint32_t kMinimum[] = {0, 0, 0x80, 0x800, 0x10000};
    if (code < kMinimum[length] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
      return false;
    }
    i += length;
  }
  return true;
}

}  // namespace

// ---- Session: one connection plus its reconnection policy, used by one thread ----

class PostgresConversationStore::Session {
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
    const auto now = Clock::now();
    if (now < next_attempt_) {
      const auto wait = std::chrono::ceil<std::chrono::milliseconds>(next_attempt_ - now);
      return Unavailable(last_error_ + " (next attempt in " + std::to_string(wait.count()) +
                         " ms)");
    }
    Status connected = connection_.Connect(deadline);
    if (connected) {
      backoff_ = std::chrono::milliseconds(0);
      return Ok();
    }
    backoff_ = backoff_.count() == 0 ? std::chrono::milliseconds(100)
                                     : std::min(backoff_ * 2, max_backoff_);
    next_attempt_ = Clock::now() + backoff_;
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
  if (version > PostgresConversationStore::kSchemaVersion) {
    migrate.push_back(Sql("ROLLBACK"));
    (void)session.Run(migrate, deadline);
    return Unavailable(
        "schema version " + std::to_string(version) + " is newer than this build supports (" +
        std::to_string(PostgresConversationStore::kSchemaVersion) + "); refusing to open it");
  }
  for (const Migration& migration : kMigrations) {
    if (migration.version <= version) continue;
    for (std::string_view statement : *migration.statements) migrate.push_back(Sql(statement));
  }
  if (version < PostgresConversationStore::kSchemaVersion) {
    migrate.push_back(Sql("DELETE FROM schema_version"));
    migrate.push_back(Query{"INSERT INTO schema_version (version) VALUES ($1::integer)",
                            {std::to_string(PostgresConversationStore::kSchemaVersion)}});
  }
  migrate.push_back(Sql("COMMIT"));
  auto migrated = session.Run(migrate, deadline);
  if (!migrated) return migrated.error();
  return Ok();
}

}  // namespace

// ---- Opening and closing ----

Result<std::unique_ptr<PostgresConversationStore>> PostgresConversationStore::Open(
    PostgresStoreOptions options) {
  if (options.max_batch == 0 || options.reader_threads == 0 ||
      options.operation_timeout.count() <= 0 || options.max_reconnect_backoff.count() < 0) {
    return MakeError(ErrorKind::kInvalidArgument,
                     "PostgreSQL store options need max_batch >= 1, reader_threads >= 1, a "
                     "positive operation_timeout and a non-negative max_reconnect_backoff");
  }
  auto parsed = postgres::ParseTarget(options.url);
  if (!parsed) return parsed.error();
  auto target = std::make_unique<postgres::Target>(std::move(parsed).value());

  // The writer connects and migrates first; readers connect on their first query.
  auto writer = std::make_unique<Session>(*target, options.max_reconnect_backoff);
  if (auto migrated = Migrate(*writer, Clock::now() + options.operation_timeout); !migrated) {
    return Context("cannot open the conversation store", migrated.error());
  }
  std::vector<std::unique_ptr<Session>> readers;
  for (std::size_t i = 0; i < options.reader_threads; ++i) {
    readers.push_back(std::make_unique<Session>(*target, options.max_reconnect_backoff));
  }
  auto store = std::unique_ptr<PostgresConversationStore>(new PostgresConversationStore(
      std::move(options), std::move(target), std::move(writer), std::move(readers)));
  if (auto started = store->StartThreads(); !started) return started.error();
  return store;
}

PostgresConversationStore::PostgresConversationStore(PostgresStoreOptions options,
                                                     std::unique_ptr<postgres::Target> target,
                                                     std::unique_ptr<Session> writer,
                                                     std::vector<std::unique_ptr<Session>> readers)
    : options_(std::move(options)),
      target_(std::move(target)),
      writer_(std::move(writer)),
      readers_(std::move(readers)) {}

Status PostgresConversationStore::StartThreads() {
  try {
    writer_thread_ = std::thread([this] { WriterLoop(); });
    reader_threads_.reserve(readers_.size());
    for (auto& reader : readers_) {
      reader_threads_.emplace_back([this, r = reader.get()] { ReaderLoop(*r); });
    }
  } catch (const std::system_error& e) {
    Close();
    return MakeError(ErrorKind::kInternal,
                     std::string("cannot start the PostgreSQL store's threads: ") + e.what());
  }
  return Ok();
}

PostgresConversationStore::~PostgresConversationStore() { Close(); }

void PostgresConversationStore::Close() {
  std::lock_guard close_lock(close_mu_);
  if (closed_) return;
  closed_ = true;

  // Stop accepting first; the threads then drain their queues (each operation still bounded by
  // its deadline) and exit.
  {
    std::lock_guard lock(write_mu_);
    write_closed_ = true;
  }
  write_cv_.notify_all();
  {
    std::lock_guard lock(read_mu_);
    read_closed_ = true;
  }
  read_cv_.notify_all();

  if (writer_thread_.joinable()) writer_thread_.join();
  for (std::thread& thread : reader_threads_) {
    if (thread.joinable()) thread.join();
  }
  readers_.clear();
  writer_.reset();
}

// ---- Writes ----

void PostgresConversationStore::SubmitWrite(WriteOp op) {
  {
    std::lock_guard lock(write_mu_);
    if (!write_closed_) {
      write_queue_.push_back(std::move(op));
      pending_writes_.fetch_add(1, std::memory_order_relaxed);
      write_cv_.notify_one();
      return;
    }
  }
  op.complete(ClosedError());
}

void PostgresConversationStore::WriterLoop() {
  std::vector<WriteOp> batch;
  batch.reserve(options_.max_batch);
  for (;;) {
    {
      std::unique_lock lock(write_mu_);
      write_cv_.wait(lock, [this] { return !write_queue_.empty() || write_closed_; });
      if (write_queue_.empty()) return;  // closed and drained
      // Group commit: whatever queued up during the previous round trip goes in one transaction.
      const std::size_t n = std::min(options_.max_batch, write_queue_.size());
      for (std::size_t i = 0; i < n; ++i) {
        batch.push_back(std::move(write_queue_.front()));
        write_queue_.pop_front();
      }
    }
    CommitBatch(batch);
    batch.clear();
  }
}

void PostgresConversationStore::CommitBatch(std::vector<WriteOp>& batch) {
  // Operations whose deadline passed while queued fail without touching the database; the rest
  // share one transaction bounded by the earliest remaining deadline.
  const Deadline now = Clock::now();
  Deadline deadline = Deadline::max();
  std::vector<Query> queries;
  queries.push_back(Sql("BEGIN"));
  std::vector<bool> expired(batch.size(), false);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].deadline <= now) {
      expired[i] = true;
      continue;
    }
    deadline = std::min(deadline, batch[i].deadline);
    for (Query& query : batch[i].queries) queries.push_back(std::move(query));
  }
  queries.push_back(Sql("COMMIT"));

  std::optional<Result<std::vector<QueryResult>>> results;
  if (deadline != Deadline::max()) {
    try {
      results.emplace(writer_->Run(queries, deadline));
    } catch (const std::exception& e) {
      results.emplace(MakeError(ErrorKind::kInternal, e.what()));
    }
    if (!results->ok()) {
      results.emplace(Unavailable("database write failed: " + results->error().message));
    }
  }

  // Not pending any more: a resumed caller sees its own write counted out.
  pending_writes_.fetch_sub(batch.size(), std::memory_order_relaxed);
  std::size_t next = 1;  // results[0] is BEGIN's
  for (std::size_t i = 0; i < batch.size(); ++i) {
    WriteOp& op = batch[i];
    if (expired[i]) {
      op.complete(TimedOut());
      continue;
    }
    if (!results->ok()) {
      op.complete(results->error());
      continue;
    }
    std::vector<QueryResult> own;
    for (std::size_t k = 0; k < op.queries.size(); ++k)
      own.push_back(std::move((**results)[next++]));
    op.complete(std::move(own));
  }
}

// The operations below are plain functions returning the awaitable that AwaitCallback builds,
// not coroutines: nothing runs until the caller awaits it, and no lambda is ever passed by value
// into a coroutine inside a co_await expression (g++ 12 then copies its captures bitwise and
// destroys them twice).

net::awaitable<Status> PostgresConversationStore::AppendTurn(Turn turn) {
  auto start = [this, turn = std::move(turn)](auto done) mutable {
    for (const std::string* text :
         {&turn.user_id, &turn.request_id, &turn.model, &turn.prompt, &turn.completion}) {
      if (!StorableText(*text)) {
        done(Status(MakeError(ErrorKind::kInvalidArgument,
                              "text with a NUL byte or invalid UTF-8 cannot be stored")));
        return;
      }
    }
    WriteOp op;
    op.deadline = Clock::now() + options_.operation_timeout;
    op.queries.push_back(Query{
        std::string(kInsertTurn),
        {turn.user_id, FormatTimestamp(turn.prompt_time), turn.prompt, turn.request_id, turn.model,
         FormatTimestamp(turn.completion_time), turn.completion, OptionalNumber(turn.prompt_tokens),
         OptionalNumber(turn.completion_tokens), std::to_string(turn.latency_ms)}});
    op.complete = [done](Result<std::vector<QueryResult>> results) {
      done(results ? Ok() : Status(results.error()));
    };
    SubmitWrite(std::move(op));
  };
  return AwaitCallback<Status>(std::move(start));
}

net::awaitable<Result<std::int64_t>> PostgresConversationStore::DeleteMessages(
    std::string user_id) {
  using Deleted = Result<std::int64_t>;
  auto start = [this, user_id = std::move(user_id)](auto done) mutable {
    WriteOp op;
    op.deadline = Clock::now() + options_.operation_timeout;
    op.queries.push_back(Query{"DELETE FROM messages WHERE user_id = $1", {std::move(user_id)}});
    op.complete = [done](Result<std::vector<QueryResult>> results) {
      done(results ? Deleted(results->front().AffectedRows()) : Deleted(results.error()));
    };
    SubmitWrite(std::move(op));
  };
  return AwaitCallback<Deleted>(std::move(start));
}

std::size_t PostgresConversationStore::PendingWrites() const {
  return pending_writes_.load(std::memory_order_relaxed);
}

// ---- Reads ----

void PostgresConversationStore::SubmitRead(ReadJob job) {
  {
    std::lock_guard lock(read_mu_);
    if (!read_closed_) {
      read_queue_.push_back(std::move(job));
      read_cv_.notify_one();
      return;
    }
  }
  job(nullptr);
}

void PostgresConversationStore::ReaderLoop(Session& session) {
  for (;;) {
    ReadJob job;
    {
      std::unique_lock lock(read_mu_);
      read_cv_.wait(lock, [this] { return !read_queue_.empty() || read_closed_; });
      if (read_queue_.empty()) return;  // closed and drained
      job = std::move(read_queue_.front());
      read_queue_.pop_front();
    }
    job(&session);
  }
}

template <typename R, typename QueryFn>
net::awaitable<R> PostgresConversationStore::RunRead(QueryFn query) {
  auto start = [this, query = std::move(query)](auto done) mutable {
    const Deadline deadline = Clock::now() + options_.operation_timeout;
    SubmitRead([query, done, deadline](Session* session) {
      if (session == nullptr) {
        done(R(ClosedError()));
        return;
      }
      if (Clock::now() >= deadline) {
        done(R(TimedOut()));
        return;
      }
      std::optional<R> result;
      try {
        result.emplace(query(*session, deadline));
      } catch (const std::exception& e) {
        result.emplace(MakeError(ErrorKind::kInternal, e.what()));
      }
      done(std::move(*result));
    });
  };
  return AwaitCallback<R>(std::move(start));
}

net::awaitable<Result<std::vector<StoredMessage>>> PostgresConversationStore::RecentMessages(
    std::string user_id, std::size_t max_messages) {
  using Messages = Result<std::vector<StoredMessage>>;
  auto query = [user_id = std::move(user_id), max_messages](Session& session,
                                                            Deadline deadline) -> Messages {
    // Newest first with a LIMIT walks the (user_id, id) index backwards; the page is then
    // reversed to the oldest-first order callers want.
    std::vector<Query> queries;
    queries.push_back(
        Query{std::string(kSelectColumns) + "WHERE user_id = $1 ORDER BY id DESC LIMIT $2::bigint",
              {user_id, max_messages == 0 ? std::nullopt : SqlLimit(max_messages)}});
    auto results = session.Run(queries, deadline);
    if (!results) return Context("database read failed", results.error());
    const QueryResult& rows = results->front();
    std::vector<StoredMessage> messages;
    messages.reserve(static_cast<std::size_t>(rows.Rows()));
    for (int row = rows.Rows() - 1; row >= 0; --row) messages.push_back(ReadMessage(rows, row));
    return messages;
  };
  return RunRead<Messages>(std::move(query));
}

net::awaitable<Result<MessagePage>> PostgresConversationStore::ListMessages(std::string user_id,
                                                                            std::int64_t after_id,
                                                                            std::size_t limit) {
  using Page = Result<MessagePage>;
  auto query = [user_id = std::move(user_id), after_id, limit](Session& session,
                                                               Deadline deadline) -> Page {
    // One row more than asked tells whether another page exists.
    std::vector<Query> queries;
    queries.push_back(
        Query{std::string(kSelectColumns) +
                  "WHERE user_id = $1 AND id > $2::bigint ORDER BY id ASC LIMIT $3::bigint",
              {user_id, std::to_string(after_id),
               SqlLimit(limit == std::numeric_limits<std::size_t>::max() ? limit : limit + 1)}});
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
  };
  return RunRead<Page>(std::move(query));
}

net::awaitable<Status> PostgresConversationStore::Ping() {
  auto query = [](Session& session, Deadline deadline) -> Status {
    std::vector<Query> queries;
    queries.push_back(Sql("SELECT 1"));
    auto results = session.Run(queries, deadline);
    if (!results) return Context("database read failed", results.error());
    return Ok();
  };
  return RunRead<Status>(std::move(query));
}

}  // namespace staple::store
