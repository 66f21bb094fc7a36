#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "chat/responses.h"
#include "chat/turn.h"
#include "common/result.h"
#include "store/conversation_store.h"

namespace staple::chat {

// The Responses API's adapter around the turn pipeline (chat/turn.h): one POST /v1/responses
// turn. The caller (api/responses_handlers) reads the context first — the previous response's
// chain or the conversation's items, as store::ItemWindow — and refuses what cannot be answered;
// this object then builds the upstream body from it, records the response and its items with
// the turn (Turn::response, in the turn's transaction, so the answer leaves only once the next
// request can continue from it on any replica), and shapes the answer: a response object, or
// the Responses event stream.
//
// Used by one request at a time, from the coroutine that runs it. Shared (std::shared_ptr)
// between the handler and the pipeline's callbacks; the callbacks do not outlive the turn.
class ResponsesTurn : public std::enable_shared_from_this<ResponsesTurn> {
 public:
  // `context`: the stored items that come before the request's input (oldest first; never null),
  // of which `context_start` is the first that fits the history window.
  ResponsesTurn(responses::ResponsesRequest request, std::string id, std::int64_t created_at,
                std::shared_ptr<const responses::StoredContext> context, std::size_t context_start);

  const responses::ResponsesRequest& request() const { return request_; }
  const std::string& id() const { return id_; }

  // The pipeline's BodyBuilder for this turn (the history it is given is not used: the context
  // came with the constructor).
  BodyBuilder Builder();

  // TurnRequest::record: reads the output (the whole answer's body, or the event stream's after
  // Finish), sets the turn log's text and, with `store`, attaches the ResponseRecord.
  std::function<Status(store::Turn&, std::string_view, const ChatAnswer&)> Recorder();

  // The response object as JSON text, once the turn was recorded (null before): what the store
  // keeps and the client gets, serialized once.
  const std::string* response_json() const { return response_json_ ? &*response_json_ : nullptr; }

  // Once this stored turn committed: the chain that ends with this response as
  // ConversationStore::ResponseChain(owner, id, max_items) reads it — the context it continued
  // (only a previous response's chain; a conversation's items are not part of it), then its input
  // and output items — for chat::ChainCache. Null when the response is not stored.
  std::shared_ptr<const responses::StoredContext> ChainAfter(std::size_t max_items) const;

  // The event stream of a streaming turn (ResponseEventStream); created on first use.
  responses::ResponseEventStream& events();

  // The closing events of the output (ResponseEventStream::Finish), made while recording a
  // streamed turn: written after the commit, just before response.completed.
  const std::string& closing_events() const { return closing_events_; }

 private:
  Status Record(store::Turn& turn, std::string_view answer_body, const ChatAnswer& answer);

  // Constant after construction.
  const responses::ResponsesRequest request_;
  const std::string id_;
  const std::int64_t created_at_;
  const std::shared_ptr<const responses::StoredContext> context_;
  const std::size_t context_start_;

  // Recorded with `store`: the input then output items as stored, for ChainAfter.
  std::vector<responses::ContextItem> stored_items_;
  bool stored_ = false;

  std::optional<responses::ResponseEventStream> events_;
  std::optional<std::string> response_json_;
  std::string closing_events_;
};

}  // namespace staple::chat
