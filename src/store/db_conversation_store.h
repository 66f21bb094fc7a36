#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/net.h"
#include "common/result.h"
#include "store/conversation_store.h"

namespace staple::store {

// The ConversationStore of every database back end. Everything but the database side is here,
// once: the operations run on a DbWorkers (one writer thread that group-commits queued writes, a
// pool of reader threads, a deadline on every operation, bounded queues), and text is made
// storable (ToStorableText) before it reaches the back end.
//
// `Backend` supplies the database side (connections, SQL, caches). It is defined in its store's
// .cpp file, which includes store/db_conversation_store_impl.h and instantiates this template
// explicitly; its store's header names the instantiation (`using SqliteConversationStore = …`)
// and declares it `extern template`. `Options` derives from StoreThreadOptions.
// db_conversation_store_impl.h lists what a Backend provides.
//
// Threads: as ConversationStore; no back-end call runs on the caller's thread after Open().
template <typename Backend, typename Options>
class DbConversationStore final : public ConversationStore {
 public:
  // Checks the thread options (kInvalidArgument), opens the back end (its errors as they are),
  // then starts the threads.
  static Result<std::unique_ptr<DbConversationStore>> Open(Options options);

  // Calls Close().
  ~DbConversationStore() override;

  DbConversationStore(const DbConversationStore&) = delete;
  DbConversationStore& operator=(const DbConversationStore&) = delete;

  net::awaitable<Status> AppendTurn(Turn turn) override;
  net::awaitable<Result<History>> RecentMessages(std::string owner, std::string user_id,
                                                 std::size_t max_messages) override;
  net::awaitable<Result<MessagePage>> ListMessages(std::string owner, std::string user_id,
                                                   std::int64_t after_id,
                                                   std::size_t limit) override;
  net::awaitable<Result<std::int64_t>> DeleteMessages(std::string owner,
                                                      std::string user_id) override;
  net::awaitable<Result<RetentionBatch>> DeleteOlderThan(
      std::chrono::system_clock::time_point cutoff, std::size_t max_rows) override;
  net::awaitable<Result<std::optional<StoredResponse>>> GetResponse(std::string owner,
                                                                    std::string id) override;
  net::awaitable<Result<std::optional<ItemWindow>>> ResponseChain(std::string owner, std::string id,
                                                                  std::size_t max_items) override;
  net::awaitable<Result<std::optional<ItemPage>>> ListResponseItems(std::string owner,
                                                                    std::string id, bool output,
                                                                    std::string after,
                                                                    std::size_t limit,
                                                                    ItemOrder order) override;
  net::awaitable<Result<bool>> DeleteResponse(std::string owner, std::string id) override;
  net::awaitable<Status> CreateConversation(std::string owner, StoredConversation conversation,
                                            std::vector<ItemToStore> items) override;
  net::awaitable<Result<std::optional<StoredConversation>>> GetConversation(
      std::string owner, std::string id) override;
  net::awaitable<Result<std::optional<StoredConversation>>> UpdateConversation(
      std::string owner, std::string id, std::string metadata_json) override;
  net::awaitable<Result<bool>> DeleteConversation(std::string owner, std::string id) override;
  net::awaitable<Result<std::optional<std::vector<StoredItem>>>> AppendConversationItems(
      std::string owner, std::string id, std::vector<ItemToStore> items) override;
  net::awaitable<Result<std::optional<ItemWindow>>> ConversationItems(
      std::string owner, std::string id, std::size_t max_items) override;
  net::awaitable<Result<std::optional<ItemPage>>> ListConversationItems(std::string owner,
                                                                        std::string id,
                                                                        std::string after,
                                                                        std::size_t limit,
                                                                        ItemOrder order) override;
  net::awaitable<Result<std::optional<StoredItem>>> GetConversationItem(
      std::string owner, std::string id, std::string item_id) override;
  net::awaitable<Result<bool>> DeleteConversationItem(std::string owner, std::string id,
                                                      std::string item_id) override;
  net::awaitable<Result<std::int64_t>> StateEpoch() override;
  net::awaitable<Status> Ping() override;
  Status WriteHealth() const override;
  std::size_t PendingWrites() const override;

  // Stops accepting operations (later ones fail with kStorage), commits every queued write
  // (each still bounded by its deadline), serves every queued read, joins the threads, then closes
  // the readers' connections and the writer's last. Idempotent and safe to call from several
  // threads; must not be called from an I/O thread that awaits this store.
  void Close() override;

 private:
  // The back end and the DbWorkers running it; defined in db_conversation_store_impl.h.
  struct State;

  explicit DbConversationStore(std::unique_ptr<State> state);

  const std::unique_ptr<State> state_;
};

}  // namespace staple::store
