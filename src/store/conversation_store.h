#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
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

// A stored message as a conversation's context needs it: what is sent upstream, and the row id
// that orders it. The rest of the row (timestamps, request ids, token counts) is only read by
// ListMessages; leaving it out makes a cached message about 110 bytes plus its text instead of
// about 400 plus its text (190 instead of 500 for a one-sentence message), so a store's history
// cache holds more conversations' windows in the same memory.
struct HistoryMessage {
  std::int64_t id = 0;
  std::string role;  // "user" | "assistant"
  std::string content;

  friend bool operator==(const HistoryMessage&, const HistoryMessage&) = default;
};

// A conversation's messages as RecentMessages reads them, oldest first. The rows are shared and
// never changed: a store may hand out the rows its cache holds, so that reading a long
// conversation copies pointers rather than texts.
using History = std::vector<std::shared_ptr<const HistoryMessage>>;

struct ResponseRecord;  // below

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
  // The upstream that answered (STAPLE_UPSTREAMS' name), on the assistant row; "" (NULL) with a
  // single upstream. Schema version 4.
  std::string upstream;
  // A Responses API turn that is stored (`store: true`): its response and items are written in
  // the same transaction as the two rows above. Null for every other turn.
  std::shared_ptr<const ResponseRecord> response;
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

// --- The Responses and Conversations APIs' state (schema version 3) ---
//
// Items are JSON objects exactly as the Responses API shows them (their "id" included): input
// and output items of responses, and the items of conversations. Every stored item gets a
// store-wide sequence number that grows with insertion order; "oldest first" means by it.

// An item to store: its id (the item's "id") and the item object's JSON.
struct ItemToStore {
  std::string id;
  std::string json;
};

// A stored item.
struct StoredItem {
  std::int64_t seq = 0;     // store-assigned, grows with insertion order
  std::string id;           // the item's "id"
  std::string response_id;  // the response it is input or output of; "" when it was added to a
                            // conversation directly
  bool output = false;      // one of its response's output items (else an input item)
  std::string json;         // the item object
};

// A stored response: what GET /v1/responses/{id} answers (with its output items, when its object
// was stored without them).
struct StoredResponse {
  std::string id;                    // "resp_…"
  std::string conversation_id;       // "" when the response is not in a conversation
  std::string previous_response_id;  // "" when it continues none
  std::int64_t created_at = 0;       // Unix seconds
  std::string json;                  // the response object, as the caller stored it (the
                                     // Responses API leaves a response's output out when it is
                                     // in no conversation: its output items hold it)
};

// What a stored Responses API turn writes besides its two message rows (Turn::response), in the
// same transaction. When response.conversation_id is set, the input and output items are
// appended to that conversation too (in that order).
struct ResponseRecord {
  StoredResponse response;
  std::vector<ItemToStore> input;
  std::vector<ItemToStore> output;
};

struct StoredConversation {
  std::string id;                    // "conv_…"
  std::int64_t created_at = 0;       // Unix seconds
  std::string metadata_json = "{}";  // a JSON object
};

enum class ItemOrder { kAscending, kDescending };

// One page of a listing, in the order asked for.
struct ItemPage {
  std::vector<StoredItem> items;
  bool has_more = false;  // more items follow the last one returned, in that order
};

// The most recent items of a context (a response chain or a conversation), oldest first.
struct ItemWindow {
  std::vector<StoredItem> items;
  bool has_more = false;  // older items exist beyond those returned (max_items cut them)
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

  // The most recent `max_messages` messages of (owner, user_id) (0 = all of them), oldest first:
  // their ids, roles and contents (ListMessages reads whole rows). An unknown conversation has an
  // empty history.
  virtual net::awaitable<Result<History>> RecentMessages(std::string owner, std::string user_id,
                                                         std::size_t max_messages) = 0;

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

  // --- Responses (an owner only ever sees its own; another owner's id is "not found") ---

  // The response `id` of `owner`, std::nullopt when there is none.
  virtual net::awaitable<Result<std::optional<StoredResponse>>> GetResponse(std::string owner,
                                                                            std::string id) = 0;

  // The context of a response that continues response `id` (previous_response_id): the items of
  // the chain that ends with `id` — each response's input then output items, from the first
  // response of the chain (followed through previous_response_id) to `id` — the most recent
  // `max_items` of them (0 = all), oldest first. Read with one query whatever the chain's length.
  // A response deleted from the middle of a chain ends it there. std::nullopt when `id` is not a
  // response of `owner`.
  virtual net::awaitable<Result<std::optional<ItemWindow>>> ResponseChain(
      std::string owner, std::string id, std::size_t max_items) = 0;

  // Up to `limit` input items (or output items) of response `id` in `order`, starting after the
  // item whose id is `after` ("" = from the start). std::nullopt when there is no such response;
  // kNotFound when `after` is not one of its items.
  virtual net::awaitable<Result<std::optional<ItemPage>>> ListResponseItems(
      std::string owner, std::string id, bool output, std::string after, std::size_t limit,
      ItemOrder order) = 0;

  // Deletes response `id` and those of its items that are in no conversation. Returns whether it
  // existed. Durable on return.
  virtual net::awaitable<Result<bool>> DeleteResponse(std::string owner, std::string id) = 0;

  // --- Conversations ---

  // Stores a new conversation with its initial items (in order), in one transaction. Durable on
  // return.
  virtual net::awaitable<Status> CreateConversation(std::string owner,
                                                    StoredConversation conversation,
                                                    std::vector<ItemToStore> items) = 0;

  // The conversation `id` of `owner`, std::nullopt when there is none.
  virtual net::awaitable<Result<std::optional<StoredConversation>>> GetConversation(
      std::string owner, std::string id) = 0;

  // Replaces the conversation's metadata; returns it as updated, std::nullopt when there is none.
  virtual net::awaitable<Result<std::optional<StoredConversation>>> UpdateConversation(
      std::string owner, std::string id, std::string metadata_json) = 0;

  // Deletes the conversation and its items (its responses stay). Returns whether it existed.
  virtual net::awaitable<Result<bool>> DeleteConversation(std::string owner, std::string id) = 0;

  // Appends items (in order) to the conversation; returns them as stored, std::nullopt when there
  // is no such conversation. Durable on return.
  virtual net::awaitable<Result<std::optional<std::vector<StoredItem>>>> AppendConversationItems(
      std::string owner, std::string id, std::vector<ItemToStore> items) = 0;

  // The most recent `max_items` items of the conversation (0 = all), oldest first; std::nullopt
  // when there is no such conversation.
  virtual net::awaitable<Result<std::optional<ItemWindow>>> ConversationItems(
      std::string owner, std::string id, std::size_t max_items) = 0;

  // Up to `limit` items of the conversation in `order`, after the item whose id is `after` (""
  // = from the start). std::nullopt when there is no such conversation; kNotFound when `after` is
  // not one of its items.
  virtual net::awaitable<Result<std::optional<ItemPage>>> ListConversationItems(
      std::string owner, std::string id, std::string after, std::size_t limit, ItemOrder order) = 0;

  // The item `item_id` of the conversation, std::nullopt when the conversation or the item does
  // not exist.
  virtual net::awaitable<Result<std::optional<StoredItem>>> GetConversationItem(
      std::string owner, std::string id, std::string item_id) = 0;

  // Removes the item from the conversation. Returns whether it was there. Durable on return.
  virtual net::awaitable<Result<bool>> DeleteConversationItem(std::string owner, std::string id,
                                                              std::string item_id) = 0;

  // A number that grows whenever a delete removed Responses or Conversations state (DeleteResponse,
  // DeleteConversation, DeleteConversationItem that found something), in the delete's own
  // transaction, whichever process sharing the database made it. It only ever grows; it tells
  // caches of that state (chat::ChainCache) when to forget what they hold.
  virtual net::awaitable<Result<std::int64_t>> StateEpoch() = 0;

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
