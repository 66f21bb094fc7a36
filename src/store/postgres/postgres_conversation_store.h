#pragma once

#include <chrono>
#include <string>

#include "store/db_conversation_store.h"
#include "store/db_workers.h"

namespace staple::store {

// Besides these, the thread, queue and deadline settings of StoreThreadOptions; the deadline
// (`operation_timeout`) includes connecting: a server that is down or stops answering turns into
// kStorage, never a hang.
struct PostgresStoreOptions : StoreThreadOptions {
  // postgresql://user:password@host:port/dbname (or postgres://…), with optional libpq
  // parameters (?sslmode=…). The password never appears in an error message.
  std::string url;
  // After a failed connection attempt, calls fail at once with kStorage until the next
  // attempt; the wait doubles from 100 ms up to this after each failure and resets on success.
  std::chrono::milliseconds max_reconnect_backoff{2000};
};

// The PostgreSQL side of PostgresConversationStore; defined in postgres_conversation_store.cpp.
class PostgresBackend;

// ConversationStore over a PostgreSQL database shared by any number of Staple replicas
// (DESIGN.md §2), on the shared DbConversationStore. PostgresConversationStore::Open(options)
// connects, creates or migrates the schema, then starts the threads; it fails with
// kInvalidArgument for unusable options or URL and kStorage, naming the server (without the
// password), when it cannot be reached or migrated within `operation_timeout`.
//
// Threads: the writer thread owns a write connection and commits queued writes (AppendTurn,
// DeleteMessages, the Responses and Conversations writes) in groups of up to `max_batch` per
// transaction, sent as one libpq pipeline (BEGIN, the statements, COMMIT: one round trip); an
// expected condition never fails a statement (appending to a missing conversation inserts
// nothing), so that one write does not fail the others of its batch. `reader_threads` threads own
// read connections and serve the reads and Ping, each read one statement (a response chain is one
// recursive query). libpq runs only on these threads, in non-blocking mode with poll() bounded by
// each operation's deadline.
//
// Failures: a lost connection fails the operations that were using it with kStorage; the next
// call reconnects (with backoff after failed attempts). A write whose COMMIT was sent but not
// acknowledged reports kStorage even though the server may have committed it.
//
// Schema: the same as SqliteConversationStore's: table `messages` (id BIGSERIAL, owner), index
// (owner, user_id, id), view `message` with the seed's five columns; tables `responses`,
// `conversations` and `items` (seq BIGSERIAL) with indexes (owner, response_id, output, seq) and
// (owner, conversation_id, seq); versioned by a `schema_version` table (version 3). Open() creates
// or migrates it inside one transaction holding a transaction-level advisory lock, so replicas
// starting together migrate once; it refuses newer versions.
using PostgresConversationStore = DbConversationStore<PostgresBackend, PostgresStoreOptions>;
extern template class DbConversationStore<PostgresBackend, PostgresStoreOptions>;

}  // namespace staple::store
