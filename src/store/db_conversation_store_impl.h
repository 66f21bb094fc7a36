#pragma once

// The definitions of DbConversationStore, for the .cpp file of a back end only: it defines its
// Backend, includes this file and instantiates the template explicitly.

#include <memory>
#include <optional>
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

// One write of the Responses and Conversations state (a stored response itself rides on its
// turn: Turn::response, written by AppendOp's batch). Built by DbConversationStore, text already
// storable.
struct StateChange {
  enum class Kind {
    kDeleteResponse,      // id: the response; also its items that are in no conversation
    kCreateConversation,  // conversation, items (in order)
    kUpdateConversation,  // id, conversation.metadata_json
    kDeleteConversation,  // id; also its items
    kAppendItems,         // id: the conversation; items (in order)
    kDeleteItem,          // id: the conversation; item_id
  };
  Kind kind = Kind::kDeleteResponse;
  std::string owner;
  std::string id;
  std::string item_id;
  StoredConversation conversation;
  std::vector<ItemToStore> items;
};

// What a StateChange did, once committed.
struct StateOutcome {
  bool found = false;  // the response, conversation or item existed (every kind but create)
  std::optional<StoredConversation> conversation;  // kUpdateConversation: as updated
  std::vector<StoredItem> items;                   // kAppendItems: as stored
};

// One read of the Responses and Conversations state.
struct StateQuery {
  enum class Kind {
    kResponse,           // id → response
    kResponseChain,      // id, max_items → window (ConversationStore::ResponseChain)
    kResponseItems,      // id, output, after, limit, order → page
    kConversation,       // id → conversation
    kConversationItems,  // id, max_items → window
    kConversationPage,   // id, after, limit, order → page
    kConversationItem,   // id, item_id → item
    kStateEpoch,         // → epoch (ConversationStore::StateEpoch)
  };
  Kind kind = Kind::kResponse;
  std::string owner;
  std::string id;
  std::string item_id;
  std::string after;  // an item id, "" = from the start
  bool output = false;
  std::size_t max_items = 0;
  std::size_t limit = 0;
  ItemOrder order = ItemOrder::kDescending;
};

// What a StateQuery found. `found`: the response or conversation named by the query exists for
// its owner (for kConversationItem: the item too); the other members only then.
struct StateAnswer {
  bool found = false;
  std::optional<StoredResponse> response;
  std::optional<StoredConversation> conversation;
  ItemWindow window;
  ItemPage page;
  std::optional<StoredItem> item;
  std::int64_t epoch = 0;
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
//   WriteOp StateOp(StateChange)
//   Result<StateOutcome> StateChanged(const Status& committed, WriteOp&)
//                         a write of the Responses/Conversations state and its result
//   Result<StateAnswer> QueryState(Reader&, Deadline, const StateQuery&)
//                         a read of it: kNotFound when `after` is not an item of the listing
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
net::awaitable<Result<History>> DbConversationStore<Backend, Options>::RecentMessages(
    std::string owner, std::string user_id, std::size_t max_messages) {
  auto query = [backend = state_->backend.get(), owner = ToStorableText(owner),
                user_id = ToStorableText(user_id),
                max_messages](typename State::Reader& reader, Deadline deadline) {
    return backend->Recent(reader, deadline, owner, user_id, max_messages);
  };
  return state_->workers->template Read<Result<History>>(std::move(query));
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

// ---- The Responses and Conversations state: each call is one StateChange or StateQuery ----

// Runs `change` as one write and returns its outcome.
template <typename Backend, typename Options>
net::awaitable<Result<StateOutcome>> ChangeState(
    DbWorkers<typename Backend::Writer, typename Backend::Reader, typename Backend::WriteOp>&
        workers,
    Backend* backend, StateChange change) {
  change.owner = ToStorableText(change.owner);
  change.id = ToStorableText(change.id);
  change.item_id = ToStorableText(change.item_id);
  change.conversation.metadata_json = ToStorableText(change.conversation.metadata_json);
  for (ItemToStore& item : change.items) {
    item.id = ToStorableText(item.id);
    item.json = ToStorableText(item.json);
  }
  auto finish = [backend](const Status& committed, typename Backend::WriteOp& op) {
    return backend->StateChanged(committed, op);
  };
  return workers.template Write<Result<StateOutcome>>(backend->StateOp(std::move(change)),
                                                      std::move(finish));
}

// Runs `query` as one read.
template <typename Backend, typename Options>
net::awaitable<Result<StateAnswer>> AskState(
    DbWorkers<typename Backend::Writer, typename Backend::Reader, typename Backend::WriteOp>&
        workers,
    Backend* backend, StateQuery query) {
  query.owner = ToStorableText(query.owner);
  query.id = ToStorableText(query.id);
  query.item_id = ToStorableText(query.item_id);
  query.after = ToStorableText(query.after);
  auto read = [backend, query = std::move(query)](typename Backend::Reader& reader,
                                                  Deadline deadline) {
    return backend->QueryState(reader, deadline, query);
  };
  return workers.template Read<Result<StateAnswer>>(std::move(read));
}

template <typename Backend, typename Options>
net::awaitable<Result<std::optional<StoredResponse>>>
DbConversationStore<Backend, Options>::GetResponse(std::string owner, std::string id) {
  StateQuery query;
  query.kind = StateQuery::Kind::kResponse;
  query.owner = std::move(owner);
  query.id = std::move(id);
  auto answer = co_await AskState<Backend, Options>(*state_->workers, state_->backend.get(),
                                                    std::move(query));
  if (!answer) co_return answer.error();
  if (!answer->found) co_return std::optional<StoredResponse>();
  co_return std::move(answer->response);
}

template <typename Backend, typename Options>
net::awaitable<Result<std::optional<ItemWindow>>>
DbConversationStore<Backend, Options>::ResponseChain(std::string owner, std::string id,
                                                     std::size_t max_items) {
  StateQuery query;
  query.kind = StateQuery::Kind::kResponseChain;
  query.owner = std::move(owner);
  query.id = std::move(id);
  query.max_items = max_items;
  auto answer = co_await AskState<Backend, Options>(*state_->workers, state_->backend.get(),
                                                    std::move(query));
  if (!answer) co_return answer.error();
  if (!answer->found) co_return std::optional<ItemWindow>();
  co_return std::optional<ItemWindow>(std::move(answer->window));
}

template <typename Backend, typename Options>
net::awaitable<Result<std::optional<ItemPage>>>
DbConversationStore<Backend, Options>::ListResponseItems(std::string owner, std::string id,
                                                         bool output, std::string after,
                                                         std::size_t limit, ItemOrder order) {
  StateQuery query;
  query.kind = StateQuery::Kind::kResponseItems;
  query.owner = std::move(owner);
  query.id = std::move(id);
  query.output = output;
  query.after = std::move(after);
  query.limit = limit;
  query.order = order;
  auto answer = co_await AskState<Backend, Options>(*state_->workers, state_->backend.get(),
                                                    std::move(query));
  if (!answer) co_return answer.error();
  if (!answer->found) co_return std::optional<ItemPage>();
  co_return std::optional<ItemPage>(std::move(answer->page));
}

template <typename Backend, typename Options>
net::awaitable<Result<bool>> DbConversationStore<Backend, Options>::DeleteResponse(
    std::string owner, std::string id) {
  StateChange change;
  change.kind = StateChange::Kind::kDeleteResponse;
  change.owner = std::move(owner);
  change.id = std::move(id);
  auto outcome = co_await ChangeState<Backend, Options>(*state_->workers, state_->backend.get(),
                                                        std::move(change));
  if (!outcome) co_return outcome.error();
  co_return outcome->found;
}

template <typename Backend, typename Options>
net::awaitable<Status> DbConversationStore<Backend, Options>::CreateConversation(
    std::string owner, StoredConversation conversation, std::vector<ItemToStore> items) {
  StateChange change;
  change.kind = StateChange::Kind::kCreateConversation;
  change.owner = std::move(owner);
  change.id = conversation.id;
  change.conversation = std::move(conversation);
  change.conversation.id = ToStorableText(change.conversation.id);
  change.items = std::move(items);
  auto outcome = co_await ChangeState<Backend, Options>(*state_->workers, state_->backend.get(),
                                                        std::move(change));
  if (!outcome) co_return outcome.error();
  co_return Ok();
}

template <typename Backend, typename Options>
net::awaitable<Result<std::optional<StoredConversation>>>
DbConversationStore<Backend, Options>::GetConversation(std::string owner, std::string id) {
  StateQuery query;
  query.kind = StateQuery::Kind::kConversation;
  query.owner = std::move(owner);
  query.id = std::move(id);
  auto answer = co_await AskState<Backend, Options>(*state_->workers, state_->backend.get(),
                                                    std::move(query));
  if (!answer) co_return answer.error();
  if (!answer->found) co_return std::optional<StoredConversation>();
  co_return std::move(answer->conversation);
}

template <typename Backend, typename Options>
net::awaitable<Result<std::optional<StoredConversation>>>
DbConversationStore<Backend, Options>::UpdateConversation(std::string owner, std::string id,
                                                          std::string metadata_json) {
  StateChange change;
  change.kind = StateChange::Kind::kUpdateConversation;
  change.owner = std::move(owner);
  change.id = std::move(id);
  change.conversation.metadata_json = std::move(metadata_json);
  auto outcome = co_await ChangeState<Backend, Options>(*state_->workers, state_->backend.get(),
                                                        std::move(change));
  if (!outcome) co_return outcome.error();
  if (!outcome->found) co_return std::optional<StoredConversation>();
  co_return std::move(outcome->conversation);
}

template <typename Backend, typename Options>
net::awaitable<Result<bool>> DbConversationStore<Backend, Options>::DeleteConversation(
    std::string owner, std::string id) {
  StateChange change;
  change.kind = StateChange::Kind::kDeleteConversation;
  change.owner = std::move(owner);
  change.id = std::move(id);
  auto outcome = co_await ChangeState<Backend, Options>(*state_->workers, state_->backend.get(),
                                                        std::move(change));
  if (!outcome) co_return outcome.error();
  co_return outcome->found;
}

template <typename Backend, typename Options>
net::awaitable<Result<std::optional<std::vector<StoredItem>>>>
DbConversationStore<Backend, Options>::AppendConversationItems(std::string owner, std::string id,
                                                               std::vector<ItemToStore> items) {
  StateChange change;
  change.kind = StateChange::Kind::kAppendItems;
  change.owner = std::move(owner);
  change.id = std::move(id);
  change.items = std::move(items);
  auto outcome = co_await ChangeState<Backend, Options>(*state_->workers, state_->backend.get(),
                                                        std::move(change));
  if (!outcome) co_return outcome.error();
  if (!outcome->found) co_return std::optional<std::vector<StoredItem>>();
  co_return std::optional<std::vector<StoredItem>>(std::move(outcome->items));
}

template <typename Backend, typename Options>
net::awaitable<Result<std::optional<ItemWindow>>>
DbConversationStore<Backend, Options>::ConversationItems(std::string owner, std::string id,
                                                         std::size_t max_items) {
  StateQuery query;
  query.kind = StateQuery::Kind::kConversationItems;
  query.owner = std::move(owner);
  query.id = std::move(id);
  query.max_items = max_items;
  auto answer = co_await AskState<Backend, Options>(*state_->workers, state_->backend.get(),
                                                    std::move(query));
  if (!answer) co_return answer.error();
  if (!answer->found) co_return std::optional<ItemWindow>();
  co_return std::optional<ItemWindow>(std::move(answer->window));
}

template <typename Backend, typename Options>
net::awaitable<Result<std::optional<ItemPage>>>
DbConversationStore<Backend, Options>::ListConversationItems(std::string owner, std::string id,
                                                             std::string after, std::size_t limit,
                                                             ItemOrder order) {
  StateQuery query;
  query.kind = StateQuery::Kind::kConversationPage;
  query.owner = std::move(owner);
  query.id = std::move(id);
  query.after = std::move(after);
  query.limit = limit;
  query.order = order;
  auto answer = co_await AskState<Backend, Options>(*state_->workers, state_->backend.get(),
                                                    std::move(query));
  if (!answer) co_return answer.error();
  if (!answer->found) co_return std::optional<ItemPage>();
  co_return std::optional<ItemPage>(std::move(answer->page));
}

template <typename Backend, typename Options>
net::awaitable<Result<std::optional<StoredItem>>>
DbConversationStore<Backend, Options>::GetConversationItem(std::string owner, std::string id,
                                                           std::string item_id) {
  StateQuery query;
  query.kind = StateQuery::Kind::kConversationItem;
  query.owner = std::move(owner);
  query.id = std::move(id);
  query.item_id = std::move(item_id);
  auto answer = co_await AskState<Backend, Options>(*state_->workers, state_->backend.get(),
                                                    std::move(query));
  if (!answer) co_return answer.error();
  if (!answer->found) co_return std::optional<StoredItem>();
  co_return std::move(answer->item);
}

template <typename Backend, typename Options>
net::awaitable<Result<bool>> DbConversationStore<Backend, Options>::DeleteConversationItem(
    std::string owner, std::string id, std::string item_id) {
  StateChange change;
  change.kind = StateChange::Kind::kDeleteItem;
  change.owner = std::move(owner);
  change.id = std::move(id);
  change.item_id = std::move(item_id);
  auto outcome = co_await ChangeState<Backend, Options>(*state_->workers, state_->backend.get(),
                                                        std::move(change));
  if (!outcome) co_return outcome.error();
  co_return outcome->found;
}

template <typename Backend, typename Options>
net::awaitable<Result<std::int64_t>> DbConversationStore<Backend, Options>::StateEpoch() {
  StateQuery query;
  query.kind = StateQuery::Kind::kStateEpoch;
  auto answer = co_await AskState<Backend, Options>(*state_->workers, state_->backend.get(),
                                                    std::move(query));
  if (!answer) co_return answer.error();
  co_return answer->epoch;
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
