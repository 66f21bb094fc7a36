// POST /v1/chat/completions (non-streaming) and GET /v1/models: pass-through, the gateway's key,
// server-side memory, errors in OpenAI's shape, rate limits.

#include <gtest/gtest.h>

#include <string>

#include "support/gateway_test.h"

namespace staple::testing {
namespace {

using nlohmann::json;

class OpenAICompatTest : public GatewayTest {
 protected:
  HttpResponse Chat(const StapleServer& staple, const std::string& body,
                    const Headers& headers = {}) {
    return client_.PostJson(staple.url() + "/v1/chat/completions", body, headers);
  }
  HttpResponse Chat(const StapleServer& staple, const json& body, const Headers& headers = {}) {
    return Chat(staple, body.dump(), headers);
  }
  static json UserMessage(const std::string& content) {
    return json::array({{{"role", "user"}, {"content", content}}});
  }
  // The stored messages of a conversation.
  json StoredMessages(const StapleServer& staple, const std::string& id) {
    HttpResponse response = client_.Get(staple.url() + "/users/" + id + "/messages");
    EXPECT_EQ(response.status, 200) << response.body;
    json body = response.Json();
    return body.is_object() && body.contains("messages") ? body["messages"] : json::array();
  }
  std::size_t UpstreamChatRequests() const {
    return fake_.requests_to("POST", "/v1/chat/completions").size();
  }
};

// {"error": {"message": string, "type": string, "code": ...}} with `status`.
void ExpectOpenAIError(const HttpResponse& response, long status) {
  EXPECT_EQ(response.status, status) << response.body;
  json body = response.Json();
  ASSERT_TRUE(body.is_object() && body.contains("error") && body["error"].is_object())
      << response.body;
  EXPECT_TRUE(body["error"].contains("message") && body["error"]["message"].is_string())
      << response.body;
  EXPECT_TRUE(body["error"].contains("type") && body["error"]["type"].is_string()) << response.body;
  EXPECT_TRUE(body["error"].contains("code")) << response.body;
  EXPECT_EQ(response.body.find(kTestApiKey), std::string::npos);
}

TEST_F(OpenAICompatTest, BodyReachesTheUpstreamUnchangedWithTheGatewayKey) {
  auto staple = StartStaple();
  const std::string body =
      R"({"model":"some-model","temperature":0.3,"n":1,"response_format":{"type":"text"},)"
      R"("tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],)"
      R"("messages":[{"role":"user","content":"hello"}],"user":"label-only"})";
  HttpResponse response = Chat(*staple, body, {{"Authorization", "Bearer client-own-key"}});
  ASSERT_EQ(response.status, 200) << response.body;
  EXPECT_NE(response.Header("Content-Type").value_or("").find("application/json"),
            std::string::npos);
  json answer = response.Json();
  EXPECT_EQ(answer["object"], "chat.completion");
  EXPECT_EQ(answer["choices"][0]["message"]["content"], "echo(1): hello");
  EXPECT_EQ(answer["model"], "some-model");

  auto requests = fake_.requests_to("POST", "/v1/chat/completions");
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0]["body"], body);  // byte for byte
  EXPECT_EQ(requests[0]["headers"].value("authorization", ""),
            std::string("Bearer ") + kTestApiKey);
}

TEST_F(OpenAICompatTest, TurnIsLoggedUnderAGeneratedConversationId) {
  auto staple = StartStaple();
  HttpResponse response = Chat(*staple, json{{"model", "m"}, {"messages", UserMessage("hi")}});
  ASSERT_EQ(response.status, 200) << response.body;
  const std::string id = response.Header("X-Staple-Conversation").value_or("");
  EXPECT_TRUE(IsUuidV7(id)) << id;
  json stored = StoredMessages(*staple, id);
  ASSERT_EQ(stored.size(), 2u) << stored.dump();
  EXPECT_EQ(stored[0]["role"], "user");
  EXPECT_EQ(stored[0]["content"], "hi");
  EXPECT_EQ(stored[1]["role"], "assistant");
  EXPECT_EQ(stored[1]["content"], "echo(1): hi");
  EXPECT_EQ(stored[1]["model"], "m");
}

TEST_F(OpenAICompatTest, ConversationHeaderGivesServerSideMemory) {
  auto staple = StartStaple();
  const Headers conversation = {{"X-Staple-Conversation", "sdk-conv-1"}};
  HttpResponse first =
      Chat(*staple, json{{"model", "m"}, {"messages", UserMessage("one")}}, conversation);
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_EQ(first.Header("X-Staple-Conversation"), "sdk-conv-1");
  EXPECT_EQ(first.Json()["choices"][0]["message"]["content"], "echo(1): one");

  HttpResponse second =
      Chat(*staple, json{{"model", "m"}, {"messages", UserMessage("two")}}, conversation);
  ASSERT_EQ(second.status, 200) << second.body;
  EXPECT_EQ(second.Json()["choices"][0]["message"]["content"], "echo(3): two");

  // System messages stay first; the history goes between them and the new messages.
  json with_system = {
      {"model", "m"},
      {"temperature", 0.5},
      {"messages",
       {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "three"}}}}};
  HttpResponse third = Chat(*staple, with_system, conversation);
  ASSERT_EQ(third.status, 200) << third.body;
  EXPECT_EQ(third.Json()["choices"][0]["message"]["content"], "echo(6): three");
  const json expected = json::array({
      {{"role", "system"}, {"content", "Be brief."}},
      {{"role", "user"}, {"content", "one"}},
      {{"role", "assistant"}, {"content", "echo(1): one"}},
      {{"role", "user"}, {"content", "two"}},
      {{"role", "assistant"}, {"content", "echo(3): two"}},
      {{"role", "user"}, {"content", "three"}},
  });
  EXPECT_EQ(LastUpstreamMessages(), expected);
  EXPECT_EQ(fake_.chat_bodies().back().value("temperature", 0.0), 0.5);

  // The seed endpoint shares the same conversations.
  json turn = Turn(*staple, "four", "sdk-conv-1");
  EXPECT_EQ(turn.value("completion", ""), "echo(7): four");
}

TEST_F(OpenAICompatTest, HistoryWindowAppliesToMemory) {
  auto staple = StartStaple({{"STAPLE_HISTORY_MAX_MESSAGES", "2"}});
  const Headers conversation = {{"X-Staple-Conversation", "windowed"}};
  for (const char* prompt : {"a", "b", "c"}) {
    HttpResponse response =
        Chat(*staple, json{{"model", "m"}, {"messages", UserMessage(prompt)}}, conversation);
    ASSERT_EQ(response.status, 200) << response.body;
  }
  // Only the last stored turn (2 messages) went along with "c".
  EXPECT_EQ(LastUpstreamMessages().size(), 3u) << LastUpstreamMessages().dump();
  EXPECT_EQ(LastUpstreamMessages()[0]["content"], "b");
}

TEST_F(OpenAICompatTest, InvalidRequestsAre400Or415InOpenAIShape) {
  auto staple = StartStaple();
  for (const char* body :
       {"not json", "[1,2]", R"("text")", R"({"model":"m"})", R"({"model":"m","messages":"hi"})"}) {
    SCOPED_TRACE(body);
    ExpectOpenAIError(Chat(*staple, std::string(body)), 400);
  }
  HttpResponse wrong_type = client_.Request("POST", staple->url() + "/v1/chat/completions",
                                            R"({"messages":[]})", {{"Content-Type", "text/plain"}});
  ExpectOpenAIError(wrong_type, 415);
  ExpectOpenAIError(Chat(*staple, json{{"messages", UserMessage("x")}},
                         {{"X-Staple-Conversation", std::string(300, 'c')}}),
                    400);
  EXPECT_EQ(UpstreamChatRequests(), 0u);
}

TEST_F(OpenAICompatTest, UpstreamErrorStatusesPassThrough) {
  auto staple = StartStaple({{"STAPLE_UPSTREAM_RETRIES", "0"}});
  const Headers conversation = {{"X-Staple-Conversation", "failing"}};
  HttpResponse bad =
      Chat(*staple, json{{"messages", UserMessage("FAULT:status=400")}}, conversation);
  ExpectOpenAIError(bad, 400);
  EXPECT_EQ(bad.Json()["error"]["message"], "fake failure 400");
  HttpResponse unavailable =
      Chat(*staple, json{{"messages", UserMessage("FAULT:status=503")}}, conversation);
  ExpectOpenAIError(unavailable, 503);
  // Client request headers other than the conversation id are not forwarded.
  HttpResponse not_found = Chat(*staple, json{{"messages", UserMessage("FAULT:status=404")}},
                                {{"X-Fake-Fault", "FAULT:status=500"}});
  ExpectOpenAIError(not_found, 404);
  EXPECT_TRUE(StoredMessages(*staple, "failing").empty());
}

TEST_F(OpenAICompatTest, GatewayFailuresAre502And504) {
  auto staple = StartStaple({{"STAPLE_UPSTREAM_RETRIES", "0"}, {"STAPLE_UPSTREAM_TIMEOUT", "0.5"}});
  const Headers conversation = {{"X-Staple-Conversation", "broken"}};
  ExpectOpenAIError(
      Chat(*staple, json{{"messages", UserMessage("FAULT:invalid-json")}}, conversation), 502);
  ExpectOpenAIError(Chat(*staple, json{{"messages", UserMessage("FAULT:drop")}}, conversation),
                    502);
  HttpResponse timeout = Chat(*staple, json{{"messages", UserMessage("FAULT:hang")}}, conversation);
  ExpectOpenAIError(timeout, 504);
  EXPECT_EQ(timeout.Json()["error"]["type"], "upstream_timeout");
  EXPECT_TRUE(StoredMessages(*staple, "broken").empty());
}

TEST_F(OpenAICompatTest, UnreachableUpstreamIs502) {
  StapleOptions options;
  options.env = {{"OPENAI_BASE_URL", "http://127.0.0.1:" + std::to_string(FreePort()) + "/v1"},
                 {"OPENAI_API_KEY", kTestApiKey},
                 {"STAPLE_UPSTREAM_RETRIES", "0"}};
  StapleServer staple(options);
  ExpectOpenAIError(Chat(staple, json{{"messages", UserMessage("hi")}}), 502);
  ExpectOpenAIError(client_.Get(staple.url() + "/v1/models"), 502);
}

TEST_F(OpenAICompatTest, ModelsPassThroughWithTheGatewayKey) {
  auto staple = StartStaple();
  HttpResponse direct = client_.Get(fake_.base_url() + "/models");
  HttpResponse models =
      client_.Get(staple->url() + "/v1/models", {{"Authorization", "Bearer client-own-key"}});
  ASSERT_EQ(models.status, 200) << models.body;
  EXPECT_EQ(models.body, direct.body);
  EXPECT_NE(models.Header("Content-Type").value_or("").find("application/json"), std::string::npos);
  auto requests = fake_.requests_to("GET", "/v1/models");
  ASSERT_FALSE(requests.empty());
  EXPECT_EQ(requests.back()["headers"].value("authorization", ""),
            std::string("Bearer ") + kTestApiKey);
}

TEST_F(OpenAICompatTest, RateLimitIs429InOpenAIShape) {
  auto staple = StartStaple({{"STAPLE_V1_LIMIT", "2 per minute"}});
  for (int i = 0; i < 2; ++i) {
    HttpResponse ok = Chat(*staple, json{{"messages", UserMessage("hi")}});
    EXPECT_EQ(ok.status, 200) << ok.body;
    EXPECT_TRUE(ok.Header("X-RateLimit-Limit").has_value());
  }
  HttpResponse limited = Chat(*staple, json{{"messages", UserMessage("hi")}});
  ExpectOpenAIError(limited, 429);
  EXPECT_TRUE(limited.Header("Retry-After").has_value());
  EXPECT_EQ(UpstreamChatRequests(), 2u);
}

}  // namespace
}  // namespace staple::testing
