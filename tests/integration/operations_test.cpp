// Conversations API, readiness, metrics and the playground page, over real HTTP.
#include <gtest/gtest.h>

#include "support/gateway_test.h"

namespace staple::testing {
namespace {

class OperationsTest : public GatewayTest {};

// A second Staple on a port that one already serves must not start (SO_REUSEPORT would otherwise
// let the kernel split the traffic between the two); the first keeps serving.
TEST_F(OperationsTest, ABusyPortIsAStartUpError) {
  auto first = StartStaple();
  TempDir dir;
  const std::string port = std::to_string(first->port());
  auto second =
      RunStaple({"serve", "--host", "127.0.0.1", "--port", port}, UpstreamEnv(fake_), dir.path());
  ASSERT_TRUE(second.status.has_value()) << "the second instance kept running";
  EXPECT_FALSE(second.status->Success());
  EXPECT_NE(second.err.find("127.0.0.1:" + port), std::string::npos) << second.err;
  EXPECT_NE(second.err.find("already in use"), std::string::npos) << second.err;
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Turn(*first, "still here").is_object(), true);
}

// Configuration mistakes stop start-up with exit code 2 and one line that names the mistake: a
// missing --env-file (only the implicit ./.env may be absent), a bad flag by its flag; under
// STAPLE_LOG_FORMAT=json the line is JSON like every other.
TEST_F(OperationsTest, StartUpMistakesAreNamedInTheLogFormatAsked) {
  TempDir dir;
  auto missing = RunStaple({"serve", "--port", "0", "--env-file", "missing.env"},
                           UpstreamEnv(fake_), dir.path());
  ASSERT_TRUE(missing.status.has_value()) << "it started without its --env-file";
  EXPECT_EQ(missing.status->code, 2) << missing.err;
  EXPECT_NE(missing.err.find("--env-file missing.env: cannot read the file"), std::string::npos)
      << missing.err;

  auto flag =
      RunStaple({"serve", "--port", "0", "--threads", "many"}, UpstreamEnv(fake_), dir.path());
  ASSERT_TRUE(flag.status.has_value());
  EXPECT_EQ(flag.status->code, 2) << flag.err;
  EXPECT_NE(flag.err.find("invalid --threads='many'"), std::string::npos) << flag.err;

  auto env = UpstreamEnv(fake_);
  env["STAPLE_LOG_FORMAT"] = "json";
  env["STAPLE_PORT"] = "not-a-port";
  auto json_mode = RunStaple({"serve"}, env, dir.path());
  ASSERT_TRUE(json_mode.status.has_value());
  EXPECT_EQ(json_mode.status->code, 2) << json_mode.err;
  const auto lines = SplitLines(json_mode.err);
  ASSERT_EQ(lines.size(), 1u) << json_mode.err;
  const auto line = nlohmann::json::parse(lines[0], nullptr, false);
  ASSERT_TRUE(line.is_object()) << json_mode.err;
  EXPECT_EQ(line.value("level", ""), "error");
  EXPECT_NE(line.value("error", "").find("invalid STAPLE_PORT='not-a-port'"), std::string::npos)
      << json_mode.err;
}

// DNS rebinding: without client keys, a request addressed to another name (a page on
// evil.example whose name now resolves to 127.0.0.1) is refused before anything is read or spent.
TEST_F(OperationsTest, WithoutKeysOnlyRequestsAddressedToLocalhostAreServed) {
  auto staple = StartStaple();
  Turn(*staple, "stored", std::string("victim"));
  const Headers rebound = {{"Host", "evil.example:" + std::to_string(staple->port())}};
  HttpResponse read = client_.Get(staple->url() + "/users/victim/messages", rebound);
  EXPECT_EQ(read.status, 403);
  EXPECT_EQ(read.body.find("stored"), std::string::npos);
  HttpResponse spend = Complete(*staple, "spend the key", std::nullopt, rebound);
  EXPECT_EQ(spend.status, 403);
  Headers json_rebound = rebound;
  json_rebound.emplace_back("Content-Type", "application/json");
  HttpResponse chat =
      client_.Request("POST", staple->url() + "/v1/chat/completions",
                      R"({"model":"m","messages":[{"role":"user","content":"hi"}]})", json_rebound);
  EXPECT_EQ(chat.status, 403);
  EXPECT_EQ(chat.Json()["error"]["code"], "host_not_allowed");
  EXPECT_EQ(fake_.chat_bodies().size(), 1u);  // only the first, legitimate turn
  const Headers named = {{"Host", "localhost:" + std::to_string(staple->port())}};
  EXPECT_EQ(client_.Get(staple->url() + "/users/victim/messages", named).status, 200);

  auto listed = StartStaple({{"STAPLE_ALLOWED_HOSTS", "gateway.internal"}});
  const Headers allowed = {{"Host", "gateway.internal:" + std::to_string(listed->port())}};
  EXPECT_EQ(client_.Get(listed->url() + "/users/victim/messages", allowed).status, 200);
}

TEST_F(OperationsTest, MessagesArePagedOldestFirstAndCanBeDeleted) {
  auto staple = StartStaple({{"STAPLE_COMPLETION_LIMIT", ""}});
  const auto first = Turn(*staple, "one");
  const std::string user = first["user_id"];
  Turn(*staple, "two", user);
  Turn(*staple, "three", user);
  Turn(*staple, "someone else's");

  auto page = client_.Get(staple->url() + "/users/" + user + "/messages?limit=4");
  ASSERT_EQ(page.status, 200) << page.body;
  auto body = page.Json();
  ASSERT_EQ(body["messages"].size(), 4u);
  EXPECT_EQ(body["messages"][0]["role"], "user");
  EXPECT_EQ(body["messages"][0]["content"], "one");
  EXPECT_EQ(body["messages"][1]["role"], "assistant");
  EXPECT_EQ(body["messages"][3]["content"], "echo(3): two");
  EXPECT_TRUE(body["has_more"].get<bool>());
  const auto next = body["next_after"].get<std::int64_t>();

  auto rest =
      client_.Get(staple->url() + "/users/" + user + "/messages?after=" + std::to_string(next));
  ASSERT_EQ(rest.status, 200);
  auto rest_body = rest.Json();
  ASSERT_EQ(rest_body["messages"].size(), 2u);
  EXPECT_EQ(rest_body["messages"][0]["content"], "three");
  EXPECT_FALSE(rest_body["has_more"].get<bool>());
  EXPECT_TRUE(rest_body["next_after"].is_null());

  auto removed = client_.Request("DELETE", staple->url() + "/users/" + user + "/messages");
  ASSERT_EQ(removed.status, 200);
  EXPECT_EQ(removed.Json()["deleted"], 6);
  auto empty = client_.Get(staple->url() + "/users/" + user + "/messages");
  EXPECT_EQ(empty.Json()["messages"].size(), 0u);
  // The conversation starts afresh upstream too.
  EXPECT_EQ(Turn(*staple, "again", user)["completion"], "echo(1): again");
}

TEST_F(OperationsTest, MessagesRejectBadPaging) {
  auto staple = StartStaple();
  for (const char* query : {"?limit=0", "?limit=5000", "?limit=x", "?after=-1"}) {
    auto response = client_.Get(staple->url() + "/users/u/messages" + query);
    EXPECT_EQ(response.status, 400) << query;
    EXPECT_FALSE(ErrorMessage(response).empty()) << query;
  }
}

TEST_F(OperationsTest, ReadyzReportsStoreAndLimiter) {
  auto staple = StartStaple();
  auto ready = client_.Get(staple->url() + "/readyz");
  ASSERT_EQ(ready.status, 200) << ready.body;
  EXPECT_EQ(ready.Json()["store"], "ok");
  EXPECT_EQ(ready.Json()["limiter"], "ok");
}

TEST_F(OperationsTest, MetricsCountRequestsAndTokens) {
  auto staple = StartStaple();
  Turn(*staple, "count me");
  auto bad = client_.PostJson(staple->url() + "/openai-completion", std::string("{}"));
  ASSERT_EQ(bad.status, 400);
  auto metrics = client_.Get(staple->url() + "/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.Header("content-type").value_or("").find("text/plain"), std::string::npos);
  const auto& text = metrics.body;
  EXPECT_NE(text.find("staple_http_requests_total{route=\"/openai-completion\",status=\"200\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("staple_http_requests_total{route=\"/openai-completion\",status=\"400\"} 1"),
            std::string::npos);
  EXPECT_NE(text.find("staple_ratelimit_decisions_total{decision=\"allowed\"} 2"),
            std::string::npos);
  EXPECT_NE(text.find("staple_upstream_duration_seconds_count 1"), std::string::npos);
  EXPECT_NE(text.find("staple_store_pending_writes 0"), std::string::npos);
  EXPECT_EQ(text.find("staple_tokens_total{kind=\"completion\"} 0"), std::string::npos)
      << "the fake reports usage, so tokens are counted";
}

TEST_F(OperationsTest, MetricsTimeFirstTokensCountUpstreamErrorsByKindAndDescribeTheProcess) {
  auto staple = StartStaple({{"STAPLE_UPSTREAM_RETRIES", "0"}});
  auto streamed = client_.PostJson(staple->url() + "/openai-completion",
                                   std::string(R"({"prompt": "stream me", "stream": true})"));
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  auto failed = Complete(*staple, "FAULT:status=503");
  ASSERT_EQ(failed.status, 500) << failed.body;
  const auto text = client_.Get(staple->url() + "/metrics").body;
  EXPECT_NE(text.find("staple_upstream_first_token_seconds_count 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("staple_upstream_errors_total{kind=\"status\"} 1\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("staple_upstream_errors_total{kind=\"timeout\"} 0\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("staple_build_info{version=\""), std::string::npos) << text;
  for (const char* family :
       {"process_cpu_seconds_total ", "process_resident_memory_bytes ", "process_open_fds ",
        "process_max_fds ", "process_start_time_seconds "}) {
    EXPECT_NE(text.find(std::string("\n") + family), std::string::npos) << family;
  }
  EXPECT_NE(text.find("staple_upstream_duration_seconds_bucket{le=\"120\"}"), std::string::npos);
}

TEST_F(OperationsTest, PlaygroundIsServedFromTheBinary) {
  auto staple = StartStaple();
  auto page = client_.Get(staple->url() + "/");
  ASSERT_EQ(page.status, 200);
  EXPECT_NE(page.Header("content-type").value_or("").find("text/html"), std::string::npos);
  EXPECT_NE(page.body.find("Staple playground"), std::string::npos);
  EXPECT_NE(page.body.find("/openai-completion"), std::string::npos);
}

TEST_F(OperationsTest, KeepAliveConnectionServesManyRequests) {
  auto staple = StartStaple({{"STAPLE_COMPLETION_LIMIT", ""}});
  const auto accepted = [&] {
    const auto text = client_.Get(staple->url() + "/metrics").body;
    const std::string name = "\nstaple_connections_total ";
    const auto at = text.find(name);
    return at == std::string::npos ? -1 : std::stol(text.substr(at + name.size()));
  };
  const long before = accepted();
  ASSERT_GT(before, 0);
  for (int i = 0; i < 20; ++i) {
    auto health = client_.Get(staple->url() + "/healthz");
    ASSERT_EQ(health.status, 200);
  }
  EXPECT_EQ(accepted(), before) << "all requests went over the one kept-alive connection";
}

}  // namespace
}  // namespace staple::testing
