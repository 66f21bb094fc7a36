#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/net.h"
#include "store/conversation_store.h"
#include "support/history.h"

namespace staple::testing {

// An in-memory ConversationStore for unit tests, whose operations can be made to fail or to stall.
// Use it from one io_context (the test's); Stall/Resume must be called from that context's thread.
//
// The Responses and Conversations state follows the store contract (conversation_store.h) as the
// database stores do: one item row per stored item, with the response it belongs to and the
// conversation it is in (a stored turn's items are in its response's conversation, when that
// conversation exists); owners never see each other's rows; listings after an item id start
// after the first item with that id in the listing's order, and an unknown one is kNotFound.
class MemoryConversationStore final : public store::ConversationStore {
 public:
  // Every later write (AppendTurn, the deletes, the Responses and Conversations writes), or every
  // later read, fails with `error`, until cleared with std::nullopt.
  void FailAppends(std::optional<Error> error) { append_error_ = std::move(error); }
  void FailReads(std::optional<Error> error) { read_error_ = std::move(error); }
  // WriteHealth (and Ping) report writes failing with `reason` (as a real store does after a
  // failed commit, until a write succeeds again), until cleared with std::nullopt. Appends are not
  // affected: combine with FailAppends to make them fail too.
  void MarkWritesFailing(std::optional<std::string> reason) { write_failure_ = std::move(reason); }

  // Later AppendTurn calls wait, before committing anything, until Resume() (as a stalled fsync
  // would).
  void StallAppends() { stalled_ = true; }
  // Lets the stalled calls go on (they then commit or fail as configured) and stops stalling.
  void Resume() {
    stalled_ = false;
    for (auto& timer : waiting_) timer->cancel();
  }
  // AppendTurn calls waiting in a stall now.
  std::size_t stalled_calls() const { return waiting_.size(); }

  // Turns committed, in commit order.
  const std::vector<store::Turn>& turns() const { return turns_; }
  // Rows, as the real stores number them.
  const std::vector<store::StoredMessage>& rows() const { return rows_; }
  // The response records of the stored turns committed (Turn::response), in commit order.
  const std::vector<store::ResponseRecord>& responses() const { return responses_; }
  std::size_t append_calls() const { return append_calls_; }
  std::size_t read_calls() const { return read_calls_; }

  // Adds one turn's rows directly (history for a test).
  void Seed(const std::string& user_id, const std::string& prompt, const std::string& answer,
            const std::string& owner = "") {
    store::Turn turn;
    turn.owner = owner;
    turn.user_id = user_id;
    turn.prompt = prompt;
    turn.completion = answer;
    Commit(std::move(turn));
  }

  // Stores the response and items of `record` for `owner` as a stored turn would, without
  // message rows and without listing it in responses() (history for a test).
  void SeedResponse(const store::ResponseRecord& record, const std::string& owner = "") {
    StoreResponse(owner, record);
  }

  net::awaitable<Status> AppendTurn(store::Turn turn) override {
    ++append_calls_;
    if (stalled_) {
      auto timer = std::make_shared<net::steady_timer>(co_await net::this_coro::executor);
      timer->expires_at(net::steady_timer::time_point::max());
      waiting_.push_back(timer);
      boost::system::error_code ec;
      co_await timer->async_wait(net::redirect_error(net::use_awaitable, ec));
      waiting_.remove(timer);
    }
    if (append_error_) co_return *append_error_;
    Commit(std::move(turn));
    co_return Ok();
  }

  net::awaitable<Result<store::History>> RecentMessages(std::string owner, std::string user_id,
                                                        std::size_t max_messages) override {
    ++read_calls_;
    if (read_error_) co_return *read_error_;
    store::History out;
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      if (owners_[i] == owner && rows_[i].user_id == user_id) {
        out.push_back(std::make_shared<const store::HistoryMessage>(HistoryOf(rows_[i])));
      }
    }
    if (max_messages != 0 && out.size() > max_messages) {
      out.erase(out.begin(), out.end() - static_cast<std::ptrdiff_t>(max_messages));
    }
    co_return out;
  }

  net::awaitable<Result<store::MessagePage>> ListMessages(std::string owner, std::string user_id,
                                                          std::int64_t after_id,
                                                          std::size_t limit) override {
    ++read_calls_;
    if (read_error_) co_return *read_error_;
    store::MessagePage page;
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      const auto& row = rows_[i];
      if (owners_[i] != owner || row.user_id != user_id || row.id <= after_id) continue;
      if (page.messages.size() == limit) {
        page.has_more = true;
        break;
      }
      page.messages.push_back(row);
    }
    co_return page;
  }

  net::awaitable<Result<std::int64_t>> DeleteMessages(std::string owner,
                                                      std::string user_id) override {
    if (append_error_) co_return *append_error_;
    std::int64_t deleted = 0;
    for (std::size_t i = rows_.size(); i-- > 0;) {
      if (owners_[i] == owner && rows_[i].user_id == user_id) {
        rows_.erase(rows_.begin() + static_cast<std::ptrdiff_t>(i));
        owners_.erase(owners_.begin() + static_cast<std::ptrdiff_t>(i));
        ++deleted;
      }
    }
    co_return deleted;
  }

  net::awaitable<Result<store::RetentionBatch>> DeleteOlderThan(
      std::chrono::system_clock::time_point cutoff, std::size_t max_rows) override {
    if (append_error_) co_return *append_error_;
    // As the real stores: among the max_rows oldest rows, those older than the cutoff.
    const std::string before = store::FormatTimestamp(cutoff);
    store::RetentionBatch batch;
    std::size_t kept = 0;
    for (std::size_t seen = 0; seen < max_rows && kept < rows_.size(); ++seen) {
      if (rows_[kept].timestamp < before) {
        rows_.erase(rows_.begin() + static_cast<std::ptrdiff_t>(kept));
        owners_.erase(owners_.begin() + static_cast<std::ptrdiff_t>(kept));
        ++batch.deleted;
      } else {
        ++kept;
      }
    }
    co_return batch;
  }

  // --- Responses ---

  net::awaitable<Result<std::optional<store::StoredResponse>>> GetResponse(
      std::string owner, std::string id) override {
    ++read_calls_;
    if (read_error_) co_return *read_error_;
    const OwnedResponse* found = FindResponse(owner, id);
    if (found == nullptr) co_return std::optional<store::StoredResponse>();
    co_return std::optional<store::StoredResponse>(found->response);
  }

  net::awaitable<Result<std::optional<store::ItemWindow>>> ResponseChain(
      std::string owner, std::string id, std::size_t max_items) override {
    ++read_calls_;
    if (read_error_) co_return *read_error_;
    if (FindResponse(owner, id) == nullptr) co_return std::optional<store::ItemWindow>();
    // The chain's responses, followed through previous_response_id until one is missing.
    std::vector<std::string> chain;
    for (const OwnedResponse* at = FindResponse(owner, id); at != nullptr;
         at = FindResponse(owner, at->response.previous_response_id)) {
      if (std::find(chain.begin(), chain.end(), at->response.id) != chain.end()) break;
      chain.push_back(at->response.id);
    }
    std::vector<store::StoredItem> items;
    for (const OwnedItem& row : items_) {
      if (row.owner == owner &&
          std::find(chain.begin(), chain.end(), row.item.response_id) != chain.end()) {
        items.push_back(row.item);
      }
    }
    co_return std::optional<store::ItemWindow>(Window(std::move(items), max_items));
  }

  net::awaitable<Result<std::optional<store::ItemPage>>> ListResponseItems(
      std::string owner, std::string id, bool output, std::string after, std::size_t limit,
      store::ItemOrder order) override {
    ++read_calls_;
    if (read_error_) co_return *read_error_;
    if (FindResponse(owner, id) == nullptr) co_return std::optional<store::ItemPage>();
    std::vector<store::StoredItem> items;
    for (const OwnedItem& row : items_) {
      if (row.owner == owner && row.item.response_id == id && row.item.output == output) {
        items.push_back(row.item);
      }
    }
    auto page = Page(std::move(items), after, limit, order);
    if (!page) co_return page.error();
    co_return std::optional<store::ItemPage>(std::move(page).value());
  }

  net::awaitable<Result<bool>> DeleteResponse(std::string owner, std::string id) override {
    if (append_error_) co_return *append_error_;
    const OwnedResponse* found = FindResponse(owner, id);
    if (found == nullptr) co_return false;
    stored_responses_.erase(stored_responses_.begin() + (found - stored_responses_.data()));
    // Its items stay where a conversation holds them.
    std::erase_if(items_, [&](const OwnedItem& row) {
      return row.owner == owner && row.item.response_id == id && row.conversation_id.empty();
    });
    ++epoch_;
    co_return true;
  }

  // --- Conversations ---

  net::awaitable<Status> CreateConversation(std::string owner,
                                            store::StoredConversation conversation,
                                            std::vector<store::ItemToStore> items) override {
    if (append_error_) co_return *append_error_;
    const std::string id = conversation.id;
    conversations_.push_back(OwnedConversation{owner, std::move(conversation)});
    for (store::ItemToStore& item : items) AddItem(owner, std::move(item), "", false, id);
    co_return Ok();
  }

  net::awaitable<Result<std::optional<store::StoredConversation>>> GetConversation(
      std::string owner, std::string id) override {
    ++read_calls_;
    if (read_error_) co_return *read_error_;
    const OwnedConversation* found = FindConversation(owner, id);
    if (found == nullptr) co_return std::optional<store::StoredConversation>();
    co_return std::optional<store::StoredConversation>(found->conversation);
  }

  net::awaitable<Result<std::optional<store::StoredConversation>>> UpdateConversation(
      std::string owner, std::string id, std::string metadata_json) override {
    if (append_error_) co_return *append_error_;
    OwnedConversation* found = FindConversation(owner, id);
    if (found == nullptr) co_return std::optional<store::StoredConversation>();
    found->conversation.metadata_json = std::move(metadata_json);
    co_return std::optional<store::StoredConversation>(found->conversation);
  }

  net::awaitable<Result<bool>> DeleteConversation(std::string owner, std::string id) override {
    if (append_error_) co_return *append_error_;
    const OwnedConversation* found = FindConversation(owner, id);
    if (found == nullptr) co_return false;
    conversations_.erase(conversations_.begin() + (found - conversations_.data()));
    const auto erased = std::erase_if(items_, [&](const OwnedItem& row) {
      return row.owner == owner && row.conversation_id == id;
    });
    if (erased > 0) ++epoch_;
    co_return true;
  }

  net::awaitable<Result<std::optional<std::vector<store::StoredItem>>>> AppendConversationItems(
      std::string owner, std::string id, std::vector<store::ItemToStore> items) override {
    if (append_error_) co_return *append_error_;
    if (FindConversation(owner, id) == nullptr) {
      co_return std::optional<std::vector<store::StoredItem>>();
    }
    std::vector<store::StoredItem> stored;
    for (store::ItemToStore& item : items) {
      stored.push_back(AddItem(owner, std::move(item), "", false, id));
    }
    co_return std::optional<std::vector<store::StoredItem>>(std::move(stored));
  }

  net::awaitable<Result<std::optional<store::ItemWindow>>> ConversationItems(
      std::string owner, std::string id, std::size_t max_items) override {
    ++read_calls_;
    if (read_error_) co_return *read_error_;
    if (FindConversation(owner, id) == nullptr) co_return std::optional<store::ItemWindow>();
    co_return std::optional<store::ItemWindow>(Window(ItemsOf(owner, id), max_items));
  }

  net::awaitable<Result<std::optional<store::ItemPage>>> ListConversationItems(
      std::string owner, std::string id, std::string after, std::size_t limit,
      store::ItemOrder order) override {
    ++read_calls_;
    if (read_error_) co_return *read_error_;
    if (FindConversation(owner, id) == nullptr) co_return std::optional<store::ItemPage>();
    auto page = Page(ItemsOf(owner, id), after, limit, order);
    if (!page) co_return page.error();
    co_return std::optional<store::ItemPage>(std::move(page).value());
  }

  net::awaitable<Result<std::optional<store::StoredItem>>> GetConversationItem(
      std::string owner, std::string id, std::string item_id) override {
    ++read_calls_;
    if (read_error_) co_return *read_error_;
    if (FindConversation(owner, id) != nullptr) {
      for (const store::StoredItem& item : ItemsOf(owner, id)) {
        if (item.id == item_id) co_return std::optional<store::StoredItem>(item);
      }
    }
    co_return std::optional<store::StoredItem>();
  }

  net::awaitable<Result<bool>> DeleteConversationItem(std::string owner, std::string id,
                                                      std::string item_id) override {
    if (append_error_) co_return *append_error_;
    const auto erased = std::erase_if(items_, [&](const OwnedItem& row) {
      return row.owner == owner && row.conversation_id == id && row.item.id == item_id;
    });
    if (erased > 0) ++epoch_;
    co_return erased > 0;
  }

  net::awaitable<Result<std::int64_t>> StateEpoch() override {
    ++read_calls_;
    if (read_error_) co_return *read_error_;
    co_return epoch_;
  }

  // Conversations stored now.
  std::size_t conversation_count() const { return conversations_.size(); }

  net::awaitable<Status> Ping() override {
    if (read_error_) co_return *read_error_;
    co_return WriteHealth();
  }
  Status WriteHealth() const override {
    ++write_health_calls_;
    if (write_failure_) return MakeError(ErrorKind::kStorage, "write failing: " + *write_failure_);
    return Ok();
  }
  std::size_t write_health_calls() const { return write_health_calls_; }
  std::size_t PendingWrites() const override { return waiting_.size(); }
  void Close() override {}

 private:
  struct OwnedResponse {
    std::string owner;
    store::StoredResponse response;
  };
  struct OwnedConversation {
    std::string owner;
    store::StoredConversation conversation;
  };
  struct OwnedItem {
    std::string owner;
    std::string conversation_id;  // "" when in no conversation
    store::StoredItem item;
  };

  const OwnedResponse* FindResponse(const std::string& owner, const std::string& id) const {
    for (const OwnedResponse& row : stored_responses_) {
      if (row.owner == owner && row.response.id == id) return &row;
    }
    return nullptr;
  }
  OwnedConversation* FindConversation(const std::string& owner, const std::string& id) {
    for (OwnedConversation& row : conversations_) {
      if (row.owner == owner && row.conversation.id == id) return &row;
    }
    return nullptr;
  }

  store::StoredItem AddItem(const std::string& owner, store::ItemToStore item,
                            std::string response_id, bool output, std::string conversation_id) {
    OwnedItem row;
    row.owner = owner;
    row.conversation_id = std::move(conversation_id);
    row.item.seq = next_seq_++;
    row.item.id = std::move(item.id);
    row.item.response_id = std::move(response_id);
    row.item.output = output;
    row.item.json = std::move(item.json);
    items_.push_back(row);
    return row.item;
  }

  // The response row and its items: input then output, in the response's conversation when that
  // conversation exists (as the database stores' INSERT … SELECT do).
  void StoreResponse(const std::string& owner, const store::ResponseRecord& record) {
    stored_responses_.push_back(OwnedResponse{owner, record.response});
    const std::string conversation_id =
        !record.response.conversation_id.empty() &&
                FindConversation(owner, record.response.conversation_id) != nullptr
            ? record.response.conversation_id
            : std::string();
    for (const store::ItemToStore& item : record.input) {
      AddItem(owner, item, record.response.id, false, conversation_id);
    }
    for (const store::ItemToStore& item : record.output) {
      AddItem(owner, item, record.response.id, true, conversation_id);
    }
  }

  std::vector<store::StoredItem> ItemsOf(const std::string& owner,
                                         const std::string& conversation_id) const {
    std::vector<store::StoredItem> items;
    for (const OwnedItem& row : items_) {
      if (row.owner == owner && row.conversation_id == conversation_id) items.push_back(row.item);
    }
    return items;
  }

  // The most recent `max_items` of `items` (oldest first; 0 = all).
  static store::ItemWindow Window(std::vector<store::StoredItem> items, std::size_t max_items) {
    store::ItemWindow window;
    if (max_items != 0 && items.size() > max_items) {
      items.erase(items.begin(), items.end() - static_cast<std::ptrdiff_t>(max_items));
      window.has_more = true;
    }
    window.items = std::move(items);
    return window;
  }

  // One page of `items` (oldest first) in `order`, after the first item with id `after` in that
  // order; kNotFound when there is none.
  static Result<store::ItemPage> Page(std::vector<store::StoredItem> items,
                                      const std::string& after, std::size_t limit,
                                      store::ItemOrder order) {
    if (order == store::ItemOrder::kDescending) std::reverse(items.begin(), items.end());
    auto start = items.begin();
    if (!after.empty()) {
      start = std::find_if(items.begin(), items.end(),
                           [&](const store::StoredItem& item) { return item.id == after; });
      if (start == items.end()) {
        return MakeError(ErrorKind::kNotFound, "no item '" + after + "' in this list");
      }
      ++start;
    }
    store::ItemPage page;
    for (auto it = start; it != items.end(); ++it) {
      if (page.items.size() == limit) {
        page.has_more = true;
        break;
      }
      page.items.push_back(*it);
    }
    return page;
  }

  void Commit(store::Turn turn) {
    store::StoredMessage user;
    user.id = next_id_++;
    user.user_id = turn.user_id;
    user.timestamp = store::FormatTimestamp(turn.prompt_time);
    user.role = "user";
    user.content = turn.prompt;
    user.request_id = turn.request_id;
    user.model = turn.model;
    rows_.push_back(user);
    store::StoredMessage assistant = user;
    assistant.id = next_id_++;
    assistant.timestamp = store::FormatTimestamp(turn.completion_time);
    assistant.role = "assistant";
    assistant.content = turn.completion;
    assistant.prompt_tokens = turn.prompt_tokens;
    assistant.completion_tokens = turn.completion_tokens;
    assistant.latency_ms = turn.latency_ms;
    rows_.push_back(assistant);
    owners_.push_back(turn.owner);
    owners_.push_back(turn.owner);
    if (turn.response) {
      StoreResponse(turn.owner, *turn.response);
      responses_.push_back(*turn.response);
    }
    turns_.push_back(std::move(turn));
  }

  std::vector<store::Turn> turns_;
  std::vector<store::StoredMessage> rows_;
  std::vector<std::string> owners_;  // the owner of rows_[i]
  std::int64_t next_id_ = 1;
  std::vector<store::ResponseRecord> responses_;
  // The Responses and Conversations state.
  std::vector<OwnedResponse> stored_responses_;
  std::int64_t epoch_ = 0;  // StateEpoch
  std::vector<OwnedConversation> conversations_;
  std::vector<OwnedItem> items_;  // by seq
  std::int64_t next_seq_ = 1;
  std::optional<Error> append_error_;
  std::optional<Error> read_error_;
  std::optional<std::string> write_failure_;
  mutable std::size_t write_health_calls_ = 0;
  bool stalled_ = false;
  std::list<std::shared_ptr<net::steady_timer>> waiting_;
  std::size_t append_calls_ = 0;
  std::size_t read_calls_ = 0;
};

}  // namespace staple::testing
