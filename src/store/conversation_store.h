#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/net.h"
#include "common/result.h"

namespace staple::store {

// One row of the `messages` table.
struct StoredMessage {
  std::int64_t id = 0;
  std::string user_id;
  std::string timestamp;  // UTC, "YYYY-MM-DD HH:MM:SS.ffffff"
  std::string role;       // "user" | "assistant"
  std::string content;
  std::string request_id;
  std::string model;
  std::optional<std::int64_t> prompt_tokens;
  std::optional<std::int64_t> completion_tokens;
  std::optional<std::int64_t> latency_ms;
};

// One completed exchange: the user's prompt and the assistant's answer. Stored as two rows
// (role "user" then "assistant") in one transaction.
struct Turn {
  std::string owner;  // the conversation's owner: a client key's id, "" for none
  std::string user_id;
  std::string request_id;
  std::string model;
  std::string prompt;
  std::string completion;
  std::chrono::system_clock::time_point prompt_time;      // when the request arrived
  std::chrono::system_clock::time_point completion_time;  // when the answer was complete
  std::optional<std::int64_t> prompt_tokens;      // as the upstream reported, on the assistant row
  std::optional<std::int64_t> completion_tokens;  // as the upstream reported, on the assistant row
  std::int64_t latency_ms = 0;                    // upstream latency, on the assistant row
};

struct MessagePage {
  std::vector<StoredMessage> messages;  // oldest first
  bool has_more = false;                // more rows exist after the last one returned
};

// What one retention step did (ConversationStore::DeleteOlderThan).
struct RetentionBatch {
  std::int64_t deleted = 0;     // messages deleted
  std::int64_t free_pages = 0;  // unused pages the file still holds afterwards (SQLite); 0 when the
                                // back end reclaims space by itself (PostgreSQL's autovacuum)
};

// Formats a time point as the `timestamp` column does: UTC "YYYY-MM-DD HH:MM:SS.ffffff".
std::string FormatTimestamp(std::chrono::system_clock::time_point t);

// Durable conversation storage. Implementations: SqliteConversationStore (store/sqlite),
// PostgresConversationStore (store/postgres). All coroutine methods are thread-safe, never block
// the awaiting I/O thread, and resume the awaiting coroutine on its own executor.
//
// Deadlines: every operation completes within the store's operation timeout of the call (its time
// queued included); past it, or when the store's queue is full, it fails with kStorage. For
// AppendTurn and DeleteMessages that error may come while the write is already being committed:
// its outcome is then unknown (it may still be committed).
//
// Ownership: a conversation is identified by (owner, user_id). The owner is a client key's id, or
// "" for conversations made without client keys (every row of a database from before keys
// existed); an operation only ever sees the rows of its own owner.
//
// Text: stores keep text as UTF-8 without NUL bytes. Text that is not (user ids included, in every
// method) is stored and looked up with each NUL byte and each invalid UTF-8 sequence replaced by
// U+FFFD (see ToStorableText in store/storable_text.h); valid text is kept byte for byte.
class ConversationStore {
 public:
  virtual ~ConversationStore() = default;

  // Appends both rows of `turn` in one transaction and completes only after that transaction is
  // durably committed (many turns may share one commit). Its text fields (owner, user_id,
  // request_id, model, prompt, completion) are stored as ToStorableText makes them: "a\0b" is
  // stored, and read back, as "a\uFFFDb". Errors: kStorage when the database cannot be written, the
  // deadline passed or the store is closed.
  virtual net::awaitable<Status> AppendTurn(Turn turn) = 0;

  // The most recent `max_messages` messages of (owner, user_id) (0 = all of them), oldest first.
  // An unknown conversation has an empty history.
  virtual net::awaitable<Result<std::vector<StoredMessage>>> RecentMessages(
      std::string owner, std::string user_id, std::size_t max_messages) = 0;

  // Up to `limit` messages of (owner, user_id) with id > `after_id`, oldest first.
  virtual net::awaitable<Result<MessagePage>> ListMessages(std::string owner, std::string user_id,
                                                           std::int64_t after_id,
                                                           std::size_t limit) = 0;

  // Deletes every message of (owner, user_id); returns how many rows were deleted. Durable on
  // return.
  virtual net::awaitable<Result<std::int64_t>> DeleteMessages(std::string owner,
                                                              std::string user_id) = 0;

  // Retention: one step of deleting old messages of every conversation, as one short write
  // (committed with the turns queued beside it, never holding the writer for long). Looks at the
  // `max_rows` oldest messages (lowest ids, which grow with time) and deletes those whose
  // timestamp is before `cutoff`; the caller repeats while a step deletes `max_rows`. A message
  // stored after a newer one (a turn that took longer than the turns committed before it) goes
  // at a later step, once every message before it is older than the cutoff too. On SQLite the
  // step then gives a bounded number of free pages back to the file system (with incremental
  // auto-vacuum). Other tables (client keys, usage) are never touched. Durable on return; errors
  // as DeleteMessages.
  virtual net::awaitable<Result<RetentionBatch>> DeleteOlderThan(
      std::chrono::system_clock::time_point cutoff, std::size_t max_rows) = 0;

  // Whether the database answers reads and accepts writes (for /readyz). Writes are judged by the
  // last commit when it is recent, else by a write probe (one tiny write transaction, run at most
  // once every few seconds). Errors: kStorage; while writes fail, "write failing: <reason>".
  virtual net::awaitable<Status> Ping() = 0;

  // Whether writes are failing now: kStorage "write failing: <reason>" from a failed commit (or
  // write probe) until a later one succeeds, else Ok. Cheap and non-blocking (callers ask it
  // before every turn); thread-safe. While writes fail the store retries on its own, re-opening
  // its connection when needed, so this clears once the database accepts writes again without
  // anybody writing.
  virtual Status WriteHealth() const = 0;

  // Writes accepted but not yet committed (for metrics). Thread-safe.
  virtual std::size_t PendingWrites() const = 0;

  // Commits everything queued, then stops the store's threads; later calls fail with
  // kStorage. Blocking: call once, from a non-I/O thread, after in-flight requests finished.
  virtual void Close() = 0;
};

}  // namespace staple::store
