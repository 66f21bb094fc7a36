// A client's POST /v1/responses body, read by ParseResponsesRequest: it never throws, a refusal
// explains itself, and an accepted request translates into a Chat Completions body (a JSON object
// with a messages array) whatever history window is chosen over its own items, read back from
// their JSON texts as stored items are. And any text read as a stored item (ReadContextItem, one
// pass) gives exactly what its JSON tree gives (ContextItemOf), or nothing when it is no object.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "chat/completion_scan.h"
#include "chat/responses.h"
#include "fuzz_check.h"

namespace responses = staple::chat::responses;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto text = staple::fuzz::AsText(data, size);
  const auto item_tree = responses::Json::parse(text, nullptr, /*allow_exceptions=*/false);
  const auto item = responses::ReadContextItem(text);
  FUZZ_CHECK(item.has_value() == item_tree.is_object());
  if (item) FUZZ_CHECK(*item == responses::ContextItemOf(item_tree));

  responses::ResponsesRequest parsed;
  std::optional<responses::RequestError> refusal;
  bool threw = false;
  try {
    refusal = responses::ParseResponsesRequest(text, parsed);
  } catch (...) {
    threw = true;
  }
  FUZZ_CHECK(!threw);
  if (refusal) {
    FUZZ_CHECK(!refusal->message.empty());
    return 0;
  }
  FUZZ_CHECK(!parsed.model.empty());
  FUZZ_CHECK(parsed.input.is_array());

  // The request's own items stand in for a stored context, read back from their texts.
  std::vector<responses::ContextItem> context;
  for (const auto& one : parsed.input) {
    auto read = responses::ReadContextItem(one.dump());
    FUZZ_CHECK(read.has_value());
    FUZZ_CHECK(*read == responses::ContextItemOf(one));
    context.push_back(std::move(*read));
  }
  bool fits = false;
  const staple::chat::WindowLimits limits{size % 5, size % 37};
  const auto start = responses::ContextStart(context, parsed.input, limits, fits);
  FUZZ_CHECK(start <= context.size());
  FUZZ_CHECK(fits == (start == 0));

  staple::chat::TokenEstimate estimate;
  const auto body = responses::BuildChatBody(parsed, context, start, parsed.stream, estimate);
  const auto tree = nlohmann::ordered_json::parse(body, nullptr, false);
  FUZZ_CHECK(tree.is_object());
  // Written as text, the body is what dumping its tree gives.
  FUZZ_CHECK(body == tree.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
  FUZZ_CHECK(tree.contains("messages") && tree["messages"].is_array());
  FUZZ_CHECK(tree["model"] == parsed.model);
  FUZZ_CHECK(estimate.prompt >= staple::chat::kReplyPrimingTokens);

  // The response object of the request is JSON too, and its text is the tree's, before the
  // answer and with one (an answer of the fuzzed input's text and model).
  const auto dump = [](const nlohmann::ordered_json& tree) {
    return tree.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  };
  const auto object = responses::ResponseObject(parsed, "resp_fuzz", 0, nullptr);
  FUZZ_CHECK(!object.dump().empty());
  FUZZ_CHECK(responses::ResponseObjectText(parsed, "resp_fuzz", 0, nullptr) == dump(object));
  nlohmann::ordered_json answer = {
      {"model", parsed.prompt_text},
      {"choices", {{{"message", {{"content", parsed.prompt_text}}}, {"finish_reason", "length"}}}},
      {"usage", {{"prompt_tokens", size}, {"completion_tokens", 1}}}};
  auto output = responses::ReadChatCompletion(dump(answer));
  FUZZ_CHECK(output.ok());
  // A plain answer taken from the pipeline's scan is the same output, but for the item's id.
  const auto fields = staple::chat::ScanCompletion(dump(answer));
  FUZZ_CHECK(fields.has_value() && fields->has_message && !fields->message_tool_calls);
  auto plain =
      responses::PlainAnswerOutput(fields->model, fields->finish_reason_text, fields->message_text,
                                   fields->prompt_tokens, fields->completion_tokens);
  auto plain_items = plain.output;
  auto read_items = output->output;
  FUZZ_CHECK(plain_items.size() == 1 && read_items.size() == 1);
  plain_items[0].erase("id");
  read_items[0].erase("id");
  FUZZ_CHECK(plain_items == read_items && plain.text == output->text &&
             plain.model == output->model && plain.status == output->status &&
             plain.input_tokens == output->input_tokens);
  // Output items too read back from their stored text as they are (ResponsesTurn::ChainAfter).
  for (const auto& produced : output->output) {
    auto read = responses::ReadContextItem(dump(produced));
    FUZZ_CHECK(read.has_value());
    FUZZ_CHECK(*read == responses::ContextItemOf(produced));
  }
  responses::OutputSpans spans;
  const std::string answered =
      responses::ResponseObjectText(parsed, "resp_fuzz", 7, &*output, &spans);
  FUZZ_CHECK(answered == dump(responses::ResponseObject(parsed, "resp_fuzz", 7, &*output)));
  // Stored without its output and read back with its output items' texts, it is the same text,
  // whatever the fuzzed instructions, model and metadata hold.
  std::vector<std::string> items;
  for (const auto& [begin, end] : spans.items) items.push_back(answered.substr(begin, end - begin));
  const std::string stored = responses::WithoutOutput(answered, spans);
  FUZZ_CHECK(responses::StoredOutputIsEmpty(stored));
  FUZZ_CHECK(responses::WithStoredOutput(stored, items) == answered);
  return 0;
}
