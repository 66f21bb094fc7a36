#pragma once

// The definitions of DbConversationStore, for the .cpp file of a back end only: it defines its
// Backend, includes this file and instantiates the template explicitly.

#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "store/db_conversation_store.h"
#include "store/db_workers.h"
#include "store/storable_text.h"

namespace staple::store {

// What a Backend's Open returns: the back end and the connections DbWorkers' threads will own.
template <typename Backend>
struct OpenedBackend {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<typename Backend::Writer> writer;
  std::vector<std::unique_ptr<typename Backend::Reader>> readers;
};

// The types a Backend names (by deriving from this): the writer thread's connection, one reader
// thread's connection, and one queued write (movable).
template <typename WriterT, typename ReaderT, typename WriteOpT>
struct BackendTypes {
  using Writer = WriterT;
  using Reader = ReaderT;
  using WriteOp = WriteOpT;
};

// A Backend provides:
//   Writer, Reader, WriteOp
//                         through BackendTypes
//   kName                 names the back end in messages ("SQLite")
//   static Result<OpenedBackend<Backend>> Open(const Options&)
//                         connects, creates or migrates the schema, opens options.reader_threads
//                         readers
//   static Status RunBatch(Writer&, std::span<WriteOp* const>, Deadline)
//                         DbWorkers' batch function: the operations in one transaction
//   static Status Probe(Writer&, Deadline)
//                         DbWorkers' write probe: one tiny write transaction (re-opening the
//                         writer's connection first when a failure called for it)
//   WriteOp AppendOp(Turn), WriteOp DeleteOp(std::string owner, std::string user_id)
//                         build a write (on the caller's thread; text already storable)
//   Status Appended(const Status& committed, WriteOp&)
//   WriteOp RetentionOp(std::string cutoff_timestamp, std::size_t max_rows)
//                         one retention step (ConversationStore::DeleteOlderThan); the cutoff in
//                         the `timestamp` column's format
//   Result<std::int64_t> Deleted(const Status& committed, WriteOp&)
//   Result<RetentionBatch> Retained(const Status& committed, WriteOp&)
//                         a write's result once its batch committed or failed (writer thread;
//                         also runs when the caller's deadline has passed)
//   Result<std::vector<StoredMessage>> Recent(Reader&, Deadline, const std::string& owner,
//                                             const std::string& user_id,
//                                             std::size_t max_messages)
//   Result<MessagePage> List(Reader&, Deadline, const std::string& owner,
//                            const std::string& user_id, std::int64_t after_id,
//                            std::size_t limit)
//   Status Ping(Reader&, Deadline)
//                         the reads, on a reader thread, within the deadline
// The members other than Open and RunBatch are called concurrently from several threads.

template <typename Backend, typename Options>
struct DbConversationStore<Backend, Options>::State {
  using Writer = typename Backend::Writer;
  using Reader = typename Backend::Reader;
  using WriteOp = typename Backend::WriteOp;

  // Declared first, destroyed last: the workers' threads use it until Close() joined them.
  std::unique_ptr<Backend> backend;
  std::unique_ptr<DbWorkers<Writer, Reader, WriteOp>> workers;
};

template <typename Backend, typename Options>
Result<std::unique_ptr<DbConversationStore<Backend, Options>>>
DbConversationStore<Backend, Options>::Open(Options options) {
  if (auto valid = ValidateThreadOptions(options, Backend::kName); !valid) return valid.error();
  auto opened = Backend::Open(options);
  if (!opened) return opened.error();
  auto state = std::make_unique<State>();
  state->backend = std::move(opened->backend);
  state->workers = std::make_unique<
      DbWorkers<typename State::Writer, typename State::Reader, typename State::WriteOp>>(
      std::string(Backend::kName), static_cast<const StoreThreadOptions&>(options),
      std::move(opened->writer), std::move(opened->readers), &Backend::RunBatch, &Backend::Probe);
  // Started before the store exists: on failure the workers stopped what they started.
  if (auto started = state->workers->Start(); !started) return started.error();
  return std::unique_ptr<DbConversationStore>(new DbConversationStore(std::move(state)));
}

template <typename Backend, typename Options>
DbConversationStore<Backend, Options>::DbConversationStore(std::unique_ptr<State> state)
    : state_(std::move(state)) {}

template <typename Backend, typename Options>
DbConversationStore<Backend, Options>::~DbConversationStore() {
  Close();
}

template <typename Backend, typename Options>
void DbConversationStore<Backend, Options>::Close() {
  state_->workers->Close();
}

template <typename Backend, typename Options>
std::size_t DbConversationStore<Backend, Options>::PendingWrites() const {
  return state_->workers->PendingWrites();
}

// The operations below are plain functions returning the awaitable that DbWorkers builds, not
// coroutines (see DbWorkers::Write). The lambdas capture the back end, not the store: they run on
// the workers' threads, which the store joins before the back end is destroyed.

template <typename Backend, typename Options>
net::awaitable<Status> DbConversationStore<Backend, Options>::AppendTurn(Turn turn) {
  MakeStorable(turn);
  Backend* backend = state_->backend.get();
  auto finish = [backend](const Status& committed, typename State::WriteOp& op) {
    return backend->Appended(committed, op);
  };
  return state_->workers->template Write<Status>(backend->AppendOp(std::move(turn)),
                                                 std::move(finish));
}

template <typename Backend, typename Options>
net::awaitable<Result<std::int64_t>> DbConversationStore<Backend, Options>::DeleteMessages(
    std::string owner, std::string user_id) {
  Backend* backend = state_->backend.get();
  auto finish = [backend](const Status& committed, typename State::WriteOp& op) {
    return backend->Deleted(committed, op);
  };
  return state_->workers->template Write<Result<std::int64_t>>(
      backend->DeleteOp(ToStorableText(owner), ToStorableText(user_id)), std::move(finish));
}

template <typename Backend, typename Options>
net::awaitable<Result<RetentionBatch>> DbConversationStore<Backend, Options>::DeleteOlderThan(
    std::chrono::system_clock::time_point cutoff, std::size_t max_rows) {
  Backend* backend = state_->backend.get();
  auto finish = [backend](const Status& committed, typename State::WriteOp& op) {
    return backend->Retained(committed, op);
  };
  return state_->workers->template Write<Result<RetentionBatch>>(
      backend->RetentionOp(FormatTimestamp(cutoff), max_rows), std::move(finish));
}

template <typename Backend, typename Options>
net::awaitable<Result<std::vector<StoredMessage>>>
DbConversationStore<Backend, Options>::RecentMessages(std::string owner, std::string user_id,
                                                      std::size_t max_messages) {
  auto query = [backend = state_->backend.get(), owner = ToStorableText(owner),
                user_id = ToStorableText(user_id),
                max_messages](typename State::Reader& reader, Deadline deadline) {
    return backend->Recent(reader, deadline, owner, user_id, max_messages);
  };
  return state_->workers->template Read<Result<std::vector<StoredMessage>>>(std::move(query));
}

template <typename Backend, typename Options>
net::awaitable<Result<MessagePage>> DbConversationStore<Backend, Options>::ListMessages(
    std::string owner, std::string user_id, std::int64_t after_id, std::size_t limit) {
  auto query = [backend = state_->backend.get(), owner = ToStorableText(owner),
                user_id = ToStorableText(user_id), after_id,
                limit](typename State::Reader& reader, Deadline deadline) {
    return backend->List(reader, deadline, owner, user_id, after_id, limit);
  };
  return state_->workers->template Read<Result<MessagePage>>(std::move(query));
}

template <typename Backend, typename Options>
Status DbConversationStore<Backend, Options>::WriteHealth() const {
  return state_->workers->WriteHealth();
}

// A coroutine (the two checks run in turn); it captures nothing but the back end's pointer.
template <typename Backend, typename Options>
net::awaitable<Status> DbConversationStore<Backend, Options>::Ping() {
  auto query = [backend = state_->backend.get()](typename State::Reader& reader,
                                                 Deadline deadline) {
    return backend->Ping(reader, deadline);
  };
  Status read = co_await state_->workers->template Read<Status>(std::move(query));
  if (!read) co_return read;
  co_return co_await state_->workers->CheckWrites();
}

}  // namespace staple::store
