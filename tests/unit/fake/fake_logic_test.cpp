#include "fake_logic.h"

#include <gtest/gtest.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

namespace staple::fake {
namespace {

using Json = nlohmann::json;

Json WeatherTool() {
  return Json::parse(R"({"type": "function", "function": {"name": "get_weather",
    "description": "Weather of a city", "parameters": {"type": "object",
    "properties": {"city": {"type": "string"}}, "required": ["city"]}}})");
}

// A request offering get_weather and lookup, whose last message is a user message `content`.
Json ToolRequest(const std::string& content) {
  Json lookup = WeatherTool();
  lookup["function"]["name"] = "lookup";
  return Json{{"model", "fake-model"},
              {"messages", Json::array({Json{{"role", "user"}, {"content", content}}})},
              {"tools", Json::array({WeatherTool(), lookup})}};
}

ChatPlan Plan(const Json& request) {
  ChatParse parsed = ParseChatRequest(request.dump());
  EXPECT_TRUE(parsed.plan.has_value()) << parsed.error;
  return parsed.plan.value_or(ChatPlan{});
}

// The JSON of each "data: {...}" event (without [DONE]).
std::vector<Json> Chunks(const StreamEvents& stream) {
  std::vector<Json> chunks;
  for (const auto& event : stream.events) {
    EXPECT_TRUE(event.starts_with("data: ")) << event;
    EXPECT_TRUE(event.ends_with("\n\n")) << event;
    std::string data = event.substr(6, event.size() - 8);
    if (data == "[DONE]") continue;
    chunks.push_back(Json::parse(data));
  }
  return chunks;
}

TEST(FaultMarkers, FirstTokenDelayWithAndWithoutAShare) {
  Fault always;
  ParseFaultMarkers("FAULT:first-token-delay=2000", always);
  EXPECT_EQ(always.first_token_delay, std::chrono::milliseconds(2000));
  EXPECT_EQ(always.first_token_delay_percent, 100);
  Fault sometimes;
  ParseFaultMarkers("x FAULT:first-token-delay=300 FAULT:first-token-delay-percent=10 y",
                    sometimes);
  EXPECT_EQ(sometimes.first_token_delay, std::chrono::milliseconds(300));
  EXPECT_EQ(sometimes.first_token_delay_percent, 10);
  Fault invalid;
  ParseFaultMarkers("FAULT:first-token-delay=-5 FAULT:first-token-delay-percent=101", invalid);
  EXPECT_EQ(invalid.first_token_delay, std::chrono::milliseconds(0));
  EXPECT_EQ(invalid.first_token_delay_percent, 100);
}

TEST(FindToolTrigger, FindsAnOfferedNameWithItsArguments) {
  const std::set<std::string, std::less<>> offered{"get_weather"};
  auto call = FindToolTrigger(R"(please TOOL:get_weather {"city": "Paris"} thanks)", offered);
  ASSERT_TRUE(call.has_value());
  EXPECT_EQ(call->name, "get_weather");
  EXPECT_EQ(call->arguments, R"({"city":"Paris"})");
  EXPECT_EQ(call->id, "");
}

TEST(FindToolTrigger, WithoutAnObjectTheArgumentsAreEmpty) {
  const std::set<std::string, std::less<>> offered{"get-time"};
  auto call = FindToolTrigger("TOOL:get-time", offered);
  ASSERT_TRUE(call.has_value());
  EXPECT_EQ(call->arguments, "{}");
  auto unclosed = FindToolTrigger(R"(TOOL:get-time {"zone": "UTC")", offered);
  ASSERT_TRUE(unclosed.has_value());
  EXPECT_EQ(unclosed->arguments, "{}");
  auto invalid = FindToolTrigger("TOOL:get-time {zone}", offered);
  ASSERT_TRUE(invalid.has_value());
  EXPECT_EQ(invalid->arguments, "{}");
}

TEST(FindToolTrigger, BracesInsideStringsDoNotEndTheObject) {
  const std::set<std::string, std::less<>> offered{"note"};
  auto call = FindToolTrigger(R"(TOOL:note {"text": "a } b \" {", "n": {"m": 1}} rest})", offered);
  ASSERT_TRUE(call.has_value());
  EXPECT_EQ(Json::parse(call->arguments), Json::parse(R"({"text": "a } b \" {", "n": {"m": 1}})"));
}

TEST(FindToolTrigger, SkipsNamesNotOffered) {
  const std::set<std::string, std::less<>> offered{"lookup"};
  EXPECT_FALSE(FindToolTrigger("TOOL:get_weather", offered).has_value());
  EXPECT_FALSE(FindToolTrigger("TOOL:look", offered).has_value());
  EXPECT_FALSE(FindToolTrigger("TOOL:lookups", offered).has_value());
  EXPECT_FALSE(FindToolTrigger("TOOL: lookup", offered).has_value());
  auto second = FindToolTrigger(R"(TOOL:get_weather {"a":1} TOOL:lookup {"b":2})", offered);
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->name, "lookup");
  EXPECT_EQ(second->arguments, R"({"b":2})");
}

TEST(ChatToolCalls, AnOfferedToolIsCalled) {
  ChatPlan plan = Plan(ToolRequest(R"(TOOL:get_weather {"city":"Paris"})"));
  ASSERT_TRUE(plan.tool_call.has_value());
  EXPECT_EQ(plan.tool_call->name, "get_weather");
  EXPECT_EQ(plan.tool_call->arguments, R"({"city":"Paris"})");
  EXPECT_TRUE(plan.tool_call->id.starts_with("call_"));
  EXPECT_EQ(plan.tool_call->id.size(), 5u + 16u);
  EXPECT_GT(plan.completion_tokens, 0u);

  Json body = Json::parse(CompletionBody(plan, "chatcmpl-1", 7));
  EXPECT_EQ(body["object"], "chat.completion");
  const Json& choice = body["choices"][0];
  EXPECT_EQ(choice["finish_reason"], "tool_calls");
  EXPECT_EQ(choice["message"]["role"], "assistant");
  EXPECT_TRUE(choice["message"]["content"].is_null());
  ASSERT_EQ(choice["message"]["tool_calls"].size(), 1u);
  const Json& call = choice["message"]["tool_calls"][0];
  EXPECT_EQ(call["id"], plan.tool_call->id);
  EXPECT_EQ(call["type"], "function");
  EXPECT_EQ(call["function"]["name"], "get_weather");
  EXPECT_EQ(call["function"]["arguments"], R"({"city":"Paris"})");
  EXPECT_EQ(body["usage"]["completion_tokens"], plan.completion_tokens);
  EXPECT_EQ(body["usage"]["total_tokens"], plan.prompt_tokens + plan.completion_tokens);
}

TEST(ChatToolCalls, TheCallIdIsDeterministic) {
  ChatPlan first = Plan(ToolRequest(R"(TOOL:get_weather {"city":"Paris"})"));
  ChatPlan again = Plan(ToolRequest(R"(TOOL:get_weather {"city":"Paris"})"));
  ChatPlan other = Plan(ToolRequest(R"(TOOL:get_weather {"city":"Rome"})"));
  ASSERT_TRUE(first.tool_call && again.tool_call && other.tool_call);
  EXPECT_EQ(first.tool_call->id, again.tool_call->id);
  EXPECT_NE(first.tool_call->id, other.tool_call->id);
}

TEST(ChatToolCalls, TheTriggerIsIgnoredWithoutAMatchingTool) {
  Json not_offered = ToolRequest("TOOL:send_mail");
  ChatPlan plan = Plan(not_offered);
  EXPECT_FALSE(plan.tool_call.has_value());
  EXPECT_EQ(plan.reply, "echo(1): TOOL:send_mail");

  Json no_tools = ToolRequest("TOOL:get_weather");
  no_tools.erase("tools");
  EXPECT_FALSE(Plan(no_tools).tool_call.has_value());

  Json refused = ToolRequest("TOOL:get_weather");
  refused["tool_choice"] = "none";
  EXPECT_FALSE(Plan(refused).tool_call.has_value());

  Json required = ToolRequest("TOOL:get_weather");
  required["tool_choice"] = "required";
  EXPECT_TRUE(Plan(required).tool_call.has_value());
}

TEST(ChatToolCalls, OnlyTheLastMessageTriggers) {
  Json request = ToolRequest("TOOL:get_weather");
  request["messages"].push_back(Json{{"role", "assistant"}, {"content", "ok"}});
  ChatPlan plan = Plan(request);
  EXPECT_FALSE(plan.tool_call.has_value());
  EXPECT_EQ(plan.reply, "echo(2): TOOL:get_weather");
}

TEST(ChatToolCalls, AToolMessageIsAnsweredWithItsContent) {
  Json request = Json::parse(R"({
    "model": "fake-model",
    "messages": [
      {"role": "user", "content": "TOOL:get_weather {\"city\":\"Paris\"}"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}
    ],
    "tools": [{"type": "function", "function": {"name": "get_weather"}}]
  })");
  ChatPlan plan = Plan(request);
  EXPECT_FALSE(plan.tool_call.has_value());
  EXPECT_EQ(plan.reply, "tool result: sunny, 21 C");
  Json body = Json::parse(CompletionBody(plan, "chatcmpl-2", 7));
  EXPECT_EQ(body["choices"][0]["message"]["content"], "tool result: sunny, 21 C");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");

  // Content given as text parts counts too.
  request["messages"][2]["content"] = Json::parse(R"([{"type": "text", "text": "rain"}])");
  EXPECT_EQ(Plan(request).reply, "tool result: rain");
}

TEST(ChatToolCalls, TheFieldsOfAToolingClientAreAccepted) {
  Json request = Json::parse(R"({
    "model": "fake-model",
    "messages": [
      {"role": "system", "content": "be brief"},
      {"role": "user", "content": "weather?"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "fog"},
      {"role": "user", "content": "thanks"}
    ],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": false,
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
    "max_tokens": 100,
    "stream": true,
    "stream_options": {"include_usage": true},
    "user": "someone",
    "temperature": 0.5,
    "top_p": 0.9
  })");
  ChatParse parsed = ParseChatRequest(request.dump());
  ASSERT_TRUE(parsed.plan.has_value()) << parsed.error;
  EXPECT_TRUE(parsed.plan->stream);
  EXPECT_TRUE(parsed.plan->include_usage);
  EXPECT_FALSE(parsed.plan->tool_call.has_value());
  EXPECT_EQ(parsed.plan->reply, "echo(5): thanks");
}

TEST(ChatToolCalls, AStreamedCallArrivesInDeltas) {
  Json request = ToolRequest(R"(TOOL:lookup {"query":"staple gateway","limit":3})");
  request["stream"] = true;
  request["stream_options"] = {{"include_usage", true}};
  ChatPlan plan = Plan(request);
  ASSERT_TRUE(plan.tool_call.has_value());

  StreamEvents stream = BuildStreamEvents(plan, "chatcmpl-3", 9, 4);
  EXPECT_EQ(stream.events.back(), "data: [DONE]\n\n");
  std::vector<Json> chunks = Chunks(stream);
  ASSERT_GE(chunks.size(), 6u);  // role, header, 2+ fragments, finish, usage

  for (const auto& chunk : chunks) {
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    EXPECT_EQ(chunk["id"], "chatcmpl-3");
  }
  const Json& role = chunks[0]["choices"][0]["delta"];
  EXPECT_EQ(role["role"], "assistant");
  EXPECT_TRUE(role["content"].is_null());

  const Json& header = chunks[1]["choices"][0]["delta"]["tool_calls"][0];
  EXPECT_EQ(header["index"], 0);
  EXPECT_EQ(header["id"], plan.tool_call->id);
  EXPECT_EQ(header["type"], "function");
  EXPECT_EQ(header["function"]["name"], "lookup");

  std::string arguments = header["function"]["arguments"];
  std::size_t fragments = 0;
  std::size_t i = 2;
  for (; chunks[i]["choices"][0]["finish_reason"].is_null(); ++i) {
    const Json& delta = chunks[i]["choices"][0]["delta"]["tool_calls"][0];
    EXPECT_EQ(delta["index"], 0);
    EXPECT_FALSE(delta.contains("id"));
    arguments += delta["function"]["arguments"].get<std::string>();
    ++fragments;
  }
  EXPECT_GE(fragments, 2u);
  EXPECT_EQ(arguments, R"({"limit":3,"query":"staple gateway"})");
  EXPECT_EQ(stream.first_content, 1u);
  EXPECT_EQ(stream.content_count, 1u + fragments);

  EXPECT_EQ(chunks[i]["choices"][0]["finish_reason"], "tool_calls");
  ASSERT_EQ(i + 2, chunks.size());
  EXPECT_TRUE(chunks[i + 1]["choices"].empty());
  EXPECT_EQ(chunks[i + 1]["usage"]["completion_tokens"], plan.completion_tokens);
}

TEST(ChatToolCalls, EmptyArgumentsStillComeInTwoFragments) {
  Json request = ToolRequest("TOOL:get_weather");
  ChatPlan plan = Plan(request);
  ASSERT_TRUE(plan.tool_call.has_value());
  StreamEvents stream = BuildStreamEvents(plan, "chatcmpl-4", 9, 1);
  std::vector<Json> chunks = Chunks(stream);
  // role, header, "{", "}", finish (no usage: not asked for).
  ASSERT_EQ(chunks.size(), 5u);
  EXPECT_EQ(chunks[2]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"], "{");
  EXPECT_EQ(chunks[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"], "}");
  EXPECT_EQ(chunks[4]["choices"][0]["finish_reason"], "tool_calls");
}

TEST(ChatToolCalls, AStreamedToolResultIsText) {
  Json request = Json::parse(R"({"stream": true, "messages": [
    {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
      "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c", "content": "42"}]})");
  ChatPlan plan = Plan(request);
  std::string text;
  std::vector<Json> chunks = Chunks(BuildStreamEvents(plan, "chatcmpl-5", 9, 3));
  for (const auto& chunk : chunks) {
    const Json& delta = chunk["choices"][0]["delta"];
    if (delta.contains("content")) text += delta["content"].get<std::string>();
  }
  EXPECT_EQ(text, "tool result: 42");
  EXPECT_EQ(chunks.back()["choices"][0]["finish_reason"], "stop");
}

TEST(ChatEcho, PlainRequestsAreStillEchoed) {
  ChatPlan plan = Plan(Json::parse(R"({"messages": [{"role": "user", "content": "hi"}]})"));
  EXPECT_FALSE(plan.tool_call.has_value());
  EXPECT_EQ(plan.reply, "echo(1): hi");
  Json body = Json::parse(CompletionBody(plan, "chatcmpl-6", 7));
  EXPECT_EQ(body["choices"][0]["message"]["content"], "echo(1): hi");
  EXPECT_FALSE(body["choices"][0]["message"].contains("tool_calls"));
}

TEST(RequestLog, KeepsTheBodySoTheMessagesCanBeRead) {
  RequestLog log(2);
  const std::string first = R"({"messages":[{"role":"user","content":"one"}]})";
  const std::string last =
      R"({"messages":[{"role":"user","content":"one"},{"role":"assistant","content":"echo(1): one"},{"role":"user","content":"two"}]})";
  log.Add({"POST", "/v1/chat/completions", {{"content-type", "application/json"}}, first});
  log.Add({"POST", "/v1/chat/completions", {{"content-type", "application/json"}}, last});
  Json requests = Json::parse(log.ToJson());
  ASSERT_EQ(requests.size(), 2u);
  Json messages = Json::parse(requests.back()["body"].get<std::string>())["messages"];
  ASSERT_EQ(messages.size(), 3u);
  EXPECT_EQ(messages[1]["content"], "echo(1): one");
  EXPECT_EQ(messages[2]["content"], "two");
  EXPECT_EQ(requests.back()["headers"]["content-type"], "application/json");
}

}  // namespace
}  // namespace staple::fake
