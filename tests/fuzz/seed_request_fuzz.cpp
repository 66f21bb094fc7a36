// The seed endpoint's request (POST /openai-completion): Content-Type and body. Input: the
// Content-Type value, a newline, the body. An accepted body is a JSON object with a non-empty
// string prompt, as a parsed tree says, and every refusal is a 400/415 with a JSON body.
#include <nlohmann/json.hpp>

#include "api/seed_request.h"
#include "fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto text = staple::fuzz::AsText(data, size);
  const auto newline = text.find('\n');
  staple::http::Request request;
  request.method = "POST";
  request.path = "/openai-completion";
  request.headers.Add("Content-Type", std::string(text.substr(0, newline)));
  if (newline != std::string_view::npos) request.body = std::string(text.substr(newline + 1));

  staple::api::SeedRequest parsed;
  const auto refusal = staple::api::ParseSeedRequest(request, parsed);
  if (refusal) {
    FUZZ_CHECK(refusal->status == 400 || refusal->status == 415);
    FUZZ_CHECK(!nlohmann::json::parse(refusal->body, nullptr, false).is_discarded());
    return 0;
  }
  FUZZ_CHECK(staple::api::IsJsonContentType(text.substr(0, newline)));
  const auto tree = nlohmann::json::parse(request.body, nullptr, false);
  FUZZ_CHECK(tree.is_object());
  FUZZ_CHECK(tree["prompt"].is_string() && tree["prompt"].get<std::string>() == parsed.prompt);
  FUZZ_CHECK(!parsed.prompt.empty());
  FUZZ_CHECK(parsed.user_id.size() <= staple::api::kMaxUserIdLength);
  const auto stream = tree.find("stream");
  FUZZ_CHECK(parsed.stream ==
             (stream != tree.end() && stream->is_boolean() && stream->get<bool>()));
  return 0;
}
