#include "chat/responses_turn.h"

#include <utility>

#include "common/json_text.h"

namespace staple::chat {

using responses::Json;

namespace {

// An item as the store keeps it: its id and its JSON text.
store::ItemToStore ToStore(const Json& item, std::string json) {
  store::ItemToStore one;
  if (auto id = item.find("id"); id != item.end() && id->is_string()) {
    one.id = id->get<std::string>();
  }
  one.json = std::move(json);
  return one;
}

std::vector<store::ItemToStore> ItemsToStore(const Json& items) {
  std::vector<store::ItemToStore> stored;
  stored.reserve(items.size());
  for (const Json& item : items) stored.push_back(ToStore(item, JsonText(item)));
  return stored;
}

}  // namespace

ResponsesTurn::ResponsesTurn(responses::ResponsesRequest request, std::string id,
                             std::int64_t created_at,
                             std::shared_ptr<const responses::StoredContext> context,
                             std::size_t context_start)
    : request_(std::move(request)),
      id_(std::move(id)),
      created_at_(created_at),
      context_(std::move(context)),
      context_start_(context_start) {}

BodyBuilder ResponsesTurn::Builder() {
  // The turn outlives the pipeline's call (the handler holds it), so a plain pointer will do.
  return [self = this](const TurnRequest& request, const store::History&, std::size_t,
                       bool) -> Result<UpstreamBody> {
    UpstreamBody body;
    body.json = responses::BuildChatBody(self->request_, self->context_->items,
                                         self->context_start_, request.stream, body.estimate);
    return body;
  };
}

std::function<Status(store::Turn&, std::string_view, const ChatAnswer&)> ResponsesTurn::Recorder() {
  return [self = shared_from_this()](store::Turn& turn, std::string_view answer_body,
                                     const ChatAnswer& answer) {
    return self->Record(turn, answer_body, answer);
  };
}

responses::ResponseEventStream& ResponsesTurn::events() {
  if (!events_) events_.emplace(request_, id_, created_at_);
  return *events_;
}

Status ResponsesTurn::Record(store::Turn& turn, std::string_view answer_body,
                             const ChatAnswer& answer) {
  // A streamed answer was read event by event; a whole one of plain text is all in what the
  // pipeline read of it; any other is read here, once.
  responses::ResponseOutput output;
  if (events_) {
    closing_events_ = events_->Finish();
    output = events_->output();
  } else if (answer.plain_message) {
    output = responses::PlainAnswerOutput(answer.model, answer.finish_reason, answer.text,
                                          answer.prompt_tokens, answer.completion_tokens);
  } else {
    auto read = responses::ReadChatCompletion(answer_body);
    if (!read) return read.error();
    output = std::move(read).value();
  }
  responses::OutputSpans spans;
  response_json_ = responses::ResponseObjectText(request_, id_, created_at_, &output, &spans);

  // The turn log keeps the text of the exchange, as for every other chat API.
  turn.prompt = request_.prompt_text;
  turn.completion = output.text;
  if (!request_.store) return Ok();

  auto record = std::make_shared<store::ResponseRecord>();
  record->response.id = id_;
  record->response.conversation_id = request_.conversation_id;
  record->response.previous_response_id = request_.previous_response_id;
  record->response.created_at = created_at_;
  // A response in no conversation is stored without its output, which its output item rows
  // hold (GET /v1/responses/{id} puts it back). A conversation's items can be deleted one by one,
  // so a response in one keeps its whole object.
  record->response.json = request_.conversation_id.empty()
                              ? responses::WithoutOutput(*response_json_, spans)
                              : *response_json_;
  record->input = ItemsToStore(request_.input);
  // The output items' texts are those just written into the response object.
  record->output.reserve(output.output.size());
  for (std::size_t i = 0; i < output.output.size() && i < spans.items.size(); ++i) {
    const auto [begin, end] = spans.items[i];
    record->output.push_back(ToStore(output.output[i], response_json_->substr(begin, end - begin)));
  }
  // What a later read of these items' stored texts gives (ReadContextItem of a tree's dump is
  // ContextItemOf the tree: the fuzz target checks it), without reading the texts again.
  stored_items_.clear();
  stored_items_.reserve(request_.input.size() + output.output.size());
  for (const Json* items : {&request_.input, static_cast<const Json*>(&output.output)}) {
    for (const Json& item : *items) {
      if (item.is_object()) stored_items_.push_back(responses::ContextItemOf(item));
    }
  }
  stored_ = true;
  turn.response = std::move(record);
  return Ok();
}

std::shared_ptr<const responses::StoredContext> ResponsesTurn::ChainAfter(
    std::size_t max_items) const {
  if (!stored_) return nullptr;
  auto chain = std::make_shared<responses::StoredContext>();
  const bool continues = !request_.previous_response_id.empty();
  const std::vector<responses::ContextItem> none;
  const std::vector<responses::ContextItem>& before = continues ? context_->items : none;
  chain->has_more = continues && context_->has_more;
  const std::size_t total = before.size() + stored_items_.size();
  std::size_t skip = 0;  // the oldest items beyond the window
  if (max_items != 0 && total > max_items) {
    skip = total - max_items;
    chain->has_more = true;
  }
  chain->items.reserve(total - skip);
  for (std::size_t i = skip; i < before.size(); ++i) chain->items.push_back(before[i]);
  const std::size_t skip_new = skip > before.size() ? skip - before.size() : 0;
  for (std::size_t i = skip_new; i < stored_items_.size(); ++i) {
    chain->items.push_back(stored_items_[i]);
  }
  return chain;
}

}  // namespace staple::chat
