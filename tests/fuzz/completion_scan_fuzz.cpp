// An upstream answer (a chat.completion body or one chat.completion.chunk event), read in one pass
// by ScanCompletion: it must agree with what a parsed JSON tree says about the same text.
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>

#include "chat/completion_scan.h"
#include "fuzz_check.h"

namespace {

using nlohmann::json;
using staple::chat::CompletionFields;

// A member of `object` (which may be any value), or nullptr.
const json* Member(const json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

// An integer member; counts beyond 64-bit signed saturate.
std::optional<std::int64_t> Integer(const json* value) {
  if (value == nullptr || !value->is_number_integer()) return std::nullopt;
  if (value->is_number_unsigned() &&
      value->get<std::uint64_t>() >
          static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
    return std::numeric_limits<std::int64_t>::max();
  }
  return value->get<std::int64_t>();
}

CompletionFields FromTree(const json& tree) {
  CompletionFields expected;
  if (const auto* model = Member(tree, "model"); model != nullptr && model->is_string()) {
    expected.model = model->get<std::string>();
  }
  const json* usage = Member(tree, "usage");
  if (usage != nullptr) {
    expected.prompt_tokens = Integer(Member(*usage, "prompt_tokens"));
    expected.completion_tokens = Integer(Member(*usage, "completion_tokens"));
  }
  const json* choices = Member(tree, "choices");
  if (choices != nullptr && choices->is_array() && !choices->empty() &&
      choices->front().is_object()) {
    const json& first = choices->front();
    expected.has_first_choice = true;
    expected.index = Integer(Member(first, "index"));
    const json* finish = Member(first, "finish_reason");
    expected.finish_reason = finish != nullptr && !finish->is_null();
    if (finish != nullptr && finish->is_string()) {
      expected.finish_reason_text = finish->get<std::string>();
    }
    const json* message = Member(first, "message");
    if (message != nullptr && message->is_object()) {
      expected.has_message = true;
      const json* calls = Member(*message, "tool_calls");
      expected.message_tool_calls = calls != nullptr && !calls->is_null();
      const json* refusal = Member(*message, "refusal");
      expected.message_refusal = refusal != nullptr && !refusal->is_null();
      const json* content = Member(*message, "content");
      if (content == nullptr) {
        expected.message_content = CompletionFields::Content::kAbsent;
      } else if (content->is_string()) {
        expected.message_content = CompletionFields::Content::kString;
        expected.message_text = content->get<std::string>();
      } else if (content->is_null()) {
        expected.message_content = CompletionFields::Content::kNull;
      } else {
        expected.message_content = CompletionFields::Content::kOther;
      }
    }
    const json* delta = Member(first, "delta");
    if (const json* content = delta != nullptr ? Member(*delta, "content") : nullptr;
        content != nullptr && content->is_string()) {
      expected.delta_text = content->get<std::string>();
    }
  }
  if (const json* error = Member(tree, "error"); error != nullptr && !error->is_null()) {
    expected.error = true;
    if (error->is_string()) {
      expected.error_text = error->get<std::string>();
    } else if (const json* message = Member(*error, "message");
               message != nullptr && message->is_string()) {
      expected.error_text = message->get<std::string>();
    }
  }
  return expected;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto text = staple::fuzz::AsText(data, size);
  const auto scanned = staple::chat::ScanCompletion(text);
  const auto tree = json::parse(text, nullptr, false);
  FUZZ_CHECK(scanned.has_value() == (!tree.is_discarded() && tree.is_object()));
  if (!scanned) return 0;
  const CompletionFields expected = FromTree(tree);
  FUZZ_CHECK(scanned->model == expected.model);
  FUZZ_CHECK(scanned->prompt_tokens == expected.prompt_tokens);
  FUZZ_CHECK(scanned->completion_tokens == expected.completion_tokens);
  FUZZ_CHECK(scanned->has_first_choice == expected.has_first_choice);
  FUZZ_CHECK(scanned->index == expected.index);
  FUZZ_CHECK(scanned->finish_reason == expected.finish_reason);
  FUZZ_CHECK(scanned->finish_reason_text == expected.finish_reason_text);
  FUZZ_CHECK(scanned->has_message == expected.has_message);
  FUZZ_CHECK(scanned->message_tool_calls == expected.message_tool_calls);
  FUZZ_CHECK(scanned->message_refusal == expected.message_refusal);
  FUZZ_CHECK(scanned->message_content == expected.message_content);
  FUZZ_CHECK(scanned->message_text == expected.message_text);
  FUZZ_CHECK(scanned->delta_text == expected.delta_text);
  FUZZ_CHECK(scanned->error == expected.error);
  FUZZ_CHECK(scanned->error_text == expected.error_text);
  return 0;
}
