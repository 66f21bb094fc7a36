#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "store/db_conversation_store.h"
#include "store/db_workers.h"

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
  // Memory of the HistoryCache (messages, their strings and bookkeeping). At least 1.
  std::size_t history_cache_bytes = 64 * 1024 * 1024;
  // SQLite's page cache of each connection, the writer's and every reader's (PRAGMA cache_size);
  // 0 keeps SQLite's default (2000 KiB).
  std::size_t page_cache_bytes = 0;
};

// The SQLite side of SqliteConversationStore; defined in sqlite_conversation_store.cpp.
class SqliteBackend;

// ConversationStore over one SQLite file in WAL mode (DESIGN.md §2), on the shared
// DbConversationStore. SqliteConversationStore::Open(options) opens (creating if needed) and
// migrates the database, then starts the threads; it fails with kInvalidArgument for unusable
// options and kStorage, naming the path and SQLite's reason, when the file cannot be opened,
// is not a database, or cannot be migrated.
//
// Threads: the writer thread owns the read-write connection and commits queued writes (AppendTurn,
// DeleteMessages, DeleteOlderThan and the changes of the Responses and Conversations state) in
// groups of up to `max_batch` per transaction, in the order they were accepted; `reader_threads`
// threads own read-only connections and serve the reads. The writer's connection closes last, so
// that SQLite checkpoints the WAL into the main file.
//
// RecentMessages serves a conversation's newest rows from a HistoryCache when the (owner, user_id,
// id) index shows that the cached rows are still exactly the stored ones, else from the table;
// committed turns and deletions update the cache before their callers resume.
//
// Schema: table `messages`, index (owner, user_id, id), view `message` with the seed's five
// columns; tables `responses`, `conversations` and `items` for the Responses and Conversations
// state; versioned by PRAGMA user_version (version 3). Open() migrates older files (including the
// seed's five-column `messages` table, keeping its rows) and refuses newer ones. A new file is
// created with incremental auto-vacuum, so that each DeleteOlderThan step gives up to 256 freed
// pages back to the file system; an older file keeps its mode until EnableIncrementalVacuum
// (store/sqlite/sqlite_maintenance.h) switches it.
using SqliteConversationStore = DbConversationStore<SqliteBackend, SqliteStoreOptions>;
extern template class DbConversationStore<SqliteBackend, SqliteStoreOptions>;

}  // namespace staple::store
