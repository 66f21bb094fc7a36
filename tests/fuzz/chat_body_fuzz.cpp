// A client's /v1/chat/completions body, read in one pass by ParseChatBody: it must agree with what
// a parsed JSON tree says about the same body (the last of repeated members counts in both).
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>

#include "chat/chat_body.h"
#include "fuzz_check.h"

namespace {

using nlohmann::ordered_json;

std::optional<std::uint64_t> Unsigned(const ordered_json& body, const char* key) {
  const auto it = body.find(key);
  if (it == body.end() || !it->is_number_unsigned()) return std::nullopt;
  return it->get<std::uint64_t>();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto text = staple::fuzz::AsText(data, size);
  const auto parsed = staple::chat::ParseChatBody(text);
  const auto tree = ordered_json::parse(text, nullptr, false);
  const bool valid = !tree.is_discarded() && tree.is_object() && tree.contains("messages") &&
                     tree["messages"].is_array();
  FUZZ_CHECK(static_cast<bool>(parsed) == valid);
  if (!valid) return 0;

  const auto stream = tree.find("stream");
  FUZZ_CHECK(parsed->stream ==
             (stream != tree.end() && stream->is_boolean() && stream->get<bool>()));
  const auto model = tree.find("model");
  FUZZ_CHECK(parsed->model ==
             (model != tree.end() && model->is_string() ? model->get<std::string>() : ""));

  std::string prompt;
  for (const auto& message : tree["messages"]) {
    if (!message.is_object()) continue;
    const auto role = message.find("role");
    if (role != message.end() && role->is_string() && role->get<std::string>() == "user") {
      prompt = staple::chat::MessageText(message);
    }
  }
  FUZZ_CHECK(parsed->prompt == prompt);

  auto tokens = Unsigned(tree, "max_completion_tokens");
  if (!tokens) tokens = Unsigned(tree, "max_tokens");
  const auto n = Unsigned(tree, "n");
  if (tokens && n && *n > 1) {
    tokens = *tokens > std::numeric_limits<std::uint64_t>::max() / *n
                 ? std::numeric_limits<std::uint64_t>::max()
                 : *tokens * *n;
  }
  FUZZ_CHECK(parsed->max_completion_tokens == tokens);
  return 0;
}
