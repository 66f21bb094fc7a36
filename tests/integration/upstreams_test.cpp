// Many upstreams behind one Staple (STAPLE_UPSTREAMS): routing by model, renames, weighted split,
// fallback on each fault kind with exactly one stored turn, no fallback once a stream has begun,
// cooldown and recovery, a fast 503 when every candidate cools down, keys kept apart and secret.
// fake_openai instances play the upstreams (a third, stopped one refuses connections); PUT
// /_fake/fault makes one fail or turn slow on demand.

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "support/gateway_test.h"

namespace staple::testing {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;

constexpr const char* kKeyA = "sk-upstream-A-SECRET-0123456789";
constexpr const char* kKeyB = "sk-upstream-B-SECRET-9876543210";

json ChatBody(const std::string& model, const std::string& prompt, bool stream = false) {
  json body = {{"model", model},
               {"messages", json::array({{{"role", "user"}, {"content", prompt}}})}};
  if (stream) body["stream"] = true;
  return body;
}

class UpstreamsTest : public ::testing::Test {
 protected:
  // Staple over the upstreams of `toml` (written to a file of its own), with no request limits.
  std::unique_ptr<StapleServer> Start(const std::string& toml,
                                      const std::map<std::string, std::string>& env = {}) {
    WriteFile(files_ / "upstreams.toml", toml);
    StapleOptions options;
    options.env = {{"STAPLE_UPSTREAMS", (files_ / "upstreams.toml").string()},
                   {"OPENAI_MODEL", "m"},
                   {"UPSTREAM_A_KEY", kKeyA},
                   {"UPSTREAM_B_KEY", kKeyB},
                   {"STAPLE_DEFAULT_LIMITS", ""},
                   {"STAPLE_COMPLETION_LIMIT", ""}};
    for (const auto& [name, value] : env) options.env[name] = value;
    return std::make_unique<StapleServer>(std::move(options));
  }

  // One [[upstream]] table.
  static std::string Upstream(const std::string& name, const FakeOpenAI& fake,
                              const std::string& models, const std::string& extra = "") {
    return "[[upstream]]\nname = \"" + name + "\"\nbase_url = \"" + fake.base_url() +
           "\"\nmodels = " + models + "\nmax_retries = 0\n" + extra + "\n";
  }

  HttpResponse Chat(const StapleServer& staple, const json& body, const Headers& headers = {}) {
    return client_.PostJson(staple.url() + "/v1/chat/completions", body, headers);
  }

  // Makes `fake` answer every /v1 request with `markers` (fault markers) until cleared.
  void Fail(const FakeOpenAI& fake, const std::string& markers) {
    HttpResponse set = client_.Request("PUT", fake.root_url() + "/_fake/fault", markers, {});
    ASSERT_EQ(set.status, 200) << set.body;
  }
  void Heal(const FakeOpenAI& fake) {
    HttpResponse cleared = client_.Request("DELETE", fake.root_url() + "/_fake/fault", "", {});
    ASSERT_EQ(cleared.status, 200) << cleared.body;
  }

  static std::size_t ChatRequests(const FakeOpenAI& fake) {
    return fake.requests_to("POST", "/v1/chat/completions").size();
  }

  json StoredMessages(const StapleServer& staple, const std::string& user_id) {
    HttpResponse response = client_.Get(staple.url() + "/users/" + user_id + "/messages");
    EXPECT_EQ(response.status, 200) << response.body;
    json body = response.Json();
    return body.is_object() && body.contains("messages") ? body["messages"] : json::array();
  }

  TempDir files_;
  FakeOpenAI a_;
  FakeOpenAI b_;
  HttpClient client_;
};

TEST_F(UpstreamsTest, RoutesByExactNameAndGlobRenamesAndListsTheModels) {
  auto staple = Start(Upstream("a", a_, R"(["gpt-4o*"])", "api_key_env = \"UPSTREAM_A_KEY\"") +
                          Upstream("b", b_, R"(["o3"])",
                                   "api_key_env = \"UPSTREAM_B_KEY\"\n"
                                   "rename = { llama3 = \"meta-llama/Llama-3-8B-Instruct\" }"),
                      {{"OPENAI_MODEL", "gpt-4o-mini"}});

  HttpResponse glob = Chat(*staple, ChatBody("gpt-4o-mini", "hello"));
  ASSERT_EQ(glob.status, 200) << glob.body;
  EXPECT_EQ(glob.Header("X-Staple-Upstream"), "a");
  HttpResponse exact = Chat(*staple, ChatBody("o3", "hello"));
  ASSERT_EQ(exact.status, 200) << exact.body;
  EXPECT_EQ(exact.Header("X-Staple-Upstream"), "b");
  HttpResponse renamed = Chat(*staple, ChatBody("llama3", "hello"));
  ASSERT_EQ(renamed.status, 200) << renamed.body;
  EXPECT_EQ(renamed.Header("X-Staple-Upstream"), "b");

  // Each upstream saw its own requests, with its own key, and the renamed model.
  auto to_a = a_.requests_to("POST", "/v1/chat/completions");
  auto to_b = b_.requests_to("POST", "/v1/chat/completions");
  ASSERT_EQ(to_a.size(), 1u);
  ASSERT_EQ(to_b.size(), 2u);
  EXPECT_EQ(to_a[0]["headers"]["authorization"], std::string("Bearer ") + kKeyA);
  EXPECT_EQ(to_b[0]["headers"]["authorization"], std::string("Bearer ") + kKeyB);
  EXPECT_EQ(json::parse(to_b[1]["body"].get<std::string>())["model"],
            "meta-llama/Llama-3-8B-Instruct");

  // A model nobody serves: OpenAI's 404, nothing sent anywhere.
  HttpResponse unknown = Chat(*staple, ChatBody("claude-3", "hello"));
  EXPECT_EQ(unknown.status, 404) << unknown.body;
  EXPECT_EQ(unknown.Json()["error"]["code"], "model_not_found");
  EXPECT_EQ(unknown.Json()["error"]["param"], "model");
  HttpResponse unknown_response = client_.PostJson(staple->url() + "/v1/responses",
                                                   json{{"model", "claude-3"}, {"input", "hi"}});
  EXPECT_EQ(unknown_response.status, 404) << unknown_response.body;
  EXPECT_EQ(unknown_response.Json()["error"]["code"], "model_not_found");
  EXPECT_EQ(ChatRequests(a_) + ChatRequests(b_), 3u);

  // GET /v1/models: the configured names (globs are not names).
  HttpResponse models = client_.Get(staple->url() + "/v1/models");
  ASSERT_EQ(models.status, 200) << models.body;
  EXPECT_EQ(models.Header("X-Staple-Upstream"), std::nullopt) << "answered by Staple itself";
  const json listed = models.Json();
  std::vector<std::string> ids;
  for (const auto& model : listed["data"]) ids.push_back(model["id"]);
  EXPECT_EQ(ids, (std::vector<std::string>{"llama3", "o3"})) << models.body;

  // The seed endpoint asks for OPENAI_MODEL, routed like any other.
  HttpResponse seed = client_.PostJson(staple->url() + "/openai-completion",
                                       json{{"prompt", "hi"}, {"user_id", "routed"}});
  ASSERT_EQ(seed.status, 200) << seed.body;
  EXPECT_EQ(seed.Header("X-Staple-Upstream"), "a");

  // The keys never reach a client or a log line.
  for (const auto* key : {kKeyA, kKeyB}) {
    EXPECT_EQ(staple->Stdout().find(key), std::string::npos);
    EXPECT_EQ(staple->Stderr().find(key), std::string::npos);
  }
}

TEST_F(UpstreamsTest, SplitsByWeightWithinTenPercent) {
  auto staple = Start(Upstream("a", a_, R"(["m"])", "weight = 3") +
                      Upstream("b", b_, R"(["m"])", "weight = 1"));
  constexpr int kRequests = 1000;
  int served_by_a = 0;
  for (int i = 0; i < kRequests; ++i) {
    HttpResponse answer = Chat(*staple, ChatBody("m", "split"));
    ASSERT_EQ(answer.status, 200) << answer.body;
    if (answer.Header("X-Staple-Upstream") == "a") ++served_by_a;
  }
  EXPECT_NEAR(served_by_a, 750, 100);
  // The fakes count every request (their logs keep only the last 200).
  EXPECT_EQ(a_.stats()["requests"], served_by_a);
  EXPECT_EQ(b_.stats()["requests"], kRequests - served_by_a);
}

TEST_F(UpstreamsTest, FallsBackOnEachFaultKindAndStoresTheTurnOnce) {
  // a: first choice, made to fail each way; b: healthy fallback; no cooldown in between.
  FakeOpenAI closed;  // stopped below: its port then refuses connections
  const std::string closed_url = closed.base_url();
  closed.process().Kill();
  auto staple =
      Start("[cooldown]\nfailures = 1000\n" + Upstream("dead", closed, R"(["m"])", "priority = 0") +
                Upstream("a", a_, R"(["m"])", "priority = 1\ntotal_timeout_ms = 1000") +
                Upstream("b", b_, R"(["m"])", "priority = 2"),
            {{"OPENAI_MODEL", "m"}});
  const std::map<std::string, std::string> faults = {{"status-503", "FAULT:status=503"},
                                                     {"status-429", "FAULT:status=429"},
                                                     {"reset", "FAULT:drop"},
                                                     {"hang", "FAULT:hang"}};
  for (const auto& [kind, markers] : faults) {
    SCOPED_TRACE(kind);
    Fail(a_, markers);
    const std::size_t a_before = ChatRequests(a_);
    const std::string user_id = "fallback-" + kind;
    HttpResponse seed = client_.PostJson(staple->url() + "/openai-completion",
                                         json{{"prompt", "hello " + kind}, {"user_id", user_id}});
    ASSERT_EQ(seed.status, 200) << seed.body;
    EXPECT_EQ(seed.Header("X-Staple-Upstream"), "b");
    EXPECT_EQ(ChatRequests(a_), a_before + 1) << "a was asked once (max_retries = 0)";
    json stored = StoredMessages(*staple, user_id);
    ASSERT_EQ(stored.size(), 2u) << stored.dump();
    EXPECT_EQ(stored[1]["content"], seed.Json()["completion"]);
    // The assistant row records which upstream answered.
    json rows = QuerySqlite(
        staple->database_path(),
        "SELECT role, upstream FROM messages WHERE user_id = '" + user_id + "' ORDER BY id");
    ASSERT_EQ(rows.size(), 2u) << rows.dump();
    EXPECT_EQ(rows[0].value("upstream", json()), json()) << rows.dump();
    EXPECT_EQ(rows[1]["upstream"], "b") << rows.dump();
  }
  Heal(a_);

  // A stream falls back too while nothing has been sent to the client.
  Fail(a_, "FAULT:status=503");
  StreamResponse streamed = client_.Stream("POST", staple->url() + "/v1/chat/completions",
                                           ChatBody("m", "stream me", true).dump(),
                                           {{"Content-Type", "application/json"}});
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  EXPECT_EQ(streamed.Header("X-Staple-Upstream"), "b");
  EXPECT_NE(streamed.body.find("[DONE]"), std::string::npos);
  Heal(a_);
}

TEST_F(UpstreamsTest, NoFallbackOnceTheStreamHasBegun) {
  auto staple = Start(Upstream("a", a_, R"(["m"])", "priority = 0") +
                      Upstream("b", b_, R"(["m"])", "priority = 1"));
  Fail(a_, "FAULT:stream-drop-after=1");
  StreamResponse streamed = client_.Stream(
      "POST", staple->url() + "/v1/chat/completions", ChatBody("m", "one two three", true).dump(),
      {{"Content-Type", "application/json"}, {"X-Staple-Conversation", "begun"}});
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  EXPECT_EQ(streamed.Header("X-Staple-Upstream"), "a");
  // The client gets the stream's error event, and b is never asked.
  bool error_event = false;
  for (const auto& data : ParseSseData(streamed.body)) {
    json event = json::parse(data, nullptr, false);
    if (event.is_object() && event.contains("error")) error_event = true;
  }
  EXPECT_TRUE(error_event) << streamed.body;
  EXPECT_EQ(ChatRequests(b_), 0u);
  EXPECT_EQ(StoredMessages(*staple, "begun").size(), 0u);
}

TEST_F(UpstreamsTest, ACoolingUpstreamIsSkippedAndRecoversAfterItsProbe) {
  auto staple = Start("[cooldown]\nfailures = 2\nwindow_ms = 60000\nperiod_ms = 500\n" +
                      Upstream("a", a_, R"(["m"])", "priority = 0") +
                      Upstream("b", b_, R"(["m"])", "priority = 1"));
  Fail(a_, "FAULT:status=500");
  for (int i = 0; i < 2; ++i) {
    HttpResponse answer = Chat(*staple, ChatBody("m", "fail over"));
    ASSERT_EQ(answer.status, 200) << answer.body;
    EXPECT_EQ(answer.Header("X-Staple-Upstream"), "b");
  }
  EXPECT_EQ(ChatRequests(a_), 2u);
  // Cooling down: visible in /readyz and the metrics, and a is not asked.
  HttpResponse ready = client_.Get(staple->url() + "/readyz");
  ASSERT_EQ(ready.status, 200) << ready.body;
  const json readiness = ready.Json();
  EXPECT_EQ(readiness["upstreams"]["a"], "cooling down") << ready.body;
  EXPECT_EQ(readiness["upstreams"]["b"], "ok");
  const std::string metrics = client_.Get(staple->url() + "/metrics").body;
  EXPECT_NE(metrics.find("staple_upstream_available{upstream=\"a\"} 0"), std::string::npos);
  EXPECT_NE(metrics.find("staple_upstream_cooldowns_total{upstream=\"a\"} 1"), std::string::npos);
  EXPECT_NE(metrics.find("staple_upstream_exchanges_total{upstream=\"a\",outcome=\"failed\"} 2"),
            std::string::npos);
  HttpResponse skipped = Chat(*staple, ChatBody("m", "while cooling"));
  ASSERT_EQ(skipped.status, 200) << skipped.body;
  EXPECT_EQ(skipped.Header("X-Staple-Upstream"), "b");

  // Healed: once the period is over, a probe goes to a and a serves again.
  Heal(a_);
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  std::optional<std::string> served;
  while (std::chrono::steady_clock::now() < give_up) {
    HttpResponse answer = Chat(*staple, ChatBody("m", "probe"));
    ASSERT_EQ(answer.status, 200) << answer.body;
    served = answer.Header("X-Staple-Upstream");
    if (served == "a") break;
  }
  EXPECT_EQ(served, "a");
  EXPECT_EQ(client_.Get(staple->url() + "/readyz").Json()["upstreams"]["a"], "ok");
}

TEST_F(UpstreamsTest, EveryCandidateCoolingDownFailsFastWith503InTheRoutesShape) {
  auto staple = Start("[cooldown]\nfailures = 1\nperiod_ms = 600000\n" +
                          Upstream("a", a_, R"(["m"])") + Upstream("b", b_, R"(["m"])"),
                      {{"OPENAI_MODEL", "m"}});
  Fail(a_, "FAULT:status=500");
  Fail(b_, "FAULT:status=503");
  HttpResponse failed = Chat(*staple, ChatBody("m", "both fail"));
  // The last upstream's own status (the two are tried in a random order).
  EXPECT_TRUE(failed.status == 500 || failed.status == 503) << failed.status << failed.body;
  EXPECT_EQ(ChatRequests(a_) + ChatRequests(b_), 2u);

  HttpResponse v1 = Chat(*staple, ChatBody("m", "fast"));
  EXPECT_EQ(v1.status, 503) << v1.body;
  EXPECT_EQ(v1.Json()["error"]["type"], "service_unavailable");
  HttpResponse seed = client_.PostJson(staple->url() + "/openai-completion",
                                       json{{"prompt", "fast"}, {"user_id", "cooling"}});
  EXPECT_EQ(seed.status, 503) << seed.body;
  EXPECT_EQ(seed.Json()["type"], "service_unavailable");
  EXPECT_NE(seed.Json()["error"].get<std::string>().find("cooling down"), std::string::npos);
  StreamResponse streamed =
      client_.Stream("POST", staple->url() + "/v1/chat/completions",
                     ChatBody("m", "fast", true).dump(), {{"Content-Type", "application/json"}});
  EXPECT_EQ(streamed.status, 503) << streamed.body;
  EXPECT_EQ(ChatRequests(a_) + ChatRequests(b_), 2u) << "nobody was asked again";
}

TEST_F(UpstreamsTest, AHedgedStreamIsAnsweredByTheFasterUpstreamAndTheOtherIsCancelled) {
  auto staple = Start(Upstream("a", a_, R"(["m"])", "priority = 0\nhedge_after_ms = 200") +
                      Upstream("b", b_, R"(["m"])", "priority = 1"));
  // a sends its headers at once and its first token only after a minute.
  Fail(a_, "FAULT:first-token-delay=60000");
  StreamResponse streamed = client_.Stream(
      "POST", staple->url() + "/v1/chat/completions", ChatBody("m", "hedge me", true).dump(),
      {{"Content-Type", "application/json"}, {"X-Staple-Conversation", "hedged"}});
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  EXPECT_EQ(streamed.Header("X-Staple-Upstream"), "b");
  EXPECT_NE(streamed.body.find("[DONE]"), std::string::npos);
  EXPECT_EQ(ChatRequests(a_), 1u);
  EXPECT_EQ(ChatRequests(b_), 1u);
  // The loser's stream is closed by Staple, not left to run for its minute.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (a_.stats()["streams_aborted"] != 1 && std::chrono::steady_clock::now() < give_up) {
    client_.Get(staple->url() + "/healthz");
  }
  EXPECT_EQ(a_.stats()["streams_aborted"], 1);
  // One turn stored, answered by b.
  json rows =
      QuerySqlite(staple->database_path(),
                  "SELECT role, upstream FROM messages WHERE user_id = 'hedged' ORDER BY id");
  ASSERT_EQ(rows.size(), 2u) << rows.dump();
  EXPECT_EQ(rows[1]["upstream"], "b");
  const std::string metrics = client_.Get(staple->url() + "/metrics").body;
  EXPECT_NE(metrics.find("staple_upstream_hedges_total{upstream=\"a\",won=\"second\"} 1"),
            std::string::npos);
}

TEST_F(UpstreamsTest, AResponsesChainContinuesOnAnotherUpstreamWithItsWholeHistory) {
  auto staple = Start(Upstream("a", a_, R"(["m"])", "priority = 0") +
                      Upstream("b", b_, R"(["m"])", "priority = 1"));
  HttpResponse first = client_.PostJson(staple->url() + "/v1/responses",
                                        json{{"model", "m"}, {"input", "my name is Ada"}});
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_EQ(first.Header("X-Staple-Upstream"), "a");
  Fail(a_, "FAULT:status=503");
  HttpResponse second = client_.PostJson(staple->url() + "/v1/responses",
                                         json{{"model", "m"},
                                              {"input", "what is my name?"},
                                              {"previous_response_id", first.Json()["id"]}});
  ASSERT_EQ(second.status, 200) << second.body;
  EXPECT_EQ(second.Header("X-Staple-Upstream"), "b");
  // b saw the whole conversation, though a answered its first turn.
  auto to_b = b_.requests_to("POST", "/v1/chat/completions");
  ASSERT_EQ(to_b.size(), 1u);
  const json messages = json::parse(to_b[0]["body"].get<std::string>())["messages"];
  ASSERT_EQ(messages.size(), 3u) << messages.dump();
  EXPECT_EQ(messages[0]["content"], "my name is Ada");
  EXPECT_EQ(messages[2]["content"], "what is my name?");
  Heal(a_);
}

TEST_F(UpstreamsTest, AHedgedStreamCountsTheLosersPromptAgainstTheTokenLimits) {
  auto staple = Start(
      Upstream("a", a_, R"(["m"])", "priority = 0\nhedge_after_ms = 100") +
          Upstream("b", b_, R"(["m"])", "priority = 1"),
      {{"STAPLE_TOKEN_LIMITS", "1000 per minute"}, {"STAPLE_TOKEN_COMPLETION_RESERVE", "100"}});
  Fail(a_, "FAULT:first-token-delay=60000");
  const std::string prompt = "count my prompt twice";
  json body = ChatBody("m", prompt, true);
  body["stream_options"] = {{"include_usage", true}};
  StreamResponse hedged = client_.Stream("POST", staple->url() + "/v1/chat/completions",
                                         body.dump(), {{"Content-Type", "application/json"}});
  ASSERT_EQ(hedged.status, 200) << hedged.body;
  EXPECT_EQ(hedged.Header("X-Staple-Upstream"), "b");
  // fake_openai reports one token per four bytes: the prompt, and "echo(1): <prompt>".
  const auto tokens = [](const std::string& text) {
    return static_cast<std::int64_t>((text.size() + 3) / 4);
  };
  const std::int64_t reservation = 3 + 100 + 4 + tokens(prompt);
  const std::int64_t used = 2 * tokens(prompt) + tokens("echo(1): " + prompt);
  Heal(a_);
  HttpResponse next = Chat(*staple, ChatBody("m", prompt));
  ASSERT_EQ(next.status, 200) << next.body;
  ASSERT_TRUE(next.Header("X-RateLimit-Remaining-Tokens").has_value());
  EXPECT_EQ(std::stoll(*next.Header("X-RateLimit-Remaining-Tokens")), 1000 - used - reservation);
}

TEST_F(UpstreamsTest, AnInvalidFileStopsStartUpNamingTheFileEntryAndField) {
  WriteFile(files_ / "bad.toml", Upstream("a", a_, R"(["m"])") +
                                     "[[upstream]]\nname = \"b\"\nbase_url = \"" + b_.base_url() +
                                     "\"\nmodels = [\"m\"]\nweight = -1\n");
  auto result = RunStaple({"serve", "--port", "0"},
                          {{"STAPLE_UPSTREAMS", (files_ / "bad.toml").string()}}, files_.path());
  ASSERT_TRUE(result.status.has_value());
  EXPECT_EQ(result.status->code, 2) << result.err;
  EXPECT_NE(result.err.find("bad.toml"), std::string::npos) << result.err;
  EXPECT_NE(result.err.find("upstream 2 (\"b\")"), std::string::npos) << result.err;
  EXPECT_NE(result.err.find("weight"), std::string::npos) << result.err;

  // OPENAI_MODEL (the seed endpoint's model) must be served by some upstream.
  WriteFile(files_ / "narrow.toml", Upstream("a", a_, R"(["m"])"));
  auto narrow = RunStaple(
      {"serve", "--port", "0"},
      {{"STAPLE_UPSTREAMS", (files_ / "narrow.toml").string()}, {"OPENAI_MODEL", "gpt-4o-mini"}},
      files_.path());
  ASSERT_TRUE(narrow.status.has_value());
  EXPECT_NE(narrow.status->code, 0);
  EXPECT_NE(narrow.err.find("OPENAI_MODEL"), std::string::npos) << narrow.err;
}

}  // namespace
}  // namespace staple::testing
