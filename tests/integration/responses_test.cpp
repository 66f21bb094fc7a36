// The Responses and Conversations APIs on a Chat Completions upstream: responses stored before
// the answer and continued through previous_response_id or a conversation, their retrieval,
// listing and deletion, streaming events, truncation, tools, restarts.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support/gateway_test.h"
#include "support/temp_dir.h"

namespace staple::testing {
namespace {

using nlohmann::json;

class ResponsesTest : public GatewayTest {
 protected:
  HttpResponse Create(const StapleServer& staple, const json& body) {
    return client_.PostJson(staple.url() + "/v1/responses", body.dump());
  }
  // A response that must succeed.
  json Respond(const StapleServer& staple, const json& body) {
    HttpResponse response = Create(staple, body);
    EXPECT_EQ(response.status, 200) << response.body;
    json parsed = response.Json();
    EXPECT_TRUE(parsed.is_object()) << response.body;
    return parsed.is_object() ? parsed : json::object();
  }
  HttpResponse Get(const StapleServer& staple, const std::string& path) {
    return client_.Get(staple.url() + path);
  }
  HttpResponse Delete(const StapleServer& staple, const std::string& path) {
    return client_.Request("DELETE", staple.url() + path);
  }
  // The contents of the upstream's last messages, as "role: text" (tool calls as
  // "assistant: call name(arguments)").
  std::vector<std::string> LastUpstreamTranscript() const {
    std::vector<std::string> lines;
    for (const json& message : LastUpstreamMessages()) {
      std::string text;
      if (message.contains("content") && message["content"].is_string()) {
        text = message["content"].get<std::string>();
      } else if (message.contains("content") && message["content"].is_array()) {
        for (const json& part : message["content"]) text += part.value("text", "");
      }
      if (message.contains("tool_calls")) {
        for (const json& call : message["tool_calls"]) {
          text += "call " + call["function"].value("name", "") + "(" +
                  call["function"].value("arguments", "") + ")";
        }
      }
      lines.push_back(message.value("role", "") + ": " + text);
    }
    return lines;
  }
};

// The text of a response's first output message.
std::string OutputText(const json& response) {
  for (const json& item : response.value("output", json::array())) {
    if (item.value("type", "") != "message") continue;
    std::string text;
    for (const json& part : item["content"]) text += part.value("text", "");
    return text;
  }
  return "";
}

void ExpectError(const HttpResponse& response, long status, const std::string& param,
                 const std::string& code = "") {
  EXPECT_EQ(response.status, status) << response.body;
  json body = response.Json();
  ASSERT_TRUE(body.is_object() && body.contains("error")) << response.body;
  if (!param.empty()) {
    EXPECT_EQ(body["error"].value("param", ""), param) << response.body;
  }
  if (!code.empty()) {
    EXPECT_EQ(body["error"].value("code", ""), code) << response.body;
  }
}

// The events of an SSE body: (event name, data).
std::vector<std::pair<std::string, json>> Events(const std::string& body) {
  std::vector<std::pair<std::string, json>> events;
  std::string name;
  for (const std::string& line : SplitLines(body)) {
    if (line.rfind("event: ", 0) == 0) name = line.substr(7);
    if (line.rfind("data: ", 0) == 0) {
      events.emplace_back(name, json::parse(line.substr(6), nullptr, false));
      name.clear();
    }
  }
  return events;
}

TEST_F(ResponsesTest, PlainResponseIsStoredAndRetrievable) {
  auto staple = StartStaple();
  json response = Respond(*staple, {{"model", "m"}, {"input", "hi"}});
  const std::string id = response.value("id", "");
  EXPECT_EQ(id.rfind("resp_", 0), 0u) << id;
  EXPECT_EQ(response["object"], "response");
  EXPECT_EQ(response["status"], "completed");
  EXPECT_EQ(OutputText(response), "echo(1): hi");
  EXPECT_EQ(response["output"][0]["id"].get<std::string>().rfind("msg_", 0), 0u);
  EXPECT_GT(response["usage"]["total_tokens"].get<int>(), 0);
  EXPECT_EQ(response["store"], true);

  HttpResponse retrieved = Get(*staple, "/v1/responses/" + id);
  ASSERT_EQ(retrieved.status, 200) << retrieved.body;
  EXPECT_EQ(retrieved.Json(), response);

  // The turn log keeps the exchange too.
  HttpResponse messages = Get(*staple, "/users/" + id + "/messages");
  ASSERT_EQ(messages.status, 200) << messages.body;
  ASSERT_EQ(messages.Json()["messages"].size(), 2u);
  EXPECT_EQ(messages.Json()["messages"][1]["content"], "echo(1): hi");
}

// A response in no conversation is stored without its output (its output item rows hold it) and
// read back whole; a response in a conversation keeps its whole object, so that deleting an item
// from the conversation leaves the response as it was answered; a whole object stored before
// (the earlier form) is answered as it is.
TEST_F(ResponsesTest, TheOutputIsStoredOnceAndRetrievedWhole) {
  auto staple = StartStaple();
  const json plain = Respond(*staple, {{"model", "m"}, {"input", "hi"}});
  const std::string id = plain.value("id", "");
  const auto stored_body = [&](const std::string& response_id) {
    const json rows = QuerySqlite(staple->database_path(),
                                  "SELECT body FROM responses WHERE id = '" + response_id + "'");
    return rows.size() == 1 ? json::parse(rows[0].value("body", "null")) : json();
  };
  json expected = plain;
  expected["output"] = json::array();
  EXPECT_EQ(stored_body(id), expected);
  EXPECT_EQ(Get(*staple, "/v1/responses/" + id).Json(), plain);

  // As an earlier version stored it: the whole object.
  QuerySqlite(staple->database_path(),
              "UPDATE responses SET body = '" + plain.dump() + "' WHERE id = '" + id + "'");
  EXPECT_EQ(stored_body(id), plain);
  EXPECT_EQ(Get(*staple, "/v1/responses/" + id).Json(), plain);

  HttpResponse created = client_.PostJson(staple->url() + "/v1/conversations", std::string("{}"));
  ASSERT_EQ(created.status, 200) << created.body;
  const std::string conversation = created.Json().value("id", "");
  const json in_conversation =
      Respond(*staple, {{"model", "m"}, {"input", "in it"}, {"conversation", conversation}});
  const std::string in_id = in_conversation.value("id", "");
  EXPECT_EQ(stored_body(in_id), in_conversation);
  const std::string output_item = in_conversation["output"][0].value("id", "");
  ASSERT_EQ(Delete(*staple, "/v1/conversations/" + conversation + "/items/" + output_item).status,
            200);
  EXPECT_EQ(Get(*staple, "/v1/responses/" + in_id).Json(), in_conversation);
}

TEST_F(ResponsesTest, ChainedResponsesSendTheWholeChainUpstream) {
  auto staple = StartStaple();
  json first = Respond(*staple, {{"model", "m"}, {"input", "one"}, {"instructions", "be brief"}});
  EXPECT_EQ(LastUpstreamTranscript(), (std::vector<std::string>{"system: be brief", "user: one"}));
  json second = Respond(*staple, {{"model", "m"},
                                  {"input", json::array({{{"role", "user"}, {"content", "two"}}})},
                                  {"previous_response_id", first["id"]}});
  EXPECT_EQ(second["previous_response_id"], first["id"]);
  // Instructions are the request's own: they do not carry over.
  EXPECT_EQ(LastUpstreamTranscript(),
            (std::vector<std::string>{"user: one", "assistant: echo(2): one", "user: two"}));
  json third = Respond(
      *staple, {{"model", "m"}, {"input", "three"}, {"previous_response_id", second["id"]}});
  EXPECT_EQ(LastUpstreamTranscript(),
            (std::vector<std::string>{"user: one", "assistant: echo(2): one", "user: two",
                                      "assistant: echo(3): two", "user: three"}));
  EXPECT_EQ(OutputText(third), "echo(5): three");
}

TEST_F(ResponsesTest, InvalidRequestsAreRefusedNamingTheField) {
  auto staple = StartStaple();
  ExpectError(Create(*staple, {{"model", "m"}, {"input", "x"}, {"previous_response_id", "resp_x"}}),
              404, "previous_response_id", "previous_response_not_found");
  ExpectError(Create(*staple, {{"model", "m"}, {"input", "x"}, {"conversation", "conv_x"}}), 404,
              "conversation");
  ExpectError(Create(*staple, {{"model", "m"},
                               {"input", "x"},
                               {"previous_response_id", "resp_x"},
                               {"conversation", "conv_x"}}),
              400, "");
  ExpectError(
      Create(*staple, {{"model", "m"}, {"input", json::array({{{"type", "no_such_item"}}})}}), 400,
      "input[0].type");
  ExpectError(Create(*staple, {{"model", "m"}, {"input", "x"}, {"no_such_field", 1}}), 400,
              "no_such_field");
  HttpResponse not_json = client_.PostJson(staple->url() + "/v1/responses", std::string("{"));
  ExpectError(not_json, 400, "");
  EXPECT_EQ(fake_.chat_bodies().size(), 0u);  // nothing reached the upstream
}

TEST_F(ResponsesTest, StoreFalseKeepsNothingToContinue) {
  auto staple = StartStaple();
  json response = Respond(*staple, {{"model", "m"}, {"input", "hi"}, {"store", false}});
  EXPECT_EQ(response["store"], false);
  EXPECT_EQ(Get(*staple, "/v1/responses/" + response["id"].get<std::string>()).status, 404);
  ExpectError(
      Create(*staple, {{"model", "m"}, {"input", "x"}, {"previous_response_id", response["id"]}}),
      404, "previous_response_id");
}

TEST_F(ResponsesTest, DeletedResponseIsGone) {
  auto staple = StartStaple();
  json response = Respond(*staple, {{"model", "m"}, {"input", "hi"}});
  const std::string path = "/v1/responses/" + response["id"].get<std::string>();
  HttpResponse deleted = Delete(*staple, path);
  ASSERT_EQ(deleted.status, 200) << deleted.body;
  EXPECT_EQ(deleted.Json()["deleted"], true);
  EXPECT_EQ(Get(*staple, path).status, 404);
  EXPECT_EQ(Delete(*staple, path).status, 404);
  ExpectError(
      Create(*staple, {{"model", "m"}, {"input", "x"}, {"previous_response_id", response["id"]}}),
      404, "previous_response_id");
}

TEST_F(ResponsesTest, InputItemsArePaged) {
  auto staple = StartStaple();
  json input = json::array();
  for (int n = 0; n < 5; ++n) {
    input.push_back({{"role", "user"}, {"content", "part " + std::to_string(n)}});
  }
  json response = Respond(*staple, {{"model", "m"}, {"input", input}});
  const std::string path = "/v1/responses/" + response["id"].get<std::string>() + "/input_items";

  json all = Get(*staple, path).Json();
  ASSERT_EQ(all["data"].size(), 5u) << all;
  EXPECT_EQ(all["data"][0]["content"][0]["text"], "part 4");  // newest first by default
  EXPECT_EQ(all["has_more"], false);

  json first = Get(*staple, path + "?order=asc&limit=2").Json();
  ASSERT_EQ(first["data"].size(), 2u) << first;
  EXPECT_EQ(first["data"][0]["content"][0]["text"], "part 0");
  EXPECT_EQ(first["has_more"], true);
  json next =
      Get(*staple, path + "?order=asc&limit=2&after=" + first["last_id"].get<std::string>()).Json();
  ASSERT_EQ(next["data"].size(), 2u) << next;
  EXPECT_EQ(next["data"][0]["content"][0]["text"], "part 2");

  ExpectError(Get(*staple, path + "?limit=101"), 400, "limit");
  ExpectError(Get(*staple, path + "?order=sideways"), 400, "order");
  EXPECT_EQ(Get(*staple, "/v1/responses/resp_nope/input_items").status, 404);
}

TEST_F(ResponsesTest, ConversationsHoldTheirResponses) {
  auto staple = StartStaple();
  HttpResponse created = client_.PostJson(
      staple->url() + "/v1/conversations",
      json{
          {"items", json::array({{{"type", "message"}, {"role", "user"}, {"content", "earlier"}}})},
          {"metadata", {{"topic", "demo"}}}}
          .dump());
  ASSERT_EQ(created.status, 200) << created.body;
  json conversation = created.Json();
  const std::string id = conversation.value("id", "");
  EXPECT_EQ(id.rfind("conv_", 0), 0u) << id;
  EXPECT_EQ(conversation["object"], "conversation");
  EXPECT_EQ(conversation["metadata"]["topic"], "demo");

  Respond(*staple, {{"model", "m"}, {"input", "first"}, {"conversation", id}});
  EXPECT_EQ(LastUpstreamTranscript(), (std::vector<std::string>{"user: earlier", "user: first"}));
  json second = Respond(*staple, {{"model", "m"}, {"input", "second"}, {"conversation", id}});
  EXPECT_EQ(second["conversation"]["id"], id);
  EXPECT_EQ(LastUpstreamTranscript(),
            (std::vector<std::string>{"user: earlier", "user: first", "assistant: echo(2): first",
                                      "user: second"}));

  json items = Get(*staple, "/v1/conversations/" + id + "/items?order=asc").Json();
  ASSERT_EQ(items["data"].size(), 5u) << items;
  EXPECT_EQ(items["data"][4]["role"], "assistant");
  const std::string item_id = items["data"][0]["id"];

  HttpResponse item = Get(*staple, "/v1/conversations/" + id + "/items/" + item_id);
  ASSERT_EQ(item.status, 200) << item.body;
  EXPECT_EQ(item.Json()["content"][0]["text"], "earlier");
  ASSERT_EQ(Delete(*staple, "/v1/conversations/" + id + "/items/" + item_id).status, 200);
  EXPECT_EQ(Get(*staple, "/v1/conversations/" + id + "/items/" + item_id).status, 404);

  HttpResponse added = client_.PostJson(
      staple->url() + "/v1/conversations/" + id + "/items",
      json{{"items", json::array({{{"role", "user"}, {"content", "added"}}})}}.dump());
  ASSERT_EQ(added.status, 200) << added.body;
  EXPECT_EQ(added.Json()["data"].size(), 1u);

  HttpResponse updated = client_.PostJson(staple->url() + "/v1/conversations/" + id,
                                          json{{"metadata", {{"topic", "other"}}}}.dump());
  ASSERT_EQ(updated.status, 200) << updated.body;
  EXPECT_EQ(Get(*staple, "/v1/conversations/" + id).Json()["metadata"]["topic"], "other");

  HttpResponse deleted = Delete(*staple, "/v1/conversations/" + id);
  ASSERT_EQ(deleted.status, 200) << deleted.body;
  EXPECT_EQ(deleted.Json()["object"], "conversation.deleted");
  EXPECT_EQ(Get(*staple, "/v1/conversations/" + id).status, 404);
  EXPECT_EQ(Get(*staple, "/v1/conversations/" + id + "/items").status, 404);
}

TEST_F(ResponsesTest, StreamEndsWithTheStoredResponse) {
  auto staple = StartStaple();
  HttpResponse streamed =
      Create(*staple, {{"model", "m"}, {"input", "streamed words here"}, {"stream", true}});
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  EXPECT_NE(streamed.Header("Content-Type").value_or("").find("text/event-stream"),
            std::string::npos);
  auto events = Events(streamed.body);
  ASSERT_GE(events.size(), 6u) << streamed.body;
  EXPECT_EQ(events.front().first, "response.created");
  EXPECT_EQ(events.back().first, "response.completed");
  std::string deltas;
  for (std::size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].second["type"], events[i].first);
    EXPECT_EQ(events[i].second["sequence_number"], i) << events[i].first;
    if (events[i].first == "response.output_text.delta") deltas += events[i].second["delta"];
  }
  EXPECT_EQ(deltas, "echo(1): streamed words here");
  const json completed = events.back().second["response"];
  EXPECT_EQ(OutputText(completed), deltas);
  // Stored before response.completed went out.
  HttpResponse retrieved = Get(*staple, "/v1/responses/" + completed["id"].get<std::string>());
  ASSERT_EQ(retrieved.status, 200) << retrieved.body;
  EXPECT_EQ(retrieved.Json(), completed);
}

TEST_F(ResponsesTest, BrokenStreamEndsWithResponseFailedAndStoresNothing) {
  auto staple = StartStaple();
  HttpResponse streamed = Create(
      *staple, {{"model", "m"}, {"input", "FAULT:stream-drop-after=1 words"}, {"stream", true}});
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  auto events = Events(streamed.body);
  ASSERT_FALSE(events.empty()) << streamed.body;
  EXPECT_EQ(events.back().first, "response.failed") << streamed.body;
  const std::string id = events.front().second["response"]["id"];
  EXPECT_EQ(Get(*staple, "/v1/responses/" + id).status, 404);
  // The id went out in response.created, but there is nothing to continue.
  ExpectError(Create(*staple, {{"model", "m"}, {"input", "x"}, {"previous_response_id", id}}), 404,
              "previous_response_id");
}

TEST_F(ResponsesTest, TruncationDisabledRefusesALongChainAndAutoDropsOldTurns) {
  auto staple = StartStaple({{"STAPLE_HISTORY_MAX_MESSAGES", "4"}});
  json previous = Respond(*staple, {{"model", "m"}, {"input", "one"}});
  previous = Respond(*staple,
                     {{"model", "m"}, {"input", "two"}, {"previous_response_id", previous["id"]}});
  // Four stored items and one new: over the window.
  ExpectError(
      Create(*staple,
             {{"model", "m"}, {"input", "three"}, {"previous_response_id", previous["id"]}}),
      400, "input", "context_length_exceeded");
  json third = Respond(*staple, {{"model", "m"},
                                 {"input", "three"},
                                 {"previous_response_id", previous["id"]},
                                 {"truncation", "auto"}});
  EXPECT_EQ(third["truncation"], "auto");
  EXPECT_EQ(LastUpstreamTranscript(),
            (std::vector<std::string>{"user: two", "assistant: echo(3): two", "user: three"}));
}

TEST_F(ResponsesTest, FunctionToolRoundTrip) {
  auto staple = StartStaple();
  const json tools = json::array(
      {{{"type", "function"},
        {"name", "get_weather"},
        {"description", "weather of a city"},
        {"parameters", {{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}}}}});
  json asked = Respond(
      *staple,
      {{"model", "m"}, {"input", R"(TOOL:get_weather {"city":"Paris"})"}, {"tools", tools}});
  ASSERT_EQ(asked["output"].size(), 1u) << asked;
  const json call = asked["output"][0];
  EXPECT_EQ(call["type"], "function_call");
  EXPECT_EQ(call["name"], "get_weather");
  EXPECT_EQ(json::parse(call["arguments"].get<std::string>()), (json{{"city", "Paris"}}));
  EXPECT_EQ(call["id"].get<std::string>().rfind("fc_", 0), 0u);
  EXPECT_EQ(Get(*staple, "/v1/responses/" + asked["id"].get<std::string>()).Json(), asked);
  // The upstream got the tool in chat form.
  auto bodies = fake_.chat_bodies();
  ASSERT_FALSE(bodies.empty());
  EXPECT_EQ(bodies.back()["tools"][0]["function"]["name"], "get_weather");

  json answered = Respond(*staple, {{"model", "m"},
                                    {"tools", tools},
                                    {"previous_response_id", asked["id"]},
                                    {"input", json::array({{{"type", "function_call_output"},
                                                            {"call_id", call["call_id"]},
                                                            {"output", "sunny, 21 C"}}})}});
  EXPECT_NE(OutputText(answered).find("sunny, 21 C"), std::string::npos) << answered;
  json messages = LastUpstreamMessages();
  ASSERT_EQ(messages.size(), 3u) << messages;
  EXPECT_EQ(messages[1]["role"], "assistant");
  EXPECT_EQ(messages[1]["tool_calls"][0]["id"], call["call_id"]);
  EXPECT_EQ(messages[2]["role"], "tool");
  EXPECT_EQ(messages[2]["tool_call_id"], call["call_id"]);
}

// A chain this process committed is continued from memory (DESIGN.md: the chain cache), whether
// its last answer was streamed or whole, with exactly the upstream messages a database read gives;
// a delete made here is seen by the very next request, even one from the middle of a chain.
TEST_F(ResponsesTest, ChainsAreContinuedFromMemoryAndForgottenAtADelete) {
  auto staple = StartStaple();
  json first = Respond(*staple, {{"model", "m"}, {"input", "one"}});
  HttpResponse streamed = Create(
      *staple,
      {{"model", "m"}, {"input", "two"}, {"previous_response_id", first["id"]}, {"stream", true}});
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  auto events = Events(streamed.body);
  ASSERT_FALSE(events.empty()) << streamed.body;
  ASSERT_EQ(events.back().first, "response.completed") << streamed.body;
  const json second = events.back().second["response"];
  json third = Respond(
      *staple, {{"model", "m"}, {"input", "three"}, {"previous_response_id", second["id"]}});
  EXPECT_EQ(LastUpstreamTranscript(),
            (std::vector<std::string>{"user: one", "assistant: echo(1): one", "user: two",
                                      "assistant: echo(3): two", "user: three"}));
  EXPECT_EQ(Metric(*staple, "staple_response_chain_cache_hits_total"), 2);
  EXPECT_EQ(Metric(*staple, "staple_response_chain_cache_misses_total"), 0);
  EXPECT_GT(Metric(*staple, "staple_response_chain_cache_bytes"), 0);

  // The first response deleted: the third's chain now starts at the second.
  ASSERT_EQ(Delete(*staple, "/v1/responses/" + first["id"].get<std::string>()).status, 200);
  EXPECT_EQ(Metric(*staple, "staple_response_chain_cache_bytes"), 0);
  Respond(*staple, {{"model", "m"}, {"input", "four"}, {"previous_response_id", third["id"]}});
  EXPECT_EQ(LastUpstreamTranscript(),
            (std::vector<std::string>{"user: two", "assistant: echo(3): two", "user: three",
                                      "assistant: echo(5): three", "user: four"}));
  EXPECT_EQ(Metric(*staple, "staple_response_chain_cache_misses_total"), 1);
}

TEST_F(ResponsesTest, ChainSurvivesARestart) {
  TempDir dir;
  std::string first_id;
  {
    auto staple = StartStaple({}, dir.path());
    first_id = Respond(*staple, {{"model", "m"}, {"input", "before"}})["id"];
  }
  auto staple = StartStaple({}, dir.path());
  Respond(*staple, {{"model", "m"}, {"input", "after"}, {"previous_response_id", first_id}});
  EXPECT_EQ(
      LastUpstreamTranscript(),
      (std::vector<std::string>{"user: before", "assistant: echo(1): before", "user: after"}));
}

}  // namespace
}  // namespace staple::testing
