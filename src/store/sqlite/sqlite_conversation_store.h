#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "store/conversation_store.h"
#include "store/db_workers.h"
#include "store/sqlite/history_cache.h"

namespace staple::store {

// How hard SQLite syncs the WAL at each commit (PRAGMA synchronous).
enum class SqliteSynchronous {
  kFull,    // every commit is on disk when AppendTurn completes (survives power loss)
  kNormal,  // commits survive a process crash; the last ones may be lost on power loss
};

// Besides these, the thread, queue and deadline settings of StoreThreadOptions.
struct SqliteStoreOptions : StoreThreadOptions {
  // The database file. Missing parent directories are created. Must be a file path, not
  // ":memory:" (the writer and the readers use separate connections to the same file).
  std::string path = "instance/chat_history.db";
  SqliteSynchronous synchronous = SqliteSynchronous::kFull;
  // How long a statement waits for a lock held by another process before failing.
  std::chrono::milliseconds busy_timeout{5000};
  // Bytes of the file SQLite may memory-map on each connection (PRAGMA mmap_size; 0 = none).
  std::int64_t mmap_size = 256 * 1024 * 1024;
};

// ConversationStore over one SQLite file in WAL mode (DESIGN.md §2).
//
// Threads (a DbWorkers): one writer thread owns the read-write connection and commits queued
// AppendTurn and DeleteMessages operations in groups of up to `max_batch` per transaction, in the
// order they were accepted; `reader_threads` threads own read-only connections and serve
// RecentMessages, ListMessages and Ping. No SQLite call runs on the caller's thread after Open().
//
// Schema: table `messages`, index (user_id, id), view `message` with the seed's five columns,
// versioned by PRAGMA user_version (kSchemaVersion). Open() migrates older files (including the
// seed's five-column `messages` table, keeping its rows) and refuses newer ones.
class SqliteConversationStore final : public ConversationStore {
 public:
  // The schema version this build creates, migrates to and understands.
  static constexpr std::int64_t kSchemaVersion = 1;

  // Opens (creating if needed) and migrates the database, then starts the threads. Fails with
  // kInvalidArgument for unusable options and kUnavailable, naming the path and SQLite's reason,
  // when the file cannot be opened, is not a database, or cannot be migrated.
  static Result<std::unique_ptr<SqliteConversationStore>> Open(SqliteStoreOptions options);

  // Calls Close().
  ~SqliteConversationStore() override;

  SqliteConversationStore(const SqliteConversationStore&) = delete;
  SqliteConversationStore& operator=(const SqliteConversationStore&) = delete;

  net::awaitable<Status> AppendTurn(Turn turn) override;
  // Serves the conversation's newest rows from a HistoryCache when the (user_id, id) index shows
  // that the cached rows are still exactly the stored ones, else from the table.
  net::awaitable<Result<std::vector<StoredMessage>>> RecentMessages(
      std::string user_id, std::size_t max_messages) override;
  net::awaitable<Result<MessagePage>> ListMessages(std::string user_id, std::int64_t after_id,
                                                   std::size_t limit) override;
  // Also drops the conversation from the HistoryCache once the deletion is committed.
  net::awaitable<Result<std::int64_t>> DeleteMessages(std::string user_id) override;
  net::awaitable<Status> Ping() override;
  std::size_t PendingWrites() const override;

  // See ConversationStore::Close and DbWorkers::Close. The writer's connection closes last, so
  // that SQLite checkpoints the WAL into the main file. Idempotent and safe to call from several
  // threads; must not be called from an I/O thread that awaits this store.
  void Close() override;

 private:
  class Writer;
  class Reader;
  // A queued write: runs on the writer thread inside the batch's transaction; an error aborts the
  // whole batch.
  using WriteOp = std::function<Status(Writer&)>;
  using Workers = DbWorkers<Writer, Reader, WriteOp>;

  explicit SqliteConversationStore(SqliteStoreOptions options);

  // Runs `ops` in one IMMEDIATE transaction; rolls it back when any of them fails.
  static Status RunBatch(Writer& writer, std::span<WriteOp* const> ops, Deadline deadline);

  // Constant after construction.
  const SqliteStoreOptions options_;

  // Shared by the writer (appends committed turns) and the readers; outlives workers_.
  HistoryCache history_;

  // Set by Open(); its threads use history_.
  std::unique_ptr<Workers> workers_;
};

}  // namespace staple::store
