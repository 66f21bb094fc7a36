#include <gtest/gtest.h>

#include "api/errors.h"
#include "api/handlers.h"

namespace staple::api {
namespace {

http::Request JsonRequest(std::string body, std::string content_type = "application/json") {
  http::Request request;
  request.method = "POST";
  request.path = "/openai-completion";
  if (!content_type.empty()) request.headers.Add("Content-Type", std::move(content_type));
  request.body = std::move(body);
  return request;
}

nlohmann::json BodyOf(const http::Response& response) {
  return nlohmann::json::parse(response.body);
}

TEST(SeedRequestTest, AcceptsPromptAndOptionalUserId) {
  SeedRequest parsed;
  EXPECT_FALSE(ParseSeedRequest(JsonRequest(R"({"prompt":"hi"})"), parsed));
  EXPECT_EQ(parsed.prompt, "hi");
  EXPECT_EQ(parsed.user_id, "");
  SeedRequest with_user;
  EXPECT_FALSE(ParseSeedRequest(
      JsonRequest(R"({"prompt":"hi","user_id":"u1"})", "application/json; charset=utf-8"),
      with_user));
  EXPECT_EQ(with_user.user_id, "u1");
}

TEST(SeedRequestTest, MissingNullOrEmptyPromptIsTheSeedMessage) {
  for (const char* body :
       {R"({})", R"({"prompt":null})", R"({"prompt":""})", R"({"user_id":"x"})"}) {
    SeedRequest parsed;
    auto error = ParseSeedRequest(JsonRequest(body), parsed);
    ASSERT_TRUE(error) << body;
    EXPECT_EQ(error->status, 400);
    EXPECT_EQ(BodyOf(*error), nlohmann::json({{"error", "Prompt is required"}})) << body;
  }
}

TEST(SeedRequestTest, BadBodiesAre400WithAMessage) {
  for (const char* body : {"", "not json", "[]", "\"text\"", "42", R"({"prompt":5})",
                           R"({"prompt":["a"]})", R"({"prompt":"a","user_id":7})"}) {
    SeedRequest parsed;
    auto error = ParseSeedRequest(JsonRequest(body), parsed);
    ASSERT_TRUE(error) << body;
    EXPECT_EQ(error->status, 400) << body;
    auto json = BodyOf(*error);
    ASSERT_TRUE(json["error"].is_string()) << body;
    EXPECT_FALSE(json["error"].get<std::string>().empty());
  }
}

TEST(SeedRequestTest, OverlongUserIdIsRejected) {
  SeedRequest parsed;
  auto error = ParseSeedRequest(
      JsonRequest(nlohmann::json({{"prompt", "x"}, {"user_id", std::string(300, 'u')}}).dump()),
      parsed);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->status, 400);
}

TEST(SeedRequestTest, WrongOrMissingContentTypeIs415) {
  for (const char* type : {"text/plain", "application/x-www-form-urlencoded", ""}) {
    SeedRequest parsed;
    auto error = ParseSeedRequest(JsonRequest(R"({"prompt":"hi"})", type), parsed);
    ASSERT_TRUE(error) << type;
    EXPECT_EQ(error->status, 415) << type;
  }
}

TEST(ErrorShapeTest, V1PathsUseOpenAIShape) {
  auto v1 = BodyOf(FormatError(404, "Not found", "/v1/nope"));
  EXPECT_EQ(v1["error"]["message"], "Not found");
  EXPECT_EQ(v1["error"]["type"], "not_found_error");
  auto seed = BodyOf(FormatError(404, "Not found", "/nope"));
  EXPECT_EQ(seed, nlohmann::json({{"error", "Not found"}}));
}

TEST(PathSegmentTest, PercentDecoding) {
  EXPECT_EQ(DecodePathSegment("a%20b"), "a b");
  EXPECT_EQ(DecodePathSegment("%E4%BD%A0"), "你");
  EXPECT_EQ(DecodePathSegment("100%"), "100%");
  EXPECT_EQ(DecodePathSegment("%zz"), "%zz");
}

}  // namespace
}  // namespace staple::api
