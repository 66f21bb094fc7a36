// The seed README's contract over real HTTP: the curl examples, conversations, configuration,
// request ids and the access log.

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "support/gateway_test.h"

namespace staple::testing {
namespace {

using nlohmann::json;

class SeedContractTest : public GatewayTest {};

// Runs a shell command line exactly as written (proxies off) and returns its stdout.
std::string RunShell(const std::string& command_line) {
  ProcessOptions process;
  process.executable = "/bin/sh";
  process.args = {"-c", command_line};
  process.unset_env = {"http_proxy", "https_proxy", "all_proxy",
                       "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"};
  process.env = {{"NO_PROXY", "*"}, {"no_proxy", "*"}};
  RunResult result = RunToCompletion(std::move(process), std::chrono::seconds(30));
  EXPECT_TRUE(result.status && result.status->Success())
      << command_line << "\n"
      << (result.status ? result.status->ToString() : "timeout") << "\n"
      << result.err;
  return result.out;
}

TEST_F(SeedContractTest, ReadmeCurlExamplesWorkAsWritten) {
  auto staple = StartStaple();

  // "Example: Initial Request", with the README's host and port replaced by the test server's.
  const std::string first = RunShell(
      R"(curl -X POST -H "Content-Type: application/json" -d '{"prompt": "Hello, how are you?"}' )" +
      staple->url() + "/openai-completion");
  json answer = json::parse(first, nullptr, false);
  ASSERT_TRUE(answer.is_object()) << first;
  ASSERT_TRUE(answer.contains("user_id") && answer["user_id"].is_string()) << first;
  const std::string user_id = answer["user_id"];
  EXPECT_TRUE(IsUuidV7(user_id)) << user_id;
  EXPECT_EQ(answer.value("completion", ""), "echo(1): Hello, how are you?");

  // "Example: Continuing the Conversation" with the user_id returned above.
  const std::string second =
      RunShell(R"(curl -X POST -H "Content-Type: application/json" -d '{"user_id": ")" + user_id +
               R"(", "prompt": "Tell me a joke"}' )" + staple->url() + "/openai-completion");
  answer = json::parse(second, nullptr, false);
  ASSERT_TRUE(answer.is_object()) << second;
  EXPECT_EQ(answer.value("user_id", ""), user_id);
  EXPECT_EQ(answer.value("completion", ""), "echo(3): Tell me a joke");

  const json expected = json::array({
      {{"role", "user"}, {"content", "Hello, how are you?"}},
      {{"role", "assistant"}, {"content", "echo(1): Hello, how are you?"}},
      {{"role", "user"}, {"content", "Tell me a joke"}},
  });
  EXPECT_EQ(LastUpstreamMessages(), expected);
}

TEST_F(SeedContractTest, NewConversationsGetDistinctUuidV7) {
  auto staple = StartStaple();
  json a = Turn(*staple, "first");
  json b = Turn(*staple, "second");
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  EXPECT_TRUE(IsUuidV7(a["user_id"])) << a["user_id"];
  EXPECT_TRUE(IsUuidV7(b["user_id"])) << b["user_id"];
  EXPECT_NE(a["user_id"], b["user_id"]);
  EXPECT_EQ(a["completion"], "echo(1): first");
  EXPECT_EQ(b["completion"], "echo(1): second");
}

TEST_F(SeedContractTest, StoredConversationIsSentBeforeTheNewPrompt) {
  auto staple = StartStaple();
  json turn = Turn(*staple, "one");
  ASSERT_FALSE(turn.empty());
  const std::string user_id = turn["user_id"];
  EXPECT_EQ(turn["completion"], "echo(1): one");

  turn = Turn(*staple, "two", user_id);
  EXPECT_EQ(turn.value("user_id", ""), user_id);
  EXPECT_EQ(turn.value("completion", ""), "echo(3): two");

  turn = Turn(*staple, "three", user_id);
  EXPECT_EQ(turn.value("completion", ""), "echo(5): three");

  const json expected = json::array({
      {{"role", "user"}, {"content", "one"}},
      {{"role", "assistant"}, {"content", "echo(1): one"}},
      {{"role", "user"}, {"content", "two"}},
      {{"role", "assistant"}, {"content", "echo(3): two"}},
      {{"role", "user"}, {"content", "three"}},
  });
  EXPECT_EQ(LastUpstreamMessages(), expected);
}

TEST_F(SeedContractTest, UnknownUserIdStartsAnEmptyConversation) {
  auto staple = StartStaple();
  json turn = Turn(*staple, "hello", "my-own-id-42");
  EXPECT_EQ(turn.value("user_id", ""), "my-own-id-42");
  EXPECT_EQ(turn.value("completion", ""), "echo(1): hello");
  turn = Turn(*staple, "again", "my-own-id-42");
  EXPECT_EQ(turn.value("completion", ""), "echo(3): again");
}

TEST_F(SeedContractTest, SystemPromptIsSentFirst) {
  auto staple = StartStaple({{"STAPLE_SYSTEM_PROMPT", "You are terse."}});
  json turn = Turn(*staple, "hi");
  ASSERT_FALSE(turn.empty());
  EXPECT_EQ(turn["completion"], "echo(2): hi");
  turn = Turn(*staple, "more", turn["user_id"].get<std::string>());
  EXPECT_EQ(turn.value("completion", ""), "echo(4): more");

  const json messages = LastUpstreamMessages();
  ASSERT_EQ(messages.size(), 4u) << messages.dump();
  EXPECT_EQ(messages[0], json({{"role", "system"}, {"content", "You are terse."}}));
  EXPECT_EQ(messages[1], json({{"role", "user"}, {"content", "hi"}}));
}

TEST_F(SeedContractTest, ApiKeyAndModelReachTheUpstream) {
  auto staple = StartStaple({{"OPENAI_MODEL", "my-test-model"}});
  Turn(*staple, "hi");
  auto requests = fake_.requests_to("POST", "/v1/chat/completions");
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0]["headers"].value("authorization", ""),
            std::string("Bearer ") + kTestApiKey);
  json body = json::parse(requests[0].value("body", ""), nullptr, false);
  ASSERT_TRUE(body.is_object());
  EXPECT_EQ(body.value("model", ""), "my-test-model");
}

TEST_F(SeedContractTest, DefaultModelIsGpt4oMini) {
  auto staple = StartStaple();
  Turn(*staple, "hi");
  auto bodies = fake_.chat_bodies();
  ASSERT_EQ(bodies.size(), 1u);
  EXPECT_EQ(bodies[0].value("model", ""), "gpt-4o-mini");
}

TEST_F(SeedContractTest, TwoUsersAreIsolated) {
  auto staple = StartStaple();
  json a = Turn(*staple, "I am A");
  ASSERT_FALSE(a.empty());
  const std::string user_a = a["user_id"];
  EXPECT_EQ(Turn(*staple, "A again", user_a).value("completion", ""), "echo(3): A again");

  json b = Turn(*staple, "I am B");
  ASSERT_FALSE(b.empty());
  EXPECT_EQ(b["completion"], "echo(1): I am B");
  EXPECT_EQ(LastUpstreamMessages().size(), 1u);
  EXPECT_EQ(Turn(*staple, "B again", b["user_id"].get<std::string>()).value("completion", ""),
            "echo(3): B again");

  EXPECT_EQ(Turn(*staple, "A third", user_a).value("completion", ""), "echo(5): A third");
  for (const auto& message : LastUpstreamMessages()) {
    EXPECT_EQ(message.value("content", "").find("B"), std::string::npos) << message.dump();
  }
}

TEST_F(SeedContractTest, HealthzAnswersJson) {
  auto staple = StartStaple();
  HttpResponse response = client_.Get(staple->url() + "/healthz");
  EXPECT_EQ(response.status, 200);
  EXPECT_TRUE(response.Json().is_object()) << response.body;
  EXPECT_TRUE(response.Header("X-Request-Id").has_value());
}

TEST_F(SeedContractTest, EveryResponseCarriesARequestId) {
  auto staple = StartStaple();
  const std::string url = staple->url();
  std::vector<HttpResponse> responses = {
      Complete(*staple, "hi"),
      client_.PostJson(url + "/openai-completion", std::string("{}")),
      client_.Get(url + "/openai-completion"),
      client_.Get(url + "/no-such-path"),
      client_.Get(url + "/healthz"),
  };
  std::set<std::string> ids;
  for (const auto& response : responses) {
    auto id = response.Header("X-Request-Id");
    ASSERT_TRUE(id.has_value()) << "status " << response.status << " " << response.body;
    EXPECT_FALSE(id->empty());
    ids.insert(*id);
  }
  EXPECT_EQ(ids.size(), responses.size()) << "request ids repeat";

  // A client's own id is echoed, on success and on errors.
  const Headers mine = {{"X-Request-Id", "it-req-0123456789"}};
  EXPECT_EQ(Complete(*staple, "hi", std::nullopt, mine).Header("X-Request-Id"),
            "it-req-0123456789");
  EXPECT_EQ(client_.Get(url + "/no-such-path", mine).Header("X-Request-Id"), "it-req-0123456789");
}

TEST_F(SeedContractTest, DotEnvFileConfiguresTheServer) {
  TempDir dir;
  WriteFile(dir / ".env", "OPENAI_API_KEY=" + std::string(kTestApiKey) + "\nOPENAI_BASE_URL=" +
                              fake_.base_url() + "\nOPENAI_MODEL=model-from-dotenv\n");
  StapleOptions options;  // no upstream variables in the environment at all
  options.working_dir = dir.path();
  StapleServer staple(options);
  EXPECT_EQ(Turn(staple, "hi").value("completion", ""), "echo(1): hi");
  auto requests = fake_.requests_to("POST", "/v1/chat/completions");
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(json::parse(requests[0].value("body", "")).value("model", ""), "model-from-dotenv");
  EXPECT_EQ(requests[0]["headers"].value("authorization", ""),
            std::string("Bearer ") + kTestApiKey);
}

TEST_F(SeedContractTest, EnvironmentWinsOverDotEnv) {
  TempDir dir;
  WriteFile(dir / ".env", "OPENAI_MODEL=model-from-dotenv\n");
  auto staple = StartStaple({{"OPENAI_MODEL", "model-from-env"}}, dir.path());
  Turn(*staple, "hi");
  auto bodies = fake_.chat_bodies();
  ASSERT_EQ(bodies.size(), 1u);
  EXPECT_EQ(bodies[0].value("model", ""), "model-from-env");
}

TEST_F(SeedContractTest, FlagsWinOverEnvironment) {
  const std::uint16_t env_port = FreePort();
  // StapleServer passes --port; STAPLE_PORT names another port that must stay unused.
  auto staple = StartStaple({{"STAPLE_PORT", std::to_string(env_port)}});
  ASSERT_NE(staple->port(), env_port);
  EXPECT_EQ(client_.Get(staple->url() + "/healthz").status, 200);
  HttpClient quick(std::chrono::seconds(2));
  EXPECT_EQ(quick.Get("http://127.0.0.1:" + std::to_string(env_port) + "/healthz").status, 0);
}

struct BadSetting {
  std::string name;
  std::string value;
};

class InvalidConfigurationTest : public ::testing::TestWithParam<BadSetting> {};

TEST_P(InvalidConfigurationTest, StopsStartupNamingTheVariable) {
  const BadSetting& bad = GetParam();
  TempDir dir;
  std::map<std::string, std::string> env = {{"OPENAI_API_KEY", kTestApiKey},
                                            {"OPENAI_BASE_URL", "http://127.0.0.1:9/v1"},
                                            {bad.name, bad.value}};
  RunResult result = RunStaple(
      {"serve", "--host", "127.0.0.1", "--port", std::to_string(FreePort())}, env, dir.path());
  ASSERT_TRUE(result.status.has_value())
      << "staple kept running with " << bad.name << "=" << bad.value << "\nstderr:\n"
      << result.err;
  EXPECT_FALSE(result.status->Success()) << result.status->ToString();
  bool named = false;
  for (const auto& line : SplitLines(result.err))
    named = named || line.find(bad.name) != std::string::npos;
  EXPECT_TRUE(named) << "no stderr line names " << bad.name << ":\n" << result.err;
  EXPECT_EQ(result.err.find(kTestApiKey), std::string::npos);
  EXPECT_EQ(result.out.find(kTestApiKey), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(
    Settings, InvalidConfigurationTest,
    ::testing::Values(BadSetting{"STAPLE_HISTORY_MAX_MESSAGES", "lots"},
                      BadSetting{"STAPLE_HISTORY_MAX_CHARS", "many"},
                      BadSetting{"STAPLE_UPSTREAM_TIMEOUT", "soon"},
                      BadSetting{"STAPLE_UPSTREAM_RETRIES", "-1"},
                      BadSetting{"STAPLE_LOG_FORMAT", "xml"},
                      BadSetting{"STAPLE_COMPLETION_LIMIT", "ten per fortnight"},
                      BadSetting{"STAPLE_DEFAULT_LIMITS", "lots per day"},
                      BadSetting{"STAPLE_DATABASE_URL", "mysql://localhost/chat"},
                      BadSetting{"STAPLE_TRUSTED_PROXIES", "not-an-address"}),
    [](const ::testing::TestParamInfo<BadSetting>& param_info) { return param_info.param.name; });

// The access log line of the request whose id is `request_id`, waiting for it to be written.
std::string AccessLine(StapleServer& staple, const std::string& request_id) {
  std::string found;
  WaitUntil(
      [&] {
        for (const auto& line : SplitLines(staple.Stderr())) {
          if (line.find(request_id) != std::string::npos) {
            found = line;
            return true;
          }
        }
        return false;
      },
      std::chrono::seconds(5));
  return found;
}

TEST_F(SeedContractTest, TextAccessLogNamesMethodPathStatusAndRequestId) {
  auto staple = StartStaple({{"STAPLE_LOG_FORMAT", "text"}});
  ASSERT_EQ(Complete(*staple, "hi", std::nullopt, {{"X-Request-Id", "log-text-ok-1"}}).status, 200);
  ASSERT_EQ(client_.Get(staple->url() + "/nowhere", {{"X-Request-Id", "log-text-404-1"}}).status,
            404);

  const std::string ok = AccessLine(*staple, "log-text-ok-1");
  ASSERT_FALSE(ok.empty()) << staple->Stderr();
  EXPECT_NE(ok.find("POST"), std::string::npos) << ok;
  EXPECT_NE(ok.find("/openai-completion"), std::string::npos) << ok;
  EXPECT_NE(ok.find("200"), std::string::npos) << ok;

  const std::string missing = AccessLine(*staple, "log-text-404-1");
  ASSERT_FALSE(missing.empty()) << staple->Stderr();
  EXPECT_NE(missing.find("GET"), std::string::npos) << missing;
  EXPECT_NE(missing.find("/nowhere"), std::string::npos) << missing;
  EXPECT_NE(missing.find("404"), std::string::npos) << missing;
  EXPECT_EQ(staple->Stderr().find(kTestApiKey), std::string::npos);
}

TEST_F(SeedContractTest, JsonAccessLogLinesAreJsonObjects) {
  auto staple = StartStaple({{"STAPLE_LOG_FORMAT", "json"}});
  ASSERT_EQ(Complete(*staple, "hi", std::nullopt, {{"X-Request-Id", "log-json-ok-1"}}).status, 200);
  ASSERT_EQ(client_.Get(staple->url() + "/nowhere", {{"X-Request-Id", "log-json-404-1"}}).status,
            404);

  struct Expected {
    std::string id, method, path;
    int status;
  };
  for (const Expected& want : {Expected{"log-json-ok-1", "POST", "/openai-completion", 200},
                               Expected{"log-json-404-1", "GET", "/nowhere", 404}}) {
    const std::string line = AccessLine(*staple, want.id);
    ASSERT_FALSE(line.empty()) << staple->Stderr();
    json entry = json::parse(line, nullptr, false);
    ASSERT_TRUE(entry.is_object()) << line;
    EXPECT_EQ(entry.value("method", ""), want.method) << line;
    EXPECT_EQ(entry.value("path", ""), want.path) << line;
    EXPECT_EQ(entry.value("request_id", ""), want.id) << line;
    ASSERT_TRUE(entry.contains("status")) << line;
    const json& status = entry["status"];
    EXPECT_TRUE((status.is_number_integer() && status.get<int>() == want.status) ||
                (status.is_string() && status.get<std::string>() == std::to_string(want.status)))
        << line;
  }
  EXPECT_EQ(staple->Stderr().find(kTestApiKey), std::string::npos);
}

}  // namespace
}  // namespace staple::testing
