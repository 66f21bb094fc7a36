#include <gtest/gtest.h>

#include "api/handlers.h"
#include "api/openai_handlers.h"

namespace staple::api {
namespace {

using nlohmann::json;

http::Request ChatRequest(std::string body, std::string content_type = "application/json") {
  http::Request request;
  request.method = "POST";
  request.path = "/v1/chat/completions";
  if (!content_type.empty()) request.headers.Add("Content-Type", std::move(content_type));
  request.body = std::move(body);
  return request;
}

json ErrorOf(const http::Response& response) {
  auto body = json::parse(response.body);
  EXPECT_TRUE(body.contains("error") && body["error"].is_object()) << response.body;
  return body["error"];
}

TEST(OpenAIChatRequestTest, AcceptsAChatBodyAndTheConversationHeader) {
  auto request = ChatRequest(R"({"model":"m","messages":[{"role":"user","content":"hi"}]})");
  request.headers.Add("x-staple-conversation", "conv-1");
  OpenAIChatRequest parsed;
  EXPECT_FALSE(ParseOpenAIChatRequest(request, parsed));
  EXPECT_EQ(parsed.conversation_id, "conv-1");
  EXPECT_EQ(parsed.body.prompt, "hi");
}

TEST(OpenAIChatRequestTest, WithoutTheHeaderThereIsNoConversation) {
  OpenAIChatRequest parsed;
  EXPECT_FALSE(ParseOpenAIChatRequest(ChatRequest(R"({"messages":[]})"), parsed));
  EXPECT_FALSE(parsed.conversation_id.has_value());
}

TEST(OpenAIChatRequestTest, WrongContentTypeIs415) {
  OpenAIChatRequest parsed;
  auto answer = ParseOpenAIChatRequest(ChatRequest(R"({"messages":[]})", "text/plain"), parsed);
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, 415);
  EXPECT_EQ(ErrorOf(*answer)["type"], "invalid_request_error");
}

TEST(OpenAIChatRequestTest, InvalidBodiesAre400InOpenAIShape) {
  for (const char* body : {"nope", "[]", R"({"model":"m"})", R"({"messages":5})"}) {
    OpenAIChatRequest parsed;
    auto answer = ParseOpenAIChatRequest(ChatRequest(body), parsed);
    ASSERT_TRUE(answer) << body;
    EXPECT_EQ(answer->status, 400) << body;
    auto error = ErrorOf(*answer);
    EXPECT_TRUE(error["message"].is_string());
    EXPECT_TRUE(error.contains("code"));
  }
}

TEST(OpenAIChatRequestTest, LongConversationIdIs400) {
  auto request = ChatRequest(R"({"messages":[]})");
  request.headers.Add("X-Staple-Conversation", std::string(257, 'c'));
  OpenAIChatRequest parsed;
  auto answer = ParseOpenAIChatRequest(request, parsed);
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, 400);
}

TEST(OpenAIChatRequestTest, ConversationIdMustBeValidUtf8) {
  // Truncated sequence, lone continuation byte, overlong '/', UTF-16 surrogate, above U+10FFFF.
  for (const std::string& id :
       {std::string("conv-\xC3"), std::string("\x80"), std::string("\xC0\xAF"),
        std::string("\xED\xA0\x80"), std::string("\xF4\x90\x80\x80")}) {
    auto request = ChatRequest(R"({"messages":[]})");
    request.headers.Add("X-Staple-Conversation", id);
    OpenAIChatRequest parsed;
    auto answer = ParseOpenAIChatRequest(request, parsed);
    ASSERT_TRUE(answer) << "accepted a conversation id that is not UTF-8";
    EXPECT_EQ(answer->status, 400);
    EXPECT_EQ(ErrorOf(*answer)["type"], "invalid_request_error");
  }
  auto request = ChatRequest(R"({"messages":[]})");
  request.headers.Add("X-Staple-Conversation", "caf\xC3\xA9-\xF0\x9F\x98\x80");
  OpenAIChatRequest parsed;
  EXPECT_FALSE(ParseOpenAIChatRequest(request, parsed));
  EXPECT_EQ(parsed.conversation_id, "caf\xC3\xA9-\xF0\x9F\x98\x80");
}

TEST(PassThroughTest, KeepsStatusBodyAndContentType) {
  upstream::Response upstream;
  upstream.status = 200;
  upstream.content_type = "application/json; charset=utf-8";
  upstream.body = R"({"id":"x"})";
  auto response = PassThrough(upstream);
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.body, upstream.body);
  EXPECT_EQ(response.headers.Get("Content-Type"), "application/json; charset=utf-8");
}

TEST(PassThroughTest, OpenAIErrorBodiesPassUnchanged) {
  upstream::Response upstream;
  upstream.status = 429;
  upstream.content_type = "application/json";
  upstream.body = R"({"error":{"message":"slow down","type":"rate_limit","code":null}})";
  upstream.headers = {{"retry-after", "3"}, {"x-other", "y"}};
  auto response = PassThrough(upstream);
  EXPECT_EQ(response.status, 429);
  EXPECT_EQ(response.body, upstream.body);
  EXPECT_EQ(response.headers.Get("Retry-After"), "3");
  EXPECT_FALSE(response.headers.Get("x-other"));
}

TEST(PassThroughTest, OtherErrorBodiesGetOpenAIShape) {
  upstream::Response upstream;
  upstream.status = 502;
  upstream.content_type = "text/html";
  upstream.body = "<h1>Bad gateway</h1>";
  auto response = PassThrough(upstream);
  EXPECT_EQ(response.status, 502);
  auto error = ErrorOf(response);
  EXPECT_NE(error["message"].get<std::string>().find("Bad gateway"), std::string::npos);
}

TEST(ProxyErrorTest, MapsKindsToStatuses) {
  EXPECT_EQ(ProxyError(MakeError(ErrorKind::kUpstream, "x")).status, 502);
  EXPECT_EQ(ProxyError(MakeError(ErrorKind::kTimeout, "x")).status, 504);
  EXPECT_EQ(ProxyError(MakeError(ErrorKind::kUnavailable, "x")).status, 503);
  EXPECT_EQ(ProxyError(MakeError(ErrorKind::kInternal, "x")).status, 500);
  EXPECT_EQ(ErrorOf(ProxyError(MakeError(ErrorKind::kTimeout, "late")))["message"], "late");
}

TEST(SeedStreamFlagTest, StreamMustBeABoolean) {
  http::Request request = ChatRequest(R"({"prompt":"hi","stream":true})");
  SeedRequest parsed;
  EXPECT_FALSE(ParseSeedRequest(request, parsed));
  EXPECT_TRUE(parsed.stream);
  SeedRequest plain;
  EXPECT_FALSE(ParseSeedRequest(ChatRequest(R"({"prompt":"hi","stream":null})"), plain));
  EXPECT_FALSE(plain.stream);
  for (const char* body : {R"({"prompt":"hi","stream":"true"})", R"({"prompt":"hi","stream":1})"}) {
    SeedRequest bad;
    auto answer = ParseSeedRequest(ChatRequest(body), bad);
    ASSERT_TRUE(answer) << body;
    EXPECT_EQ(answer->status, 400);
  }
}

}  // namespace
}  // namespace staple::api
