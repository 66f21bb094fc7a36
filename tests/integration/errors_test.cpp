// Client errors (400/404/405/413/415) and upstream failures (500) of the seed endpoint.

#include <gtest/gtest.h>

#include <string>

#include "support/gateway_test.h"

namespace staple::testing {
namespace {

using nlohmann::json;

class ErrorsTest : public GatewayTest {
 protected:
  std::size_t UpstreamChatRequests() const {
    return fake_.requests_to("POST", "/v1/chat/completions").size();
  }
};

// ---- request validation ---------------------------------------------------------------------

class MissingPromptTest : public ErrorsTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(MissingPromptTest, AnswersExactlyPromptIsRequired) {
  auto staple = StartStaple();
  HttpResponse response = client_.PostJson(staple->url() + "/openai-completion", GetParam());
  EXPECT_EQ(response.status, 400) << response.body;
  EXPECT_EQ(response.Json(), json({{"error", "Prompt is required"}})) << response.body;
  EXPECT_EQ(UpstreamChatRequests(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Bodies, MissingPromptTest,
                         ::testing::Values(R"({})", R"({"prompt": null})", R"({"prompt": ""})",
                                           R"({"user_id": "someone"})",
                                           R"({"user_id": "someone", "prompt": ""})"));

class MalformedBodyTest : public ErrorsTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(MalformedBodyTest, AnswersJsonError400) {
  auto staple = StartStaple();
  HttpResponse response = client_.PostJson(staple->url() + "/openai-completion", GetParam());
  EXPECT_EQ(response.status, 400) << response.body;
  json body = response.Json();
  ASSERT_TRUE(body.is_object()) << response.body;
  ASSERT_TRUE(body.contains("error") && body["error"].is_string()) << response.body;
  EXPECT_FALSE(body["error"].get<std::string>().empty());
  EXPECT_EQ(UpstreamChatRequests(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Bodies, MalformedBodyTest,
                         ::testing::Values("not json at all", "", "[]", R"("x")", "42",
                                           R"({"prompt": "hi")", R"({"prompt": 5})",
                                           R"({"prompt": true})", R"({"prompt": ["a", "b"]})",
                                           R"({"prompt": {"text": "hi"}})",
                                           R"({"prompt": "hi", "user_id": 7})",
                                           R"({"prompt": "hi", "user_id": ["u"]})"));

TEST_F(ErrorsTest, WrongContentTypeIs415) {
  auto staple = StartStaple();
  for (const std::string type : {"text/plain", "application/x-www-form-urlencoded"}) {
    HttpResponse response = client_.Request("POST", staple->url() + "/openai-completion",
                                            R"({"prompt": "hi"})", {{"Content-Type", type}});
    EXPECT_EQ(response.status, 415) << type << ": " << response.body;
    EXPECT_FALSE(ErrorMessage(response).empty()) << type << ": " << response.body;
  }
  EXPECT_EQ(UpstreamChatRequests(), 0u);
}

TEST_F(ErrorsTest, JsonContentTypeWithCharsetIsAccepted) {
  auto staple = StartStaple();
  HttpResponse response =
      client_.Request("POST", staple->url() + "/openai-completion", R"({"prompt": "hi"})",
                      {{"Content-Type", "application/json; charset=utf-8"}});
  EXPECT_EQ(response.status, 200) << response.body;
}

TEST_F(ErrorsTest, BodyOverOneMebibyteIs413) {
  auto staple = StartStaple();
  const std::string body = R"({"prompt": ")" + std::string(1024 * 1024, 'a') + R"("})";
  // Expect: 100-continue lets the server refuse before the body is sent.
  HttpResponse response =
      client_.PostJson(staple->url() + "/openai-completion", body, {{"Expect", "100-continue"}});
  EXPECT_EQ(response.status, 413) << response.error << " " << response.body.substr(0, 300);
  EXPECT_FALSE(ErrorMessage(response).empty()) << response.body.substr(0, 300);
  EXPECT_EQ(UpstreamChatRequests(), 0u);
}

TEST_F(ErrorsTest, GetOnCompletionIs405WithAllow) {
  auto staple = StartStaple();
  HttpResponse response = client_.Get(staple->url() + "/openai-completion");
  EXPECT_EQ(response.status, 405);
  auto allow = response.Header("Allow");
  ASSERT_TRUE(allow.has_value());
  EXPECT_NE(allow->find("POST"), std::string::npos) << *allow;
  EXPECT_FALSE(ErrorMessage(response).empty()) << response.body;
}

TEST_F(ErrorsTest, UnknownPathIs404Json) {
  auto staple = StartStaple();
  for (const std::string method : {"GET", "POST"}) {
    HttpResponse response = client_.Request(method, staple->url() + "/no/such/path", "",
                                            {{"Content-Type", "application/json"}});
    EXPECT_EQ(response.status, 404) << method;
    EXPECT_FALSE(ErrorMessage(response).empty()) << method << ": " << response.body;
  }
}

// ---- upstream failures ----------------------------------------------------------------------

class UpstreamFailureTest : public ErrorsTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(UpstreamFailureTest, Becomes500UpstreamErrorWithoutLeakingTheKey) {
  auto staple = StartStaple();
  HttpResponse response = Complete(*staple, "please fail " + GetParam());
  EXPECT_EQ(response.status, 500) << response.body;
  json body = response.Json();
  ASSERT_TRUE(body.is_object()) << response.body;
  EXPECT_EQ(body.value("type", ""), "upstream_error") << response.body;
  ASSERT_TRUE(body.contains("error") && body["error"].is_string()) << response.body;
  EXPECT_FALSE(body["error"].get<std::string>().empty());
  EXPECT_GE(UpstreamChatRequests(), 1u);

  EXPECT_EQ(response.body.find(kTestApiKey), std::string::npos);
  EXPECT_EQ(staple->Stderr().find(kTestApiKey), std::string::npos);
  EXPECT_EQ(staple->Stdout().find(kTestApiKey), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Faults, UpstreamFailureTest,
                         ::testing::Values("FAULT:status=500", "FAULT:status=503",
                                           "FAULT:status=400", "FAULT:invalid-json", "FAULT:drop"),
                         [](const ::testing::TestParamInfo<std::string>& param_info) {
                           std::string name;
                           for (char c : param_info.param.substr(6)) {
                             if (std::isalnum(static_cast<unsigned char>(c))) name += c;
                           }
                           return name;
                         });

TEST_F(ErrorsTest, HangingUpstreamTimesOut) {
  auto staple = StartStaple({{"STAPLE_UPSTREAM_TIMEOUT", "1"}, {"STAPLE_UPSTREAM_RETRIES", "0"}});
  HttpResponse response = Complete(*staple, "wait forever FAULT:hang");
  EXPECT_EQ(response.status, 500) << response.error << " " << response.body;
  json body = response.Json();
  ASSERT_TRUE(body.is_object()) << response.body;
  EXPECT_EQ(body.value("type", ""), "upstream_timeout") << response.body;
  EXPECT_FALSE(ErrorMessage(response).empty()) << response.body;
  EXPECT_EQ(response.body.find(kTestApiKey), std::string::npos);
  EXPECT_EQ(staple->Stderr().find(kTestApiKey), std::string::npos);
}

// A non-streaming answer arrives whole, so its first byte comes late: the first-byte timeout
// (time to first token of a stream) does not cut it off; the total timeout does.
TEST_F(ErrorsTest, SlowWholeAnswerIsNotAFirstByteTimeout) {
  auto staple = StartStaple({{"STAPLE_UPSTREAM_FIRST_BYTE_TIMEOUT", "0.3"},
                             {"STAPLE_UPSTREAM_TIMEOUT", "10"},
                             {"STAPLE_UPSTREAM_RETRIES", "0"}});
  HttpResponse seed = Complete(*staple, "think FAULT:sleep=1000");
  EXPECT_EQ(seed.status, 200) << seed.error << " " << seed.body;
  HttpResponse v1 = client_.PostJson(
      staple->url() + "/v1/chat/completions",
      json{{"messages", {{{"role", "user"}, {"content", "think FAULT:sleep=1000"}}}}});
  EXPECT_EQ(v1.status, 200) << v1.error << " " << v1.body;
  EXPECT_EQ(fake_.chat_bodies().size(), 2u);
}

TEST_F(ErrorsTest, FailedTurnIsNotPartOfTheHistory) {
  auto staple = StartStaple();
  json turn = Turn(*staple, "first");
  ASSERT_FALSE(turn.empty());
  const std::string user_id = turn["user_id"];

  HttpResponse failed = Complete(*staple, "broken FAULT:status=500", user_id);
  ASSERT_EQ(failed.status, 500) << failed.body;

  turn = Turn(*staple, "second", user_id);
  EXPECT_EQ(turn.value("completion", ""), "echo(3): second");
  const json expected = json::array({
      {{"role", "user"}, {"content", "first"}},
      {{"role", "assistant"}, {"content", "echo(1): first"}},
      {{"role", "user"}, {"content", "second"}},
  });
  EXPECT_EQ(LastUpstreamMessages(), expected);

  const json rows =
      QuerySqlite(staple->database_path(), "SELECT role, content FROM messages WHERE user_id = '" +
                                               user_id + "' ORDER BY id");
  ASSERT_EQ(rows.size(), 4u) << rows.dump();
  for (const json& row : rows) {
    EXPECT_EQ(row.value("content", "").find("FAULT:"), std::string::npos) << row.dump();
  }
}

TEST_F(ErrorsTest, FlakyUpstreamIsRetried) {
  auto staple = StartStaple({{"STAPLE_UPSTREAM_RETRIES", "2"}});
  const std::string prompt = "try twice FAULT:flaky=errors-test-flaky-1";
  json turn = Turn(*staple, prompt);
  EXPECT_EQ(turn.value("completion", ""), "echo(1): " + prompt);
  EXPECT_EQ(UpstreamChatRequests(), 2u);
}

TEST_F(ErrorsTest, NoRetryWhenRetriesAreZero) {
  auto staple = StartStaple({{"STAPLE_UPSTREAM_RETRIES", "0"}});
  HttpResponse response = Complete(*staple, "once FAULT:flaky=errors-test-flaky-2");
  EXPECT_EQ(response.status, 500) << response.body;
  const json body = response.Json();
  ASSERT_TRUE(body.is_object()) << response.body;
  EXPECT_EQ(body.value("type", ""), "upstream_error") << response.body;
  EXPECT_EQ(UpstreamChatRequests(), 1u);
}

}  // namespace
}  // namespace staple::testing
