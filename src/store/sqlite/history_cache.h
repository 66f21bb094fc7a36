#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "store/conversation_store.h"

namespace staple::store {

// The newest stored messages of recently used conversations, in memory, for
// SqliteConversationStore's history reads.
//
// Why: the writer commits every few milliseconds under load, and SQLite empties a reader
// connection's page cache whenever the database changed since its previous read transaction. A
// history read then fetches one table page per message (rows of one conversation are spread over
// the table), about 40 pread calls for a 60-message conversation.
//
// Contract: an entry holds the newest rows of a conversation, and whether they are all of it. It is
// only served for a read whose database snapshot has, among the conversation's rows with an id at
// least the entry's oldest one, exactly as many rows and the same newest id (the caller reads both
// from the (user_id, id) index, which costs no table page and grows with the window, not with the
// conversation). Row ids only grow (AUTOINCREMENT, never reused) and rows are never updated, so any
// insert or delete by any writer, in this process or another one, changes one of the two and the
// entry is not used; rows older than a complete entry's cannot appear later. Filling and appending
// may race with commits; such an entry then fails that check and is read again.
//
// Rows are shared (store::History): a hit hands out pointers to the cached rows, never copies of
// their texts, and a row stays alive for its reader after the entry is dropped.
//
// Threads: every member may be called from any thread.
class HistoryCache {
 public:
  // Bounds: rows kept per conversation (the oldest are dropped beyond it) and bytes of message
  // text over all conversations (the least recently used conversations are dropped beyond it).
  HistoryCache(std::size_t max_rows_per_conversation, std::size_t max_bytes);

  HistoryCache(const HistoryCache&) = delete;
  HistoryCache& operator=(const HistoryCache&) = delete;

  // The oldest row id of `user_id`'s entry, if there is one: the caller counts the rows from it.
  std::optional<std::int64_t> OldestId(const std::string& user_id);

  // The newest `max_messages` messages (all of them for 0), oldest first, when `user_id`'s entry
  // starts at `oldest_id` and the snapshot's rows from that id on are `count` rows ending at
  // `max_id`, and the entry holds enough rows; std::nullopt otherwise (a mismatching entry is
  // dropped).
  std::optional<History> Get(const std::string& user_id, std::int64_t oldest_id, std::int64_t count,
                             std::int64_t max_id, std::size_t max_messages);

  // Remembers `newest`, the newest rows (oldest first) of a conversation as one snapshot showed
  // them; `complete` when they are all of its rows. Ignored when empty.
  void Put(const std::string& user_id, History newest, bool complete);

  // Adds rows just committed at the end of `user_id`'s conversation (ids above every earlier
  // one), when that conversation has an entry.
  void Append(const std::string& user_id, std::vector<HistoryMessage> rows);

  // Forgets `user_id`'s conversation.
  void Erase(const std::string& user_id);

  // Memory held, as the budget counts it: rows, their strings' allocations and each entry's
  // bookkeeping (map and LRU nodes, keys).
  std::size_t bytes();

 private:
  struct Entry {
    History rows;           // the newest rows, oldest first; never empty
    bool complete = false;  // no older rows exist
    std::size_t bytes = 0;
    std::list<std::string>::iterator lru;
  };
  using Map = std::unordered_map<std::string, Entry>;

  static std::size_t BytesOf(const HistoryMessage& message);
  // Keeps at most max_rows_ rows in `entry`.
  void Trim(Entry& entry);
  void Drop(Map::iterator it);
  void EvictOverBudget();

  // Constant after construction.
  const std::size_t max_rows_;
  const std::size_t max_bytes_;

  // Guarded by mu_.
  std::mutex mu_;
  Map entries_;
  std::list<std::string> lru_;  // most recently used first
  std::size_t bytes_ = 0;
};

}  // namespace staple::store
