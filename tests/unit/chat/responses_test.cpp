#include "chat/responses.h"

#include <gtest/gtest.h>

#include <chrono>
#include <regex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "chat/completion_scan.h"

namespace staple::chat::responses {
namespace {

ResponsesRequest Parse(const std::string& body) {
  ResponsesRequest parsed;
  const auto error = ParseResponsesRequest(body, parsed);
  EXPECT_FALSE(error.has_value()) << body << " -> " << error->param << ": " << error->message;
  return parsed;
}

RequestError Refusal(const std::string& body) {
  ResponsesRequest parsed;
  const auto error = ParseResponsesRequest(body, parsed);
  EXPECT_TRUE(error.has_value()) << body;
  return error.value_or(RequestError{});
}

// ---- ids -------------------------------------------------------------------------------------

TEST(NewIdTest, IsThePrefixAnd48HexDigitsAndNeverRepeats) {
  const std::regex shape("resp_[0-9a-f]{48}");
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) {
    const auto id = NewId("resp");
    EXPECT_TRUE(std::regex_match(id, shape)) << id;
    seen.insert(id);
  }
  EXPECT_EQ(seen.size(), 100U);
}

TEST(NewIdTest, StartsWithTheCreationTimeSoLaterIdsSortAfterEarlierOnes) {
  const auto before = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  const auto id = NewId("resp");
  const auto after = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
  const auto millis = std::stoll(id.substr(5, 12), nullptr, 16);
  EXPECT_GE(millis, before);
  EXPECT_LE(millis, after);
  // Ids made in different milliseconds sort by time, whatever their random parts.
  std::string earlier = NewId("resp");
  std::string later;
  do {
    later = NewId("resp");
  } while (later.substr(5, 12) == earlier.substr(5, 12));
  EXPECT_LT(earlier, later);
}

// ---- NormalizeItems --------------------------------------------------------------------------

TEST(NormalizeItemsTest, NormalizesMessagesCallsAndOutputs) {
  const auto items = Json::parse(R"([
    {"role": "developer", "content": "be brief"},
    {"type": "message", "id": "msg_mine", "role": "user",
     "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
    {"role": "assistant", "content": "sure", "status": "completed", "phase": "final_answer"},
    {"type": "message", "role": "assistant",
     "content": [{"type": "output_text", "text": "t", "annotations": [{"x": 1}], "logprobs": []},
                 {"type": "refusal", "refusal": "no"}]},
    {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}",
     "status": "completed"},
    {"type": "function_call_output", "id": "fco_given", "call_id": "call_1", "output": "42"},
    {"type": "function_call_output", "call_id": "call_1",
     "output": [{"type": "input_text", "text": "4"}, {"type": "input_text", "text": "2"}]}
  ])");
  Json out;
  ASSERT_FALSE(NormalizeItems(items, "items", out).has_value());
  ASSERT_EQ(out.size(), 7U);

  EXPECT_EQ(out[0]["type"], "message");
  EXPECT_EQ(out[0]["role"], "developer");
  EXPECT_EQ(out[0]["status"], "completed");
  EXPECT_EQ(out[0]["content"], Json::parse(R"([{"type":"input_text","text":"be brief"}])"));
  EXPECT_TRUE(std::regex_match(out[0]["id"].get<std::string>(), std::regex("msg_[0-9a-f]{48}")));

  EXPECT_EQ(out[1]["id"], "msg_mine");
  EXPECT_EQ(out[1]["content"].size(), 2U);

  EXPECT_EQ(out[2]["content"],
            Json::parse(R"([{"type":"output_text","text":"sure","annotations":[]}])"));
  EXPECT_FALSE(out[2].contains("phase"));

  EXPECT_EQ(out[3]["content"], Json::parse(R"([
    {"type":"output_text","text":"t","annotations":[{"x":1}]},
    {"type":"refusal","refusal":"no"}])"));

  EXPECT_EQ(out[4]["call_id"], "call_1");
  EXPECT_EQ(out[4]["name"], "f");
  EXPECT_EQ(out[4]["arguments"], "{}");
  EXPECT_EQ(out[4]["status"], "completed");
  EXPECT_TRUE(std::regex_match(out[4]["id"].get<std::string>(), std::regex("fc_[0-9a-f]{48}")));

  EXPECT_EQ(out[5]["id"], "fco_given");
  EXPECT_EQ(out[5]["output"], "42");
  EXPECT_EQ(out[6]["output"], "42");
  EXPECT_TRUE(std::regex_match(out[6]["id"].get<std::string>(), std::regex("fco_[0-9a-f]{48}")));
}

TEST(NormalizeItemsTest, RefusalsNameTheField) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"([{"type": "item_reference", "id": "x"}])", "items[0].type"},
      {R"([{"type": "reasoning", "summary": []}])", "items[0].type"},
      {R"(["hello"])", "items[0]"},
      {R"([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}])", "items[1].role"},
      {R"([{"role": "user"}])", "items[0].content"},
      {R"([{"role": "user", "content": 5}])", "items[0].content"},
      {R"([{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}])",
       "items[0].content[0].type"},
      {R"([{"role": "user", "content": [{"type": "output_text", "text": "u"}]}])",
       "items[0].content[0].type"},
      {R"([{"role": "assistant", "content": [{"type": "input_text", "text": "u"}]}])",
       "items[0].content[0].type"},
      {R"([{"role": "user", "content": [{"type": "input_text"}]}])", "items[0].content[0].text"},
      {R"([{"type": "function_call", "name": "f", "arguments": "{}"}])", "items[0].call_id"},
      {R"([{"type": "function_call", "call_id": "c", "arguments": "{}"}])", "items[0].name"},
      {R"([{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}])",
       "items[0].arguments"},
      {R"([{"type": "function_call_output", "call_id": "c"}])", "items[0].output"},
      {R"([{"type": "function_call_output", "call_id": "c",
            "output": [{"type": "input_file", "file_id": "f"}]}])",
       "items[0].output[0].type"},
      {R"([{"role": "user", "content": "a", "id": 7}])", "items[0].id"},
  };
  for (const auto& [items, param] : cases) {
    Json out = Json::array({"untouched"});
    const auto error = NormalizeItems(Json::parse(items), "items", out);
    ASSERT_TRUE(error.has_value()) << items;
    EXPECT_EQ(error->param, param) << items;
    EXPECT_FALSE(error->message.empty());
    EXPECT_EQ(out, Json::array({"untouched"})) << "a refusal leaves the output alone";
  }
}

// ---- ParseResponsesRequest -------------------------------------------------------------------

TEST(ParseResponsesRequestTest, StringInputIsOneUserMessage) {
  const auto parsed = Parse(R"({"model": "m", "input": "hello"})");
  EXPECT_EQ(parsed.model, "m");
  ASSERT_EQ(parsed.input.size(), 1U);
  EXPECT_EQ(parsed.input[0]["role"], "user");
  EXPECT_EQ(parsed.input[0]["content"][0]["text"], "hello");
  EXPECT_EQ(parsed.prompt_text, "hello");
  EXPECT_TRUE(parsed.store);
  EXPECT_FALSE(parsed.stream);
  EXPECT_EQ(parsed.tool_choice, "auto");
  EXPECT_EQ(parsed.text, Json::parse(R"({"format":{"type":"text"}})"));
  EXPECT_FALSE(parsed.truncation_auto);
}

TEST(ParseResponsesRequestTest, ReadsEverySupportedField) {
  const auto parsed = Parse(R"({
    "model": "gpt", "instructions": "be kind", "store": false, "stream": true,
    "input": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
              {"role": "user", "content": [{"type": "input_text", "text": "last"}]}],
    "previous_response_id": "resp_1",
    "tools": [{"type": "function", "name": "get_weather", "description": "d",
               "parameters": {"type": "object"}, "strict": true}],
    "tool_choice": {"type": "function", "name": "get_weather"},
    "parallel_tool_calls": false, "max_output_tokens": 300, "temperature": 0.5, "top_p": 0.9,
    "metadata": {"k": "v"}, "truncation": "auto", "user": "u1",
    "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"},
                        "strict": true}}})");
  EXPECT_EQ(parsed.instructions, "be kind");
  EXPECT_FALSE(parsed.store);
  EXPECT_TRUE(parsed.stream);
  EXPECT_EQ(parsed.input.size(), 3U);
  EXPECT_EQ(parsed.prompt_text, "last");
  EXPECT_EQ(parsed.previous_response_id, "resp_1");
  EXPECT_EQ(parsed.tools.size(), 1U);
  EXPECT_EQ(parsed.tool_choice, Json::parse(R"({"type":"function","name":"get_weather"})"));
  EXPECT_EQ(parsed.parallel_tool_calls, false);
  EXPECT_EQ(parsed.max_output_tokens, 300);
  EXPECT_EQ(parsed.temperature, 0.5);
  EXPECT_EQ(parsed.top_p, 0.9);
  EXPECT_EQ(parsed.metadata, Json::parse(R"({"k":"v"})"));
  EXPECT_TRUE(parsed.truncation_auto);
  EXPECT_EQ(parsed.user, "u1");
  EXPECT_EQ(parsed.text["format"]["type"], "json_schema");
}

TEST(ParseResponsesRequestTest, ConversationAsStringOrObject) {
  EXPECT_EQ(Parse(R"({"model":"m","input":"x","conversation":"conv_1"})").conversation_id,
            "conv_1");
  EXPECT_EQ(Parse(R"({"model":"m","input":"x","conversation":{"id":"conv_2"}})").conversation_id,
            "conv_2");
}

// What the OpenAI Agents SDK (OpenAIResponsesModel) and the openai SDKs send when nothing is set:
// empty lists, null for unset values, and hints that change no answer.
TEST(ParseResponsesRequestTest, AcceptsTheHarmlessDefaultsOfTheSdks) {
  const auto parsed = Parse(R"({
    "model": "gpt", "instructions": null, "input": [
      {"id": "m1", "role": "user", "content": "hi"},
      {"type": "message", "id": "msg_a", "role": "assistant", "status": "completed",
       "content": [{"type": "output_text", "text": "calling", "annotations": []}]},
      {"id": "fc_1", "type": "function_call", "name": "f", "call_id": "call_1",
       "arguments": "{}", "status": "completed"},
      {"type": "function_call_output", "call_id": "call_1", "output": "ok",
       "status": "completed"}],
    "include": [], "tools": [], "previous_response_id": null, "conversation": null,
    "temperature": null, "top_p": null, "truncation": null, "max_output_tokens": null,
    "parallel_tool_calls": null, "stream": false, "text": {"verbosity": null}, "store": null,
    "reasoning": {}, "service_tier": "auto", "background": false,
    "stream_options": {"include_obfuscation": false}, "prompt_cache_key": "k",
    "safety_identifier": "s", "user": null, "metadata": null, "prompt": null})");
  EXPECT_EQ(parsed.input.size(), 4U);
  EXPECT_EQ(parsed.input[2]["id"], "fc_1");
  EXPECT_FALSE(parsed.instructions.has_value());
  EXPECT_TRUE(parsed.store);
  EXPECT_FALSE(parsed.temperature.has_value());
  EXPECT_EQ(parsed.text, Json::parse(R"({"format":{"type":"text"}})"));
  Parse(R"({"model":"m","input":"x","reasoning":{"effort":null,"summary":null}})");
  Parse(R"({"model":"m","input":"x","service_tier":"default","text":{"verbosity":"medium"}})");
}

TEST(ParseResponsesRequestTest, EachRefusalNamesItsParam) {
  struct Case {
    std::string body;
    std::string param;
    std::string code;
  };
  const std::vector<Case> cases = {
      {R"({"input":"x"})", "model", "missing_required_parameter"},
      {R"({"model":"m"})", "input", "missing_required_parameter"},
      {R"({"model":7,"input":"x"})", "model", "invalid_type"},
      {R"({"model":"m","input":5})", "input", "invalid_type"},
      {R"({"model":"m","input":[{"type":"item_reference","id":"i"}]})", "input[0].type",
       "unsupported_parameter"},
      {R"({"model":"m","input":"x","frequency_penalty":1})", "frequency_penalty",
       "unsupported_parameter"},
      {R"({"model":"m","input":"x","top_logprobs":2})", "top_logprobs", "unsupported_parameter"},
      {R"({"model":"m","input":"x","include":["reasoning.encrypted_content"]})", "include",
       "unsupported_parameter"},
      {R"({"model":"m","input":"x","reasoning":{"effort":"high"}})", "reasoning",
       "unsupported_parameter"},
      {R"({"model":"m","input":"x","background":true})", "background", "unsupported_parameter"},
      {R"({"model":"m","input":"x","service_tier":"flex"})", "service_tier",
       "unsupported_parameter"},
      {R"({"model":"m","input":"x","prompt":{"id":"p"}})", "prompt", "unsupported_parameter"},
      {R"({"model":"m","input":"x","tools":[{"type":"web_search"}]})", "tools[0].type",
       "unsupported_parameter"},
      {R"({"model":"m","input":"x","tools":[{"type":"function","name":"f"},)"
       R"({"type":"file_search","vector_store_ids":[]}]})",
       "tools[1].type", "unsupported_parameter"},
      {R"({"model":"m","input":"x","tools":[{"type":"function"}]})", "tools[0].name",
       "missing_required_parameter"},
      {R"({"model":"m","input":"x","tools":[{"type":"function","name":"f","defer_loading":true}]})",
       "tools[0].defer_loading", "unsupported_parameter"},
      {R"({"model":"m","input":"x","tools":[{"type":"function","name":"f","parameters":3}]})",
       "tools[0].parameters", "invalid_type"},
      {R"({"model":"m","input":"x","tool_choice":"sometimes"})", "tool_choice", "invalid_value"},
      {R"({"model":"m","input":"x","tool_choice":{"type":"file_search"}})", "tool_choice.type",
       "unsupported_parameter"},
      {R"({"model":"m","input":"x","tool_choice":{"type":"function","name":"g"},)"
       R"("tools":[{"type":"function","name":"f"}]})",
       "tool_choice.name", "invalid_value"},
      {R"({"model":"m","input":"x","previous_response_id":"resp_1","conversation":"conv_1"})",
       "conversation", "invalid_value"},
      {R"({"model":"m","input":"x","conversation":{"name":"c"}})", "conversation.id",
       "missing_required_parameter"},
      {R"({"model":"m","input":"x","store":"yes"})", "store", "invalid_type"},
      {R"({"model":"m","input":"x","stream":1})", "stream", "invalid_type"},
      {R"({"model":"m","input":"x","max_output_tokens":0})", "max_output_tokens", "invalid_value"},
      {R"({"model":"m","input":"x","max_output_tokens":1.5})", "max_output_tokens", "invalid_type"},
      {R"({"model":"m","input":"x","temperature":3})", "temperature", "invalid_value"},
      {R"({"model":"m","input":"x","top_p":-0.1})", "top_p", "invalid_value"},
      {R"({"model":"m","input":"x","metadata":{"k":1}})", "metadata.k", "invalid_type"},
      {R"({"model":"m","input":"x","truncation":"middle"})", "truncation", "invalid_value"},
      {R"({"model":"m","input":"x","text":{"format":{"type":"xml"}}})", "text.format.type",
       "invalid_value"},
      {R"({"model":"m","input":"x","text":{"format":{"type":"json_schema","schema":{}}}})",
       "text.format.name", "missing_required_parameter"},
      {R"({"model":"m","input":"x","text":{"verbosity":"low"}})", "text.verbosity",
       "unsupported_parameter"},
      {R"({"model":"m","input":"x","user":5})", "user", "invalid_type"},
  };
  for (const auto& c : cases) {
    const auto error = Refusal(c.body);
    EXPECT_EQ(error.param, c.param) << c.body;
    EXPECT_EQ(error.code, c.code) << c.body;
    EXPECT_FALSE(error.message.empty()) << c.body;
  }
}

TEST(ParseResponsesRequestTest, MetadataHasAtMost16Keys) {
  Json metadata = Json::object();
  for (char key = 'a'; key < 'a' + 17; ++key) metadata[std::string(1, key)] = "v";
  const Json body = {{"model", "m"}, {"input", "x"}, {"metadata", metadata}};
  EXPECT_EQ(Refusal(body.dump()).param, "metadata");
}

TEST(ParseResponsesRequestTest, ABodyThatIsNotAnObjectHasNoParam) {
  for (const char* body : {"", "[]", "{", "\"text\"", "null"}) {
    const auto error = Refusal(body);
    EXPECT_EQ(error.param, "") << body;
    EXPECT_FALSE(error.message.empty());
  }
}

// ---- ContextItem -----------------------------------------------------------------------------

TEST(ReadContextItemTest, ReadsWhatTheTreeGivesForEveryShape) {
  const std::vector<std::string> texts = {
      // What NormalizeItems stores.
      R"({"type":"message","id":"msg_1","status":"completed","role":"user",
          "content":[{"type":"input_text","text":"hello "},{"type":"input_text","text":"you"}]})",
      R"({"type":"message","id":"msg_2","status":"completed","role":"assistant",
          "content":[{"type":"output_text","text":"partly","annotations":[{"a":[1,{"b":2}]}]},
                     {"type":"refusal","refusal":" no"}]})",
      R"({"type":"function_call","id":"fc_1","call_id":"call_1","name":"weather",
          "arguments":"{\"city\":\"Paris\"}","status":"completed"})",
      R"({"type":"function_call_output","id":"fco_1","call_id":"call_1","output":"sun"})",
      // Members in another order; escapes, characters of several bytes.
      R"({"content":[{"text":"caf\u00e9 \ud83d\ude00"}],"role":"developer","type":"message"})",
      // A part with both text and refusal; parts that are not objects; nested containers.
      R"({"type":"message","role":"assistant","content":[{"refusal":"r","text":"t"},"x",5,[1],
          null,{"text":{"not":"a string"}},{"text":["no"]},{"text":7}]})",
      // Repeated keys: the last value counts, whatever its type.
      R"({"type":"message","role":"user","role":"system","content":[{"text":"a"}],
          "content":[{"text":"b","text":"c"}]})",
      R"({"type":"message","role":"user","content":[{"text":"a"}],"content":"string"})",
      R"({"type":"message","role":"user","content":[{"text":"a"}],"content":{"text":"b"}})",
      R"({"type":"function_call","name":"f","name":5,"arguments":"x","call_id":null})",
      R"({"type":"function_call_output","call_id":"c","output":["parts"]})",
      R"({"type":5,"role":"user","content":[{"text":"a"}]})",
      R"({"type":"message","type":"reasoning","content":[{"text":"a"}]})",
      R"({"type":"reasoning","summary":[]})",
      R"({"type":"message"})",
      R"({})",
  };
  for (const auto& text : texts) {
    const auto tree = Json::parse(text);
    const auto read = ReadContextItem(text);
    ASSERT_TRUE(read.has_value()) << text;
    EXPECT_EQ(*read, ContextItemOf(tree)) << text;
  }
  // Spot checks of what the two agree on.
  const auto mixed = ReadContextItem(texts[5]);
  EXPECT_EQ(mixed->chat_json, R"({"role":"assistant","content":"tr")");
  EXPECT_EQ(mixed->chars, 2U);
  EXPECT_EQ(mixed->text_bytes, 2U);
  const auto repeated = ReadContextItem(texts[6]);
  EXPECT_EQ(repeated->role, "system");
  EXPECT_EQ(repeated->chat_json, R"({"role":"system","content":"c")");
  const auto call = ReadContextItem(texts[2]);
  EXPECT_EQ(call->kind, ContextItem::Kind::kFunctionCall);
  EXPECT_EQ(call->chars, 7U + 16U);
  EXPECT_EQ(call->chat_json, R"({"id":"call_1","type":"function","function":{"name":"weather",)"
                             R"("arguments":"{\"city\":\"Paris\"}"}})");
  EXPECT_EQ(ReadContextItem(texts[3])->chat_json,
            R"({"role":"tool","tool_call_id":"call_1","content":"sun")");
  const auto developer = ReadContextItem(texts[4]);
  EXPECT_EQ(developer->chars, 6U);        // "café 😀"
  EXPECT_EQ(developer->text_bytes, 10U);  // "café" 5 bytes, a space, "😀" 4
  EXPECT_EQ(developer->role, "developer");
  EXPECT_EQ(developer->chat_json, "{\"role\":\"system\",\"content\":\"caf\u00e9 \U0001F600\"");
}

TEST(ReadContextItemTest, TextsThatAreNoObjectGiveNothing) {
  for (const std::string text :
       {"", "[]", "\"text\"", "5", "null", "{", "{\"type\":}", "{} {}", "{\"text\":\"\xff\"}"}) {
    EXPECT_FALSE(ReadContextItem(text).has_value()) << text;
  }
}

// ---- ContextStart ----------------------------------------------------------------------------

Json UserItem(const std::string& text) {
  return {{"type", "message"},
          {"role", "user"},
          {"content", Json::array({{{"type", "input_text"}, {"text", text}}})}};
}
Json AssistantItem(const std::string& text) {
  return {{"type", "message"},
          {"role", "assistant"},
          {"content", Json::array({{{"type", "output_text"}, {"text", text}}})}};
}
Json CallItem(const std::string& call_id, const std::string& arguments) {
  return {{"type", "function_call"}, {"call_id", call_id}, {"name", "f"}, {"arguments", arguments}};
}
Json OutputItem(const std::string& call_id, const std::string& output) {
  return {{"type", "function_call_output"}, {"call_id", call_id}, {"output", output}};
}

// Stored items as the handler reads them: from their JSON texts, without trees.
std::vector<ContextItem> Stored(const std::vector<Json>& items) {
  std::vector<ContextItem> read;
  for (const Json& item : items) {
    if (auto one = ReadContextItem(item.dump())) read.push_back(std::move(*one));
  }
  return read;
}

TEST(ContextStartTest, KeepsEverythingThatFits) {
  const auto context = Stored({AssistantItem("orphan"), UserItem("q1"), AssistantItem("a1")});
  bool fits = false;
  EXPECT_EQ(ContextStart(context, Json::array({UserItem("q2")}), WindowLimits{0, 0}, fits), 0U);
  EXPECT_TRUE(fits);
  EXPECT_EQ(ContextStart({}, Json::array({UserItem("q2")}), WindowLimits{1, 1}, fits), 0U);
  EXPECT_TRUE(fits);
}

TEST(ContextStartTest, DropsOldestWholeTurnsByItemCount) {
  // Turns: [0] orphan prefix, [1..4] q1 with a tool round trip and answer, [5..6] q2.
  const auto context =
      Stored({AssistantItem("orphan"), UserItem("q1"), CallItem("c", "{}"), OutputItem("c", "r"),
              AssistantItem("a1"), UserItem("q2"), AssistantItem("a2")});
  const Json input = Json::array({UserItem("q3")});
  bool fits = true;
  // 1 input item + 2 (turn q2) = 3; turn q1 would make 7.
  EXPECT_EQ(ContextStart(context, input, WindowLimits{6, 0}, fits), 5U);
  EXPECT_FALSE(fits);
  EXPECT_EQ(ContextStart(context, input, WindowLimits{7, 0}, fits), 1U);
  EXPECT_FALSE(fits);
  EXPECT_EQ(ContextStart(context, input, WindowLimits{8, 0}, fits), 0U);
  EXPECT_TRUE(fits);
  EXPECT_EQ(ContextStart(context, input, WindowLimits{2, 0}, fits), context.size());
  EXPECT_FALSE(fits);
}

TEST(ContextStartTest, CountsCharactersOfTextArgumentsAndOutputsWithTheInput) {
  const auto context = Stored({UserItem("aaaa"), CallItem("c", "{}"),  // f{} = 3
                               OutputItem("c", "rr"), UserItem("bb"), AssistantItem("é")});
  const Json input = Json::array({UserItem("xyz")});
  bool fits = true;
  // input 3 + turn "bb","é" 3 = 6; the first turn adds 4 + 3 + 2 = 9.
  EXPECT_EQ(ContextStart(context, input, WindowLimits{0, 6}, fits), 3U);
  EXPECT_FALSE(fits);
  EXPECT_EQ(ContextStart(context, input, WindowLimits{0, 14}, fits), 3U);
  EXPECT_EQ(ContextStart(context, input, WindowLimits{0, 15}, fits), 0U);
  EXPECT_TRUE(fits);
  // The input always goes, even when it alone is over the limit: then no context does.
  EXPECT_EQ(ContextStart(context, input, WindowLimits{0, 2}, fits), context.size());
  EXPECT_FALSE(fits);
}

// ---- BuildChatBody ---------------------------------------------------------------------------

TEST(BuildChatBodyTest, TranslatesAToolRoundTrip) {
  const auto request = Parse(R"({
    "model": "gpt", "instructions": "be brief",
    "input": [
      {"role": "developer", "content": "use tools"},
      {"role": "user", "content": "weather in Paris and Rome?"},
      {"type": "message", "role": "assistant", "content": "checking"},
      {"type": "function_call", "call_id": "call_p", "name": "weather",
       "arguments": "{\"city\":\"Paris\"}"},
      {"type": "function_call", "call_id": "call_r", "name": "weather",
       "arguments": "{\"city\":\"Rome\"}"},
      {"type": "function_call_output", "call_id": "call_p", "output": "sun"},
      {"type": "function_call_output", "call_id": "call_r", "output": "rain"},
      {"type": "function_call", "call_id": "call_x", "name": "weather", "arguments": "{}"}],
    "tools": [{"type": "function", "name": "weather", "description": "d",
               "parameters": {"type": "object"}, "strict": true}],
    "tool_choice": "required", "parallel_tool_calls": true, "max_output_tokens": 100,
    "temperature": 0.2, "top_p": 0.5, "user": "u", "metadata": {"k": "v"}})");
  const auto context = Stored({UserItem("old question"), AssistantItem("old answer"),
                               UserItem("kept question"), AssistantItem("kept answer")});
  TokenEstimate estimate;
  const auto body = Json::parse(BuildChatBody(request, context, 2, false, estimate));

  const auto expected_messages = Json::parse(R"([
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "kept question"},
    {"role": "assistant", "content": "kept answer"},
    {"role": "system", "content": "use tools"},
    {"role": "user", "content": "weather in Paris and Rome?"},
    {"role": "assistant", "content": "checking", "tool_calls": [
      {"id": "call_p", "type": "function",
       "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
      {"id": "call_r", "type": "function",
       "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}]},
    {"role": "tool", "tool_call_id": "call_p", "content": "sun"},
    {"role": "tool", "tool_call_id": "call_r", "content": "rain"},
    {"role": "assistant", "content": null, "tool_calls": [
      {"id": "call_x", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]}
  ])");
  EXPECT_EQ(body["messages"], expected_messages);
  EXPECT_EQ(body["model"], "gpt");
  EXPECT_EQ(body["tools"], Json::parse(R"([{"type": "function", "function": {
    "name": "weather", "description": "d", "parameters": {"type": "object"}, "strict": true}}])"));
  EXPECT_EQ(body["tool_choice"], "required");
  EXPECT_EQ(body["parallel_tool_calls"], true);
  EXPECT_EQ(body["max_tokens"], 100);
  EXPECT_EQ(body["temperature"], 0.2);
  EXPECT_EQ(body["top_p"], 0.5);
  EXPECT_EQ(body["user"], "u");
  EXPECT_FALSE(body.contains("stream"));
  EXPECT_FALSE(body.contains("stream_options"));
  EXPECT_FALSE(body.contains("response_format"));
  EXPECT_FALSE(body.contains("metadata"));
  EXPECT_FALSE(body.contains("store"));

  EXPECT_EQ(estimate.prompt, EstimatePromptTokens(expected_messages));
  EXPECT_EQ(estimate.max_completion, 100U);
}

TEST(BuildChatBodyTest, StreamFunctionToolChoiceAndResponseFormats) {
  auto request = Parse(R"({"model": "m", "input": "hi",
    "tools": [{"type": "function", "name": "f"}],
    "tool_choice": {"type": "function", "name": "f"},
    "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"},
                        "strict": true, "description": "what"}}})");
  TokenEstimate estimate;
  estimate.max_completion = 5;
  auto body = Json::parse(BuildChatBody(request, {}, 0, true, estimate));
  EXPECT_EQ(body["stream"], true);
  EXPECT_EQ(body["stream_options"], Json::parse(R"({"include_usage": true})"));
  EXPECT_EQ(body["tools"], Json::parse(R"([{"type":"function","function":{"name":"f"}}])"));
  EXPECT_EQ(body["tool_choice"], Json::parse(R"({"type":"function","function":{"name":"f"}})"));
  EXPECT_FALSE(body.contains("parallel_tool_calls"));
  EXPECT_EQ(body["response_format"], Json::parse(R"({"type": "json_schema", "json_schema":
    {"name": "s", "schema": {"type": "object"}, "strict": true, "description": "what"}})"));
  EXPECT_EQ(body["messages"], Json::parse(R"([{"role":"user","content":"hi"}])"));
  EXPECT_FALSE(estimate.max_completion.has_value());

  request = Parse(R"({"model":"m","input":"hi","text":{"format":{"type":"json_object"}},
                      "parallel_tool_calls":false})");
  body = Json::parse(BuildChatBody(request, {}, 0, false, estimate));
  EXPECT_EQ(body["response_format"], Json::parse(R"({"type":"json_object"})"));
  // Without tools, OpenAI refuses tool_choice and parallel_tool_calls: neither goes.
  EXPECT_FALSE(body.contains("tools"));
  EXPECT_FALSE(body.contains("tool_choice"));
  EXPECT_FALSE(body.contains("parallel_tool_calls"));
}

TEST(BuildChatBodyTest, EmptyInstructionsAddNoSystemMessage) {
  const auto request = Parse(R"({"model":"m","input":"hi","instructions":""})");
  TokenEstimate estimate;
  const auto body = Json::parse(BuildChatBody(request, {}, 0, false, estimate));
  EXPECT_EQ(body["messages"], Json::parse(R"([{"role":"user","content":"hi"}])"));
}

TEST(BuildChatBodyTest, MalformedStoredItemsAddNothing) {
  const auto request = Parse(R"({"model":"m","input":"hi"})");
  const auto context = Stored({Json("text"), Json::object(), Json::parse(R"({"type":5})"),
                               Json::parse(R"({"type":"message","role":"user"})"),
                               Json::parse(R"({"type":"reasoning","summary":[]})")});
  bool fits = false;
  EXPECT_EQ(ContextStart(context, request.input, WindowLimits{0, 0}, fits), 0U);
  EXPECT_TRUE(fits);
  TokenEstimate estimate;
  const auto body = Json::parse(BuildChatBody(request, context, 0, false, estimate));
  EXPECT_EQ(body["messages"], Json::parse(R"([{"role":"user","content":""},
                                              {"role":"user","content":"hi"}])"));
}

// The body is written as text from the items' chat_json: it must be exactly what dumping one
// tree gives (compact, members in order), with calls joining the assistant message before them
// across the boundary between stored context and new input.
TEST(BuildChatBodyTest, WritesTheTextOfOneTreeDump) {
  auto request = Parse(R"({"model": "m\u00e9", "instructions": "say \"hi\"\n",
    "input": [{"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"q\":\"\\u00e9\"}"},
              {"type": "function_call_output", "call_id": "c2", "output": "tab\there"},
              {"role": "developer", "content": "dev \u2603"}],
    "tools": [{"type": "function", "name": "g"}], "temperature": 0.5})");
  const auto context =
      Stored({UserItem("q \"1\""), AssistantItem("a1\n"), CallItem("c1", "{}"),
              OutputItem("c1", "\u00fcber"), Json::parse(R"({"type":"reasoning","summary":[]})"),
              AssistantItem("a2")});
  for (const bool stream : {false, true}) {
    TokenEstimate estimate;
    const std::string text = BuildChatBody(request, context, 0, stream, estimate);
    const auto body = Json::parse(text);
    EXPECT_EQ(text, body.dump()) << text;
    const auto expected_messages = Json::parse(R"([
      {"role": "system", "content": "say \"hi\"\n"},
      {"role": "user", "content": "q \"1\""},
      {"role": "assistant", "content": "a1\n", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "\u00fcber"},
      {"role": "assistant", "content": "a2", "tool_calls": [
        {"id": "c2", "type": "function",
         "function": {"name": "g", "arguments": "{\"q\":\"\\u00e9\"}"}}]},
      {"role": "tool", "tool_call_id": "c2", "content": "tab\there"},
      {"role": "system", "content": "dev \u2603"}])");
    EXPECT_EQ(body["messages"], expected_messages);
    EXPECT_EQ(estimate.prompt, EstimatePromptTokens(expected_messages));
    EXPECT_EQ(body.contains("stream"), stream);
  }

  // Calls that start the messages; no members after them.
  request = Parse(R"({"model":"m","input":[
    {"type":"function_call","call_id":"a","name":"f","arguments":"1"},
    {"type":"function_call","call_id":"b","name":"f","arguments":"2"}]})");
  TokenEstimate estimate;
  const std::string text = BuildChatBody(request, {}, 0, false, estimate);
  EXPECT_EQ(text, R"({"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[)"
                  R"({"id":"a","type":"function","function":{"name":"f","arguments":"1"}},)"
                  R"({"id":"b","type":"function","function":{"name":"f","arguments":"2"}}]}]})");
}

// ---- ReadChatCompletion / ResponseObject -----------------------------------------------------

constexpr char kToolAnswer[] = R"({"id": "chatcmpl-1", "object": "chat.completion",
  "model": "gpt-up", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
    "role": "assistant", "content": "Let me check.", "tool_calls": [
      {"id": "call_a", "type": "function", "function": {"name": "weather",
                                                        "arguments": "{\"city\":\"Paris\"}"}},
      {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}}]}}],
  "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})";

TEST(ReadChatCompletionTest, TextAndToolCallsBecomeOutputItems) {
  const auto read = ReadChatCompletion(kToolAnswer);
  ASSERT_TRUE(read.ok()) << read.error().message;
  const auto& output = read->output;
  ASSERT_EQ(output.size(), 3U);
  EXPECT_EQ(output[0]["type"], "message");
  EXPECT_EQ(output[0]["role"], "assistant");
  EXPECT_EQ(output[0]["status"], "completed");
  EXPECT_EQ(output[0]["content"],
            Json::parse(R"([{"type":"output_text","text":"Let me check.","annotations":[]}])"));
  EXPECT_TRUE(std::regex_match(output[0]["id"].get<std::string>(), std::regex("msg_[0-9a-f]{48}")));
  EXPECT_EQ(output[1]["type"], "function_call");
  EXPECT_EQ(output[1]["call_id"], "call_a");
  EXPECT_EQ(output[1]["name"], "weather");
  EXPECT_EQ(output[1]["arguments"], "{\"city\":\"Paris\"}");
  EXPECT_EQ(output[1]["status"], "completed");
  EXPECT_TRUE(std::regex_match(output[1]["id"].get<std::string>(), std::regex("fc_[0-9a-f]{48}")));
  EXPECT_EQ(output[2]["call_id"], "call_b");
  EXPECT_EQ(read->status, "completed");
  EXPECT_TRUE(read->incomplete_details.is_null());
  EXPECT_EQ(read->model, "gpt-up");
  EXPECT_EQ(read->text, "Let me check.");
  EXPECT_EQ(read->input_tokens, 11);
  EXPECT_EQ(read->output_tokens, 7);
}

TEST(ReadChatCompletionTest, ToolCallsWithoutTextHaveNoMessageAndEmptyAnswerHasOne) {
  auto read = ReadChatCompletion(R"({"choices":[{"message":{"role":"assistant","content":null,
    "tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}}]})");
  ASSERT_TRUE(read.ok());
  ASSERT_EQ(read->output.size(), 1U);
  EXPECT_EQ(read->output[0]["type"], "function_call");
  EXPECT_FALSE(read->input_tokens.has_value());
  EXPECT_EQ(read->model, "");

  read = ReadChatCompletion(R"({"choices":[{"message":{"role":"assistant","content":""}}]})");
  ASSERT_TRUE(read.ok());
  ASSERT_EQ(read->output.size(), 1U);
  EXPECT_EQ(read->output[0]["content"][0]["text"], "");
}

TEST(ReadChatCompletionTest, LengthAndContentFilterAreIncomplete) {
  auto read =
      ReadChatCompletion(R"({"choices":[{"finish_reason":"length","message":{"content":"cut"}}]})");
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->status, "incomplete");
  EXPECT_EQ(read->incomplete_details, Json::parse(R"({"reason":"max_output_tokens"})"));
  EXPECT_EQ(read->output[0]["status"], "incomplete");
  read = ReadChatCompletion(
      R"({"choices":[{"finish_reason":"content_filter","message":{"content":""}}]})");
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->incomplete_details, Json::parse(R"({"reason":"content_filter"})"));
}

TEST(ReadChatCompletionTest, ARefusalIsARefusalPart) {
  auto read = ReadChatCompletion(
      R"({"choices":[{"finish_reason":"stop","message":{"content":null,"refusal":"I can't."}}]})");
  ASSERT_TRUE(read.ok());
  ASSERT_EQ(read->output.size(), 1U);
  EXPECT_EQ(read->output[0]["content"],
            Json::parse(R"([{"type":"refusal","refusal":"I can't."}])"));
  EXPECT_EQ(read->text, "");
  read = ReadChatCompletion(R"({"choices":[{"message":{"content":"Well","refusal":"no"}}]})");
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->output[0]["content"], Json::parse(R"([
    {"type":"output_text","text":"Well","annotations":[]},{"type":"refusal","refusal":"no"}])"));
}

TEST(ReadChatCompletionTest, NotACompletionIsAnUpstreamError) {
  for (const char* body :
       {"", "nope", "[]", R"({"choices":[]})", R"({"choices":"x"})",
        R"({"choices":[{"delta":{}}]})", R"({"choices":[{"message":{"tool_calls":{}}}]})",
        R"({"choices":[{"message":{"tool_calls":[{"id":"c"}]}}]})"}) {
    const auto read = ReadChatCompletion(body);
    ASSERT_FALSE(read.ok()) << body;
    EXPECT_EQ(read.error().kind, ErrorKind::kUpstream) << body;
  }
}

// A plain text answer is taken from what the turn pipeline's scan read of it, without a second
// parse: the output is ReadChatCompletion's, but for the new item id.
TEST(PlainAnswerOutputTest, IsWhatReadingTheAnswerGives) {
  for (
      const char* body : {
          R"({"model":"up","choices":[{"finish_reason":"stop","message":{"content":"hi \"x\""}}],
              "usage":{"prompt_tokens":3,"completion_tokens":4}})",
          R"({"choices":[{"finish_reason":"length","message":{"content":"cut"}}]})",
          R"({"choices":[{"finish_reason":"content_filter","message":{"content":null}}]})",
          R"({"choices":[{"message":{"role":"assistant"}}],"model":5,"usage":{"prompt_tokens":1.5}})",
          R"({"choices":[{"message":{"content":["parts"],"tool_calls":null,"refusal":null}}],
              "usage":{"prompt_tokens":18446744073709551615}})",
      }) {
    const auto fields = ScanCompletion(body);
    ASSERT_TRUE(fields.has_value()) << body;
    ASSERT_TRUE(fields->has_message && !fields->message_tool_calls && !fields->message_refusal);
    auto plain = PlainAnswerOutput(fields->model, fields->finish_reason_text,
                                   fields->message_content == CompletionFields::Content::kString
                                       ? fields->message_text
                                       : std::string(),
                                   fields->prompt_tokens, fields->completion_tokens);
    auto read = ReadChatCompletion(body);
    ASSERT_TRUE(read.ok()) << body;
    ASSERT_EQ(plain.output.size(), 1U);
    ASSERT_EQ(read->output.size(), 1U);
    EXPECT_TRUE(plain.output[0]["id"].get<std::string>().starts_with("msg_"));
    plain.output[0].erase("id");
    read->output[0].erase("id");
    EXPECT_EQ(plain.output, read->output) << body;
    EXPECT_EQ(plain.status, read->status) << body;
    EXPECT_EQ(plain.incomplete_details, read->incomplete_details) << body;
    EXPECT_EQ(plain.model, read->model) << body;
    EXPECT_EQ(plain.text, read->text) << body;
    EXPECT_EQ(plain.input_tokens, read->input_tokens) << body;
    EXPECT_EQ(plain.output_tokens, read->output_tokens) << body;
  }
}

TEST(ResponseObjectTest, HasOpenAIsFields) {
  const auto request = Parse(R"({"model":"asked","input":"hi","instructions":"i",
    "conversation":"conv_1","max_output_tokens":50,"metadata":{"a":"b"},"user":"u"})");
  const auto read = ReadChatCompletion(kToolAnswer);
  ASSERT_TRUE(read.ok());
  const auto object = ResponseObject(request, "resp_1", 1700000000, &*read);
  EXPECT_EQ(object["id"], "resp_1");
  EXPECT_EQ(object["object"], "response");
  EXPECT_EQ(object["created_at"], 1700000000);
  EXPECT_EQ(object["status"], "completed");
  EXPECT_TRUE(object["error"].is_null());
  EXPECT_TRUE(object["incomplete_details"].is_null());
  EXPECT_EQ(object["instructions"], "i");
  EXPECT_EQ(object["max_output_tokens"], 50);
  EXPECT_EQ(object["model"], "gpt-up");
  EXPECT_EQ(object["output"], read->output);
  EXPECT_EQ(object["parallel_tool_calls"], true);
  EXPECT_TRUE(object["previous_response_id"].is_null());
  EXPECT_EQ(object["conversation"], Json::parse(R"({"id":"conv_1"})"));
  EXPECT_EQ(object["reasoning"], Json::parse(R"({"effort":null,"summary":null})"));
  EXPECT_EQ(object["store"], true);
  EXPECT_EQ(object["temperature"], 1.0);
  EXPECT_EQ(object["top_p"], 1.0);
  EXPECT_EQ(object["text"], Json::parse(R"({"format":{"type":"text"}})"));
  EXPECT_EQ(object["tool_choice"], "auto");
  EXPECT_EQ(object["tools"], Json::array());
  EXPECT_EQ(object["truncation"], "disabled");
  EXPECT_EQ(object["usage"], Json::parse(R"({"input_tokens": 11,
    "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 7,
    "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 18})"));
  EXPECT_EQ(object["user"], "u");
  EXPECT_EQ(object["metadata"], Json::parse(R"({"a":"b"})"));

  const auto started = ResponseObject(request, "resp_1", 1, nullptr);
  EXPECT_EQ(started["status"], "in_progress");
  EXPECT_EQ(started["output"], Json::array());
  EXPECT_TRUE(started["usage"].is_null());
  EXPECT_EQ(started["model"], "asked");

  ResponseOutput no_usage;
  EXPECT_TRUE(ResponseObject(request, "r", 1, &no_usage)["usage"].is_null());
}

// ResponseObjectText writes what the tree's dump() writes, for every member's shapes.
TEST(ResponseObjectTest, TheTextIsTheTreesDump) {
  const auto dump = [](const Json& tree) {
    return tree.dump(-1, ' ', false, Json::error_handler_t::replace);
  };
  ResponseOutput incomplete;
  incomplete.status = "incomplete";
  incomplete.incomplete_details = {{"reason", "max_output_tokens"}};
  incomplete.model = "m\u00e9\"quoted\"";
  incomplete.output_tokens = 3;
  const auto tools = ReadChatCompletion(kToolAnswer);
  ASSERT_TRUE(tools.ok());
  for (const char* body : {
           R"({"model":"asked","input":"hi"})",
           R"({"model":"asked","input":"hi","instructions":"line\nbreak \"q\" \u0001 é",
              "conversation":"conv_1","max_output_tokens":50,"metadata":{"a":"b","c":"d"},
              "user":"u","temperature":0.7,"top_p":0.25,"store":false,"truncation":"auto",
              "parallel_tool_calls":false})",
           R"({"model":"m","input":"x","previous_response_id":"resp_0",
              "tools":[{"type":"function","name":"f","parameters":{"type":"object"}}],
              "tool_choice":{"type":"function","name":"f"},
              "text":{"format":{"type":"json_schema","name":"s","schema":{"type":"object"}}}})",
           R"({"model":"m","input":"x","temperature":0,"top_p":1e-7,"max_output_tokens":1})",
       }) {
    const auto request = Parse(body);
    for (const ResponseOutput* output : {static_cast<const ResponseOutput*>(nullptr), &*tools,
                                         static_cast<const ResponseOutput*>(&incomplete)}) {
      EXPECT_EQ(ResponseObjectText(request, "resp_1", 1700000000, output),
                dump(ResponseObject(request, "resp_1", 1700000000, output)))
          << body;
    }
  }
}

// The spans name the output array and each item in the text; the stored form drops the items and
// WithStoredOutput puts them back, byte for byte.
TEST(ResponseObjectTest, TheOutputIsLeftOutOfTheStoredObjectAndPutBack) {
  const auto tools = ReadChatCompletion(kToolAnswer);
  ASSERT_TRUE(tools.ok());
  ASSERT_GE(tools->output.size(), 2u);
  const auto request =
      Parse(R"({"model":"m","input":"x","instructions":",\"output\":[] is text here"})");
  OutputSpans spans;
  const std::string text = ResponseObjectText(request, "resp_1", 1700000000, &*tools, &spans);
  EXPECT_EQ(text, ResponseObjectText(request, "resp_1", 1700000000, &*tools));

  ASSERT_EQ(spans.items.size(), tools->output.size());
  EXPECT_EQ(text.substr(spans.array_begin, spans.array_end - spans.array_begin),
            tools->output.dump(-1, ' ', false, Json::error_handler_t::replace));
  std::vector<std::string> items;
  for (std::size_t i = 0; i < spans.items.size(); ++i) {
    const auto [begin, end] = spans.items[i];
    items.push_back(text.substr(begin, end - begin));
    EXPECT_EQ(Json::parse(items.back()), tools->output[i]);
  }

  const std::string stored = WithoutOutput(text, spans);
  EXPECT_EQ(stored.size(), text.size() - (spans.array_end - spans.array_begin) + 2);
  Json expected = Json::parse(text);
  expected["output"] = Json::array();
  EXPECT_EQ(Json::parse(stored), expected);
  EXPECT_TRUE(StoredOutputIsEmpty(stored));
  EXPECT_FALSE(StoredOutputIsEmpty(text));

  EXPECT_EQ(WithStoredOutput(stored, items), text);
  // A whole object (stored so in a conversation, or before) is returned as it is.
  EXPECT_EQ(WithStoredOutput(text, items), text);
  // No output items: the empty array stays.
  EXPECT_EQ(WithStoredOutput(stored, {}), stored);
  // Not a response object: unchanged.
  EXPECT_FALSE(StoredOutputIsEmpty(R"({"id":"x"})"));
  EXPECT_EQ(WithStoredOutput(R"({"id":"x"})", items), R"({"id":"x"})");
}

// A response without output (the first events of a stream) is stored as it is.
TEST(ResponseObjectTest, AnObjectWithoutOutputIsStoredAsItIs) {
  const auto request = Parse(R"({"model":"m","input":"x"})");
  OutputSpans spans;
  const std::string text = ResponseObjectText(request, "resp_1", 1, nullptr, &spans);
  EXPECT_TRUE(spans.items.empty());
  EXPECT_EQ(WithoutOutput(text, spans), text);
  EXPECT_TRUE(StoredOutputIsEmpty(text));
}

// ---- ResponseEventStream ---------------------------------------------------------------------

struct SseEvent {
  std::string type;
  Json data;
};

// Splits SSE text into events, checking the framing: "event: <type>\ndata: <json>\n\n" with the
// json's type equal to the event's.
std::vector<SseEvent> SplitEvents(const std::string& text) {
  std::vector<SseEvent> events;
  std::size_t position = 0;
  while (position < text.size()) {
    const auto end = text.find("\n\n", position);
    EXPECT_NE(end, std::string::npos) << text.substr(position);
    if (end == std::string::npos) break;
    const auto block = text.substr(position, end - position);
    position = end + 2;
    const auto newline = block.find('\n');
    EXPECT_EQ(block.rfind("event: ", 0), 0U) << block;
    EXPECT_EQ(block.find("data: ", newline + 1), newline + 1) << block;
    SseEvent event{block.substr(7, newline - 7), Json::parse(block.substr(newline + 7))};
    EXPECT_EQ(event.data["type"], event.type);
    events.push_back(std::move(event));
  }
  return events;
}

std::vector<std::string> Types(const std::vector<SseEvent>& events) {
  std::vector<std::string> types;
  for (const auto& event : events) types.push_back(event.type);
  return types;
}

// Output items without their generated ids, to compare two translations of one answer.
Json WithoutIds(Json output) {
  for (auto& item : output) item.erase("id");
  return output;
}

// A client-side model of OpenAI's stream accumulator: builds the response from the events the
// way the openai SDK's responses.stream() does, failing where it would throw.
Json Accumulate(const std::vector<SseEvent>& events) {
  Json snapshot;
  for (const auto& event : events) {
    const Json& data = event.data;
    if (event.type == "response.created") {
      snapshot = data["response"];
      continue;
    }
    EXPECT_FALSE(snapshot.is_null()) << "the first event must be response.created";
    if (event.type == "response.in_progress" || event.type == "response.completed" ||
        event.type == "response.incomplete" || event.type == "response.failed") {
      snapshot = data["response"];
    } else if (event.type == "response.output_item.added") {
      EXPECT_EQ(data["output_index"], snapshot["output"].size());
      snapshot["output"].push_back(data["item"]);
    } else {
      const auto index = data["output_index"].get<std::size_t>();
      EXPECT_LT(index, snapshot["output"].size()) << event.type;
      if (index >= snapshot["output"].size()) continue;
      auto& item = snapshot["output"][index];
      if (data.contains("item_id")) {
        EXPECT_EQ(data["item_id"], item["id"]) << event.type;
      }
      if (event.type == "response.output_item.done") {
        item = data["item"];
      } else if (event.type == "response.content_part.added") {
        EXPECT_EQ(data["content_index"], item["content"].size());
        item["content"].push_back(data["part"]);
      } else if (event.type == "response.content_part.done") {
        item["content"][data["content_index"].get<std::size_t>()] = data["part"];
      } else if (event.type == "response.output_text.delta") {
        auto& part = item["content"].at(data["content_index"].get<std::size_t>());
        EXPECT_EQ(part["type"], "output_text");
        part["text"] = part["text"].get<std::string>() + data["delta"].get<std::string>();
      } else if (event.type == "response.output_text.done") {
        item["content"].at(data["content_index"].get<std::size_t>())["text"] = data["text"];
      } else if (event.type == "response.refusal.delta") {
        auto& part = item["content"].at(data["content_index"].get<std::size_t>());
        EXPECT_EQ(part["type"], "refusal");
        part["refusal"] = part["refusal"].get<std::string>() + data["delta"].get<std::string>();
      } else if (event.type == "response.refusal.done") {
        item["content"].at(data["content_index"].get<std::size_t>())["refusal"] = data["refusal"];
      } else if (event.type == "response.function_call_arguments.delta") {
        EXPECT_EQ(item["type"], "function_call");
        item["arguments"] = item["arguments"].get<std::string>() + data["delta"].get<std::string>();
      } else if (event.type == "response.function_call_arguments.done") {
        EXPECT_EQ(data["name"], item["name"]);
        item["arguments"] = data["arguments"];
      } else {
        ADD_FAILURE() << "unexpected event " << event.type;
      }
    }
  }
  return snapshot;
}

// The chunks of the answer kToolAnswer, as OpenAI streams it (with include_usage).
const std::vector<std::string> kToolChunks = {
    R"({"id":"c1","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,
       "delta":{"role":"assistant","content":""},"finish_reason":null}]})",
    R"({"id":"c1","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,
       "delta":{"content":"Let me "},"finish_reason":null}]})",
    R"({"id":"c1","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,
       "delta":{"content":"check."},"finish_reason":null}]})",
    R"({"id":"c1","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,
       "delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function",
       "function":{"name":"weather","arguments":""}}]},"finish_reason":null}]})",
    R"({"id":"c1","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,
       "delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]})",
    R"({"id":"c1","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,
       "delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function",
       "function":{"name":"time","arguments":"{}"}}]}}]})",
    R"({"id":"c1","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,
       "delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}}]})",
    R"({"id":"c1","object":"chat.completion.chunk","model":"gpt-up","choices":[{"index":0,
       "delta":{},"finish_reason":"tool_calls"}]})",
    R"({"id":"c1","object":"chat.completion.chunk","model":"gpt-up","choices":[],
       "usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}})",
};

TEST(ResponseEventStreamTest, TranslatesAStreamEventByEvent) {
  const auto request = Parse(R"({"model":"asked","input":"weather?","stream":true})");
  ResponseEventStream stream(request, "resp_s", 1700000001);
  std::string text = stream.Start();
  std::vector<std::string> per_chunk;
  for (const auto& chunk : kToolChunks) {
    auto added = stream.Add(chunk);
    ASSERT_TRUE(added.ok()) << added.error().message;
    per_chunk.push_back(*added);
    text += *added;
  }
  text += stream.Finish();
  text += stream.Completed();
  EXPECT_EQ(per_chunk[0], "") << "an empty first delta opens nothing";
  EXPECT_EQ(per_chunk[7], "");
  EXPECT_EQ(per_chunk[8], "");

  const auto events = SplitEvents(text);
  const std::vector<std::string> expected = {
      "response.created",
      "response.in_progress",
      "response.output_item.added",   // message, output 0
      "response.content_part.added",  // its output_text
      "response.output_text.delta",   // "Let me "
      "response.output_text.delta",   // "check."
      "response.output_item.added",   // call_a, output 1
      "response.function_call_arguments.delta",
      "response.output_item.added",  // call_b, output 2
      "response.function_call_arguments.delta",
      "response.function_call_arguments.delta",
      "response.output_text.done",
      "response.content_part.done",
      "response.output_item.done",
      "response.function_call_arguments.done",
      "response.output_item.done",
      "response.function_call_arguments.done",
      "response.output_item.done",
      "response.completed",
  };
  ASSERT_EQ(Types(events), expected);
  for (std::size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].data["sequence_number"], i) << events[i].type;
  }

  EXPECT_EQ(events[0].data["response"]["status"], "in_progress");
  EXPECT_EQ(events[0].data["response"]["id"], "resp_s");
  EXPECT_EQ(events[0].data["response"]["output"], Json::array());
  EXPECT_EQ(events[2].data["output_index"], 0);
  EXPECT_EQ(events[2].data["item"]["type"], "message");
  EXPECT_EQ(events[2].data["item"]["status"], "in_progress");
  EXPECT_EQ(events[2].data["item"]["content"], Json::array());
  const auto message_id = events[2].data["item"]["id"];
  EXPECT_EQ(events[3].data["item_id"], message_id);
  EXPECT_EQ(events[3].data["part"],
            Json::parse(R"({"type":"output_text","text":"","annotations":[]})"));
  EXPECT_EQ(events[4].data["delta"], "Let me ");
  EXPECT_EQ(events[4].data["content_index"], 0);
  EXPECT_EQ(events[4].data["logprobs"], Json::array());
  EXPECT_EQ(events[6].data["output_index"], 1);
  EXPECT_EQ(events[6].data["item"]["call_id"], "call_a");
  EXPECT_EQ(events[6].data["item"]["name"], "weather");
  EXPECT_EQ(events[6].data["item"]["arguments"], "");
  EXPECT_EQ(events[7].data["delta"], "{\"city\":");
  EXPECT_EQ(events[7].data["output_index"], 1);
  EXPECT_EQ(events[9].data["output_index"], 2);
  EXPECT_EQ(events[10].data["output_index"], 1);
  EXPECT_EQ(events[11].data["text"], "Let me check.");
  EXPECT_EQ(events[14].data["arguments"], "{\"city\":\"Paris\"}");
  EXPECT_EQ(events[14].data["name"], "weather");
  EXPECT_EQ(events[15].data["item"]["status"], "completed");

  // The stream ends with the same answer as the whole completion.
  const auto whole = ReadChatCompletion(kToolAnswer);
  ASSERT_TRUE(whole.ok());
  const auto& streamed = stream.output();
  EXPECT_EQ(WithoutIds(streamed.output), WithoutIds(whole->output));
  EXPECT_EQ(streamed.status, whole->status);
  EXPECT_EQ(streamed.text, whole->text);
  EXPECT_EQ(streamed.model, whole->model);
  EXPECT_EQ(streamed.input_tokens, whole->input_tokens);
  EXPECT_EQ(streamed.output_tokens, whole->output_tokens);

  const auto& completed = events.back().data["response"];
  EXPECT_EQ(completed["status"], "completed");
  EXPECT_EQ(completed["output"], streamed.output);
  EXPECT_EQ(completed["usage"]["total_tokens"], 18);
  EXPECT_EQ(completed["model"], "gpt-up");

  // What a client's accumulator builds from the events is the final response.
  EXPECT_EQ(Accumulate(events), completed);
  // The items the events built before response.completed are those of the response too.
  std::vector<SseEvent> before_completed(events.begin(), events.end() - 1);
  EXPECT_EQ(Accumulate(before_completed)["output"], completed["output"]);
}

TEST(ResponseEventStreamTest, AnEmptyAnswerIsAnEmptyMessage) {
  ResponseEventStream stream(Parse(R"({"model":"m","input":"x"})"), "r", 1);
  std::string text = stream.Start();
  auto added = stream.Add(R"({"choices":[{"index":0,"delta":{"role":"assistant"},
                                          "finish_reason":"stop"}]})");
  ASSERT_TRUE(added.ok());
  text += *added;
  text += stream.Finish();
  text += stream.Completed();
  const auto events = SplitEvents(text);
  EXPECT_EQ(Types(events),
            (std::vector<std::string>{"response.created", "response.in_progress",
                                      "response.output_item.added", "response.content_part.added",
                                      "response.output_text.done", "response.content_part.done",
                                      "response.output_item.done", "response.completed"}));
  const auto whole =
      ReadChatCompletion(R"({"choices":[{"finish_reason":"stop","message":{"content":""}}]})");
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(WithoutIds(stream.output().output), WithoutIds(whole->output));
  std::vector<SseEvent> before_completed(events.begin(), events.end() - 1);
  EXPECT_EQ(Accumulate(before_completed)["output"], events.back().data["response"]["output"]);
}

TEST(ResponseEventStreamTest, ARefusalStreamsIntoARefusalPart) {
  ResponseEventStream stream(Parse(R"({"model":"m","input":"x"})"), "r", 1);
  std::string text = stream.Start();
  for (const char* chunk :
       {R"({"choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":"I "}}]})",
        R"({"choices":[{"index":0,"delta":{"refusal":"can't."}}]})",
        R"({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})"}) {
    auto added = stream.Add(chunk);
    ASSERT_TRUE(added.ok());
    text += *added;
  }
  text += stream.Finish();
  text += stream.Completed();
  const auto events = SplitEvents(text);
  EXPECT_EQ(Types(events),
            (std::vector<std::string>{"response.created", "response.in_progress",
                                      "response.output_item.added", "response.content_part.added",
                                      "response.refusal.delta", "response.refusal.delta",
                                      "response.refusal.done", "response.content_part.done",
                                      "response.output_item.done", "response.completed"}));
  EXPECT_EQ(events[3].data["part"], Json::parse(R"({"type":"refusal","refusal":""})"));
  EXPECT_EQ(events[6].data["refusal"], "I can't.");
  const auto whole = ReadChatCompletion(
      R"({"choices":[{"finish_reason":"stop","message":{"content":null,"refusal":"I can't."}}]})");
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(WithoutIds(stream.output().output), WithoutIds(whole->output));
  std::vector<SseEvent> before_completed(events.begin(), events.end() - 1);
  EXPECT_EQ(Accumulate(before_completed)["output"], events.back().data["response"]["output"]);
}

TEST(ResponseEventStreamTest, LengthEndsWithResponseIncomplete) {
  ResponseEventStream stream(Parse(R"({"model":"m","input":"x","max_output_tokens":2})"), "r", 1);
  std::string text = stream.Start();
  for (const char* chunk : {R"({"choices":[{"index":0,"delta":{"content":"cut"}}]})",
                            R"({"choices":[{"index":0,"delta":{},"finish_reason":"length"}]})"}) {
    auto added = stream.Add(chunk);
    ASSERT_TRUE(added.ok());
    text += *added;
  }
  text += stream.Finish();
  EXPECT_EQ(stream.Finish(), "") << "Finish is done once";
  text += stream.Completed();
  const auto events = SplitEvents(text);
  EXPECT_EQ(events.back().type, "response.incomplete");
  const auto& response = events.back().data["response"];
  EXPECT_EQ(response["status"], "incomplete");
  EXPECT_EQ(response["incomplete_details"], Json::parse(R"({"reason":"max_output_tokens"})"));
  EXPECT_EQ(response["output"][0]["status"], "incomplete");
  EXPECT_TRUE(response["usage"].is_null());
  EXPECT_EQ(Accumulate(events), response);
}

TEST(ResponseEventStreamTest, FailedCarriesTheErrorAndWhatCameSoFar) {
  ResponseEventStream stream(Parse(R"({"model":"m","input":"x"})"), "r", 1);
  std::string text = stream.Start();
  auto added = stream.Add(R"({"choices":[{"index":0,"delta":{"content":"par"}}]})");
  ASSERT_TRUE(added.ok());
  text += *added;
  text += stream.Failed(MakeError(ErrorKind::kTimeout, "the upstream took too long"));
  text += stream.Failed(MakeError(ErrorKind::kUpstream, "bad"));
  const auto events = SplitEvents(text);
  ASSERT_EQ(events.size(), 7U);
  const auto& failed = events[5].data;
  EXPECT_EQ(failed["type"], "response.failed");
  EXPECT_EQ(failed["sequence_number"], 5);
  EXPECT_EQ(failed["response"]["status"], "failed");
  EXPECT_EQ(failed["response"]["error"],
            Json::parse(R"({"code":"timeout","message":"the upstream took too long"})"));
  EXPECT_EQ(failed["response"]["output"][0]["content"][0]["text"], "par");
  EXPECT_EQ(events[6].data["response"]["error"]["code"], "server_error");
}

TEST(ResponseEventStreamTest, InvalidChunkDataIsAnUpstreamError) {
  for (const char* data :
       {"", "[DONE", "not json", "[]", "42", R"({"object":"chat.completion.chunk"})",
        R"({"choices":{}})", R"({"choices":[3]})", R"({"error":{"message":"overloaded"}})",
        R"({"choices":[{"index":0,"delta":{"tool_calls":{}}}]})",
        R"({"choices":[{"index":0,"delta":{"tool_calls":[7]}}]})"}) {
    ResponseEventStream stream(Parse(R"({"model":"m","input":"x"})"), "r", 1);
    (void)stream.Start();
    const auto added = stream.Add(data);
    ASSERT_FALSE(added.ok()) << data;
    EXPECT_EQ(added.error().kind, ErrorKind::kUpstream) << data;
  }
}

TEST(ResponseEventStreamTest, ToolCallsWithoutIndexOrIdStillTranslate) {
  ResponseEventStream stream(Parse(R"({"model":"m","input":"x"})"), "r", 1);
  (void)stream.Start();
  auto added = stream.Add(
      R"({"choices":[{"delta":{"tool_calls":[{"function":{"name":"f","arguments":"{}"}},
                                             {"function":{"name":"g","arguments":"[]"}}]}}]})");
  ASSERT_TRUE(added.ok()) << added.error().message;
  (void)stream.Finish();
  const auto& output = stream.output().output;
  ASSERT_EQ(output.size(), 2U);
  EXPECT_EQ(output[0]["name"], "f");
  EXPECT_EQ(output[0]["arguments"], "{}");
  EXPECT_EQ(output[1]["name"], "g");
  EXPECT_TRUE(
      std::regex_match(output[0]["call_id"].get<std::string>(), std::regex("call_[0-9a-f]{48}")));
}

}  // namespace
}  // namespace staple::chat::responses
