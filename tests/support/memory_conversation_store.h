#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/net.h"
#include "store/conversation_store.h"

namespace staple::testing {

// An in-memory ConversationStore for unit tests, whose operations can be made to fail or to stall.
// Use it from one io_context (the test's); Stall/Resume must be called from that context's thread.
class MemoryConversationStore final : public store::ConversationStore {
 public:
  // Every later AppendTurn (or read) fails with `error`, until cleared with std::nullopt.
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

  net::awaitable<Result<std::vector<store::StoredMessage>>> RecentMessages(
      std::string owner, std::string user_id, std::size_t max_messages) override {
    ++read_calls_;
    if (read_error_) co_return *read_error_;
    std::vector<store::StoredMessage> out;
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      if (owners_[i] == owner && rows_[i].user_id == user_id) out.push_back(rows_[i]);
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
    turns_.push_back(std::move(turn));
  }

  std::vector<store::Turn> turns_;
  std::vector<store::StoredMessage> rows_;
  std::vector<std::string> owners_;  // the owner of rows_[i]
  std::int64_t next_id_ = 1;
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
