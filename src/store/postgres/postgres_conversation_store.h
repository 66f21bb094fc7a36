#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "store/conversation_store.h"
#include "store/db_workers.h"
#include "store/postgres/pg_connection.h"

namespace staple::store {

// Besides these, the thread, queue and deadline settings of StoreThreadOptions; the deadline
// (`operation_timeout`) includes connecting: a server that is down or stops answering turns into
// kUnavailable, never a hang.
struct PostgresStoreOptions : StoreThreadOptions {
  // postgresql://user:password@host:port/dbname (or postgres://…), with optional libpq
  // parameters (?sslmode=…). The password never appears in an error message.
  std::string url;
  // After a failed connection attempt, calls fail at once with kUnavailable until the next
  // attempt; the wait doubles from 100 ms up to this after each failure and resets on success.
  std::chrono::milliseconds max_reconnect_backoff{2000};
};

// ConversationStore over a PostgreSQL database shared by any number of Staple replicas
// (DESIGN.md §2).
//
// Threads (a DbWorkers): one writer thread owns a write connection and commits queued AppendTurn
// and DeleteMessages operations in groups of up to `max_batch` per transaction, sent as one libpq
// pipeline (BEGIN, the statements, COMMIT: one round trip); `reader_threads` threads own read
// connections and serve RecentMessages, ListMessages and Ping. libpq runs only on these threads,
// in non-blocking mode with poll() bounded by each operation's deadline.
//
// Failures: a lost connection fails the operations that were using it with kUnavailable; the next
// call reconnects (with backoff after failed attempts).
//
// Schema: the same as SqliteConversationStore's: table `messages` (id BIGSERIAL), index
// (user_id, id), view `message` with the seed's five columns, versioned by a `schema_version`
// table. Open() creates or migrates it inside one transaction holding a transaction-level
// advisory lock, so replicas starting together migrate once; it refuses newer versions.
class PostgresConversationStore final : public ConversationStore {
 public:
  // The schema version this build creates, migrates to and understands.
  static constexpr std::int64_t kSchemaVersion = 1;

  // Connects, creates or migrates the schema, then starts the threads. Fails with
  // kInvalidArgument for unusable options or URL and kUnavailable, naming the server (without the
  // password), when it cannot be reached or migrated within `operation_timeout`.
  static Result<std::unique_ptr<PostgresConversationStore>> Open(PostgresStoreOptions options);

  // Calls Close().
  ~PostgresConversationStore() override;

  PostgresConversationStore(const PostgresConversationStore&) = delete;
  PostgresConversationStore& operator=(const PostgresConversationStore&) = delete;

  // Like every write, reports kUnavailable when its COMMIT was sent but not acknowledged (the
  // connection broke, the deadline passed), even though the server may have committed it.
  net::awaitable<Status> AppendTurn(Turn turn) override;
  net::awaitable<Result<std::vector<StoredMessage>>> RecentMessages(
      std::string user_id, std::size_t max_messages) override;
  net::awaitable<Result<MessagePage>> ListMessages(std::string user_id, std::int64_t after_id,
                                                   std::size_t limit) override;
  net::awaitable<Result<std::int64_t>> DeleteMessages(std::string user_id) override;
  net::awaitable<Status> Ping() override;
  std::size_t PendingWrites() const override;

  // See ConversationStore::Close and DbWorkers::Close; every queued operation is still bounded by
  // its deadline, so a server that stopped answering delays Close by at most one deadline per
  // batch. Idempotent and safe to call from several threads; must not be called from an I/O
  // thread that awaits this store.
  void Close() override;

 private:
  class Session;
  // A queued write: its statements run inside the batch's transaction; after a successful commit
  // `results` holds one result per statement.
  struct WriteOp {
    std::vector<postgres::Query> queries;
    std::vector<postgres::QueryResult> results;
  };
  using Workers = DbWorkers<Session, Session, WriteOp>;

  PostgresConversationStore(PostgresStoreOptions options, std::unique_ptr<postgres::Target> target);

  // Sends BEGIN, the statements of `ops` and COMMIT as one pipeline (one round trip).
  static Status RunBatch(Session& session, std::span<WriteOp* const> ops, Deadline deadline);

  // Constant after construction.
  const PostgresStoreOptions options_;
  // The parsed URL the sessions connect to; outlives them.
  const std::unique_ptr<postgres::Target> target_;

  // Set by Open(); owns the sessions.
  std::unique_ptr<Workers> workers_;
};

}  // namespace staple::store
