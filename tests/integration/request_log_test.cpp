// The request's log line (STAPLE_LOG_FORMAT=json): the access line says which conversation,
// model and upstream, how long the upstream took and the tokens; every failed request gets a warn
// line with its reason (upstream status and message, timeout, broken stream, invalid answer),
// also with the access log off; the API key never shows.

#include <gtest/gtest.h>

#include <optional>
#include <string>

#include "support/gateway_test.h"

namespace staple::testing {
namespace {

using nlohmann::json;

class RequestLogTest : public GatewayTest {
 protected:
  std::unique_ptr<StapleServer> Start(std::map<std::string, std::string> env = {}) {
    env.emplace("STAPLE_LOG_FORMAT", "json");
    env.emplace("STAPLE_UPSTREAM_RETRIES", "0");
    env.emplace("STAPLE_UPSTREAM_TIMEOUT", "1");
    return StartStaple(env);
  }

  // The log line of the request with X-Request-Id `id`, once it is written (the server logs it
  // after the answer went out), or std::nullopt.
  static std::optional<json> LineOf(StapleServer& staple, const std::string& id, bool wait = true) {
    std::optional<json> found;
    WaitUntil(
        [&] {
          for (const auto& text : SplitLines(staple.Stderr())) {
            const auto line = json::parse(text, nullptr, false);
            if (line.is_object() && line.value("request_id", "") == id &&
                (line.value("msg", "") == "request" || line.value("msg", "") == "request failed")) {
              found = line;
              return true;
            }
          }
          return false;
        },
        wait ? std::chrono::milliseconds(5000) : std::chrono::milliseconds(0));
    return found;
  }

  HttpResponse Chat(StapleServer& staple, const std::string& id, const std::string& prompt,
                    const Headers& extra = {}) {
    Headers headers = {{"X-Request-Id", id}};
    headers.insert(headers.end(), extra.begin(), extra.end());
    return client_.PostJson(
        staple.url() + "/v1/chat/completions",
        json{{"model", "gpt-4o-mini"}, {"messages", {{{"role", "user"}, {"content", prompt}}}}},
        headers);
  }
};

TEST_F(RequestLogTest, TheAccessLineNamesTheConversationModelUpstreamTimeAndTokens) {
  auto staple = Start();
  HttpResponse answer = Chat(*staple, "req-ok", "hello there", {{"X-Staple-Conversation", "c-1"}});
  ASSERT_EQ(answer.status, 200) << answer.body;
  const auto line = LineOf(*staple, "req-ok");
  ASSERT_TRUE(line.has_value()) << staple->Stderr();
  EXPECT_EQ(line->value("level", ""), "info") << *line;
  EXPECT_EQ(line->value("msg", ""), "request") << *line;
  EXPECT_EQ(line->value("status", 0), 200) << *line;
  EXPECT_EQ(line->value("conversation", ""), "c-1") << *line;
  EXPECT_EQ(line->value("model", ""), "gpt-4o-mini") << *line;
  ASSERT_TRUE(line->contains("upstream_ms")) << *line;
  EXPECT_GE((*line)["upstream_ms"].get<double>(), 0) << *line;
  const json usage = answer.Json()["usage"];
  EXPECT_EQ(line->value("prompt_tokens", -1), usage.value("prompt_tokens", -2)) << *line;
  EXPECT_EQ(line->value("completion_tokens", -1), usage.value("completion_tokens", -2)) << *line;
  EXPECT_FALSE(line->contains("error")) << *line;

  // The seed endpoint's line names its conversation (the user_id) too.
  HttpResponse seed =
      Complete(*staple, "hi", std::string("seed-user"), {{"X-Request-Id", "req-seed"}});
  ASSERT_EQ(seed.status, 200) << seed.body;
  const auto seed_line = LineOf(*staple, "req-seed");
  ASSERT_TRUE(seed_line.has_value()) << staple->Stderr();
  EXPECT_EQ(seed_line->value("conversation", ""), "seed-user") << *seed_line;
  EXPECT_GE(seed_line->value("completion_tokens", -1), 0) << *seed_line;
}

TEST_F(RequestLogTest, TheConfigurationLineNamesOnlyWhatDiffersFromTheDefaults) {
  auto staple = Start();
  std::optional<json> configuration;
  for (const auto& text : SplitLines(staple->Stderr())) {
    const auto line = json::parse(text, nullptr, false);
    if (line.is_object() && line.value("msg", "") == "configuration") configuration = line;
  }
  ASSERT_TRUE(configuration.has_value()) << staple->Stderr();
  EXPECT_EQ(configuration->value("STAPLE_LOG_FORMAT", ""), "json") << *configuration;
  EXPECT_EQ(configuration->value("STAPLE_UPSTREAM_RETRIES", ""), "0") << *configuration;
  EXPECT_EQ(configuration->value("OPENAI_BASE_URL", ""), fake_.base_url()) << *configuration;
  EXPECT_FALSE(configuration->contains("STAPLE_SQLITE_SYNCHRONOUS")) << *configuration;
  EXPECT_FALSE(configuration->contains("STAPLE_DEFAULT_LIMITS")) << *configuration;
  EXPECT_GT(configuration->value("settings_at_default", 0), 25) << *configuration;
  EXPECT_EQ(configuration->dump().find(kTestApiKey), std::string::npos);
}

TEST_F(RequestLogTest, EachKindOfUpstreamFailureIsAWarnLineWithItsReason) {
  auto staple = Start();
  struct Case {
    std::string id;
    std::string prompt;
    int status;
    std::string reason;  // what the error field must hold
  };
  const Case cases[] = {
      {"req-503", "FAULT:status=503 busy", 503, "upstream answered 503"},
      {"req-hang", "FAULT:hang", 504, "time"},
      {"req-invalid", "FAULT:invalid-json", 502, "invalid completion body"},
  };
  for (const auto& c : cases) {
    HttpResponse answer = Chat(*staple, c.id, c.prompt);
    EXPECT_EQ(answer.status, c.status) << c.id << ": " << answer.body;
    const auto line = LineOf(*staple, c.id);
    ASSERT_TRUE(line.has_value()) << c.id << ": " << staple->Stderr();
    EXPECT_EQ(line->value("level", ""), "warn") << *line;
    EXPECT_EQ(line->value("msg", ""), "request failed") << *line;
    EXPECT_EQ(line->value("status", 0), c.status) << *line;
    EXPECT_NE(line->value("error", "").find(c.reason), std::string::npos) << *line;
  }

  // A stream that breaks after its first events: the status went out as 200, the line says why.
  StreamResponse broken = client_.Stream(
      "POST", staple->url() + "/v1/chat/completions",
      json{{"model", "gpt-4o-mini"},
           {"stream", true},
           {"messages", {{{"role", "user"}, {"content", "FAULT:stream-drop-after=2 a b c d e"}}}}}
          .dump(),
      {{"Content-Type", "application/json"}, {"X-Request-Id", "req-cut"}});
  EXPECT_EQ(broken.status, 200);
  const auto cut = LineOf(*staple, "req-cut");
  ASSERT_TRUE(cut.has_value()) << staple->Stderr();
  EXPECT_EQ(cut->value("level", ""), "warn") << *cut;
  EXPECT_EQ(cut->value("status", 0), 200) << *cut;
  EXPECT_FALSE(cut->value("error", "").empty()) << *cut;

  // The seed endpoint's 500 says why as well.
  HttpResponse seed =
      Complete(*staple, "FAULT:status=500", std::nullopt, {{"X-Request-Id", "req-seed-500"}});
  EXPECT_EQ(seed.status, 500) << seed.body;
  const auto seed_line = LineOf(*staple, "req-seed-500");
  ASSERT_TRUE(seed_line.has_value()) << staple->Stderr();
  EXPECT_EQ(seed_line->value("level", ""), "warn") << *seed_line;
  EXPECT_NE(seed_line->value("error", "").find("upstream answered 500"), std::string::npos)
      << *seed_line;

  EXPECT_EQ(staple->Stderr().find(kTestApiKey), std::string::npos);
}

TEST_F(RequestLogTest, FailuresAreLoggedWithTheAccessLogOff) {
  auto staple = Start({{"STAPLE_ACCESS_LOG", "false"}});
  ASSERT_EQ(Chat(*staple, "req-quiet", "hello").status, 200);
  ASSERT_EQ(Chat(*staple, "req-loud", "FAULT:status=502").status, 502);
  const auto loud = LineOf(*staple, "req-loud");
  ASSERT_TRUE(loud.has_value()) << staple->Stderr();
  EXPECT_EQ(loud->value("level", ""), "warn") << *loud;
  // The failure's line was written after the success's: had the success been logged, it would
  // be there by now.
  EXPECT_FALSE(LineOf(*staple, "req-quiet", /*wait=*/false).has_value()) << staple->Stderr();
}

}  // namespace
}  // namespace staple::testing
