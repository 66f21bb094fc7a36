// Client keys and tenancy (STAPLE_AUTH=keys): keys made through the admin API, 401/403/429
// answers in each API's shape, conversations that belong to the key that made them, per-key
// limits and usage, revocation seen by another replica, and no secret in any answer or log line.

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "support/gateway_test.h"
#include "support/postgres_server.h"
#include "support/redis_server.h"

namespace staple::testing {
namespace {

using nlohmann::json;

constexpr const char* kAdminKey = "admin-key-for-tests-0123456789-abcdefgh";

Headers Bearer(const std::string& secret) { return {{"Authorization", "Bearer " + secret}}; }

Headers JsonWith(Headers headers) {
  headers.emplace_back("Content-Type", "application/json");
  return headers;
}

class ClientKeysTest : public GatewayTest {
 protected:
  std::map<std::string, std::string> KeysEnv(std::map<std::string, std::string> extra = {}) {
    std::map<std::string, std::string> env = {{"STAPLE_AUTH", "keys"},
                                              {"STAPLE_ADMIN_KEY", kAdminKey}};
    for (auto& [name, value] : extra) env[name] = value;
    return env;
  }

  // Creates a key through the admin API; returns the 201 body (with the secret in "key").
  json CreateKey(const StapleServer& staple, json fields) {
    HttpResponse created = client_.Request("POST", staple.url() + "/admin/keys", fields.dump(),
                                           JsonWith(Bearer(kAdminKey)));
    EXPECT_EQ(created.status, 201) << created.body;
    json body = created.Json();
    if (!body.is_object() || !body.contains("key")) return json::object();
    secrets_.push_back(body["key"].get<std::string>());
    return body;
  }

  HttpResponse Seed(const StapleServer& staple, const std::string& secret, const json& body) {
    return client_.Request("POST", staple.url() + "/openai-completion", body.dump(),
                           JsonWith(Bearer(secret)));
  }

  HttpResponse Chat(const StapleServer& staple, const std::string& secret,
                    const std::string& model = "gpt-4o-mini",
                    const std::string& conversation = "") {
    Headers headers = JsonWith(Bearer(secret));
    if (!conversation.empty()) headers.emplace_back("X-Staple-Conversation", conversation);
    json body = {{"model", model}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}};
    return client_.Request("POST", staple.url() + "/v1/chat/completions", body.dump(), headers);
  }

  // Every secret made by the test must be absent from the servers' logs.
  void ExpectNoSecretIn(const std::string& text) {
    for (const auto& secret : secrets_) {
      EXPECT_EQ(text.find(secret), std::string::npos) << "a key leaked";
      EXPECT_EQ(text.find(secret.substr(10)), std::string::npos) << "a key's body leaked";
    }
    EXPECT_EQ(text.find(kAdminKey), std::string::npos) << "the admin key leaked";
  }

  std::vector<std::string> secrets_;
};

TEST_F(ClientKeysTest, ListeningBeyondLoopbackWithoutAuthIsAStartUpError) {
  TempDir dir;
  auto run =
      RunStaple({"serve", "--host", "0.0.0.0", "--port", "0"}, UpstreamEnv(fake_), dir.path());
  ASSERT_TRUE(run.status.has_value());
  EXPECT_EQ(run.status->code, 2);
  EXPECT_NE(run.err.find("STAPLE_AUTH"), std::string::npos) << run.err;
}

TEST_F(ClientKeysTest, AShortAdminKeyIsAStartUpError) {
  TempDir dir;
  auto env = UpstreamEnv(fake_);
  env["STAPLE_ADMIN_KEY"] = "too-short";
  auto run = RunStaple({"serve", "--port", "0"}, env, dir.path());
  ASSERT_TRUE(run.status.has_value());
  EXPECT_EQ(run.status->code, 2);
  EXPECT_NE(run.err.find("STAPLE_ADMIN_KEY"), std::string::npos) << run.err;
  EXPECT_EQ(run.err.find("too-short"), std::string::npos) << "the admin key was echoed";
}

TEST_F(ClientKeysTest, EveryApiRouteNeedsAKeyInItsOwnShape) {
  auto staple = StartStaple(KeysEnv());
  HttpResponse seed = Complete(*staple, "hello");
  EXPECT_EQ(seed.status, 401);
  EXPECT_EQ(seed.Json(), json({{"error", "Invalid API key"}}));

  HttpResponse chat = Chat(*staple, "sk-staple-not-a-real-key");
  EXPECT_EQ(chat.status, 401);
  EXPECT_EQ(chat.Json()["error"]["code"], "invalid_api_key");
  EXPECT_EQ(chat.body.find("sk-staple-not-a-real-key"), std::string::npos);

  EXPECT_EQ(client_.Get(staple->url() + "/users/alice/messages").status, 401);
  EXPECT_EQ(client_.Get(staple->url() + "/v1/models").status, 401);
  EXPECT_EQ(client_.Get(staple->url() + "/healthz").status, 200);
  EXPECT_EQ(client_.Get(staple->url() + "/readyz").status, 200);
  // A client key never opens the admin API.
  json key = CreateKey(*staple, {{"name", "client"}});
  EXPECT_EQ(client_.Get(staple->url() + "/admin/keys", Bearer(key["key"])).status, 401);
  EXPECT_TRUE(fake_.chat_bodies().empty());
}

TEST_F(ClientKeysTest, TwoKeysWithTheSameUserIdHaveTwoConversations) {
  auto staple = StartStaple(KeysEnv());
  const std::string a = CreateKey(*staple, {{"name", "tenant a"}})["key"];
  const std::string b = CreateKey(*staple, {{"name", "tenant b"}})["key"];

  ASSERT_EQ(Seed(*staple, a, {{"prompt", "secret of a"}, {"user_id", "alice"}}).status, 200);
  HttpResponse from_b = Seed(*staple, b, {{"prompt", "question of b"}, {"user_id", "alice"}});
  ASSERT_EQ(from_b.status, 200) << from_b.body;
  // b's turn went upstream without a's history.
  EXPECT_EQ(from_b.Json()["completion"], "echo(1): question of b");

  HttpResponse listed_a = client_.Get(staple->url() + "/users/alice/messages", Bearer(a));
  ASSERT_EQ(listed_a.status, 200);
  ASSERT_EQ(listed_a.Json()["messages"].size(), 2u);
  EXPECT_EQ(listed_a.Json()["messages"][0]["content"], "secret of a");
  HttpResponse listed_b = client_.Get(staple->url() + "/users/alice/messages", Bearer(b));
  ASSERT_EQ(listed_b.Json()["messages"].size(), 2u);
  EXPECT_EQ(listed_b.Json()["messages"][0]["content"], "question of b");

  // The memory header sees only the caller's own conversation.
  ASSERT_EQ(Chat(*staple, b, "gpt-4o-mini", "alice").status, 200);
  for (const auto& message : LastUpstreamMessages()) {
    EXPECT_NE(message.value("content", ""), "secret of a");
  }

  // Deleting is per key too.
  HttpResponse deleted =
      client_.Request("DELETE", staple->url() + "/users/alice/messages", "", Bearer(b));
  EXPECT_EQ(deleted.Json()["deleted"], 4);
  EXPECT_EQ(
      client_.Get(staple->url() + "/users/alice/messages", Bearer(a)).Json()["messages"].size(),
      2u);
  ExpectNoSecretIn(staple->AllStderr());
}

TEST_F(ClientKeysTest, RevokedAndExpiredKeysAreRefused) {
  auto staple = StartStaple(KeysEnv());
  json key = CreateKey(*staple, {{"name", "short-lived"}});
  ASSERT_EQ(Chat(*staple, key["key"]).status, 200);
  HttpResponse revoked =
      client_.Request("DELETE", staple->url() + "/admin/keys/" + key["id"].get<std::string>(), "",
                      Bearer(kAdminKey));
  ASSERT_EQ(revoked.status, 200) << revoked.body;
  EXPECT_EQ(revoked.Json()["revoked"], true);
  HttpResponse refused = Chat(*staple, key["key"]);
  EXPECT_EQ(refused.status, 401);
  EXPECT_EQ(refused.Json()["error"]["message"], "API key revoked");

  const auto past = std::chrono::duration_cast<std::chrono::seconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count() -
                    60;
  json expired = CreateKey(*staple, {{"name", "expired"}, {"expires_at", past}});
  HttpResponse late = Chat(*staple, expired["key"]);
  EXPECT_EQ(late.status, 401);
  EXPECT_EQ(late.Json()["error"]["message"], "API key expired");
  EXPECT_EQ(Seed(*staple, expired["key"], {{"prompt", "hi"}}).Json(),
            json({{"error", "Invalid API key"}}));
  ExpectNoSecretIn(staple->AllStderr());
}

TEST_F(ClientKeysTest, AKeysModelsAreEnforcedOnBothRoutes) {
  auto staple = StartStaple(KeysEnv());
  const std::string key = CreateKey(*staple, {{"name", "m"}, {"models", {"model-ok"}}})["key"];
  HttpResponse other = Chat(*staple, key, "model-other");
  EXPECT_EQ(other.status, 403);
  EXPECT_EQ(other.Json()["error"]["code"], "model_not_allowed");
  EXPECT_EQ(other.Json()["error"]["type"], "invalid_request_error");
  EXPECT_EQ(Chat(*staple, key, "model-ok").status, 200);
  // The seed route asks for the configured model (gpt-4o-mini), which this key may not use.
  EXPECT_EQ(Seed(*staple, key, {{"prompt", "hi"}}).status, 403);
  EXPECT_EQ(fake_.chat_bodies().size(), 1u);
}

// GET /v1/models lists what the key may use; a key without a model list sees the upstream's.
TEST_F(ClientKeysTest, AKeySeesOnlyItsModelsInTheModelList) {
  auto staple = StartStaple(KeysEnv());
  const std::string limited =
      CreateKey(*staple, {{"name", "l"}, {"models", {"gpt-4o-mini", "absent"}}})["key"];
  const std::string open = CreateKey(*staple, {{"name", "o"}})["key"];
  auto ids = [&](const std::string& key) {
    HttpResponse listed = client_.Get(staple->url() + "/v1/models", Bearer(key));
    EXPECT_EQ(listed.status, 200) << listed.body;
    std::vector<std::string> names;
    json body = listed.Json();
    if (body.is_object() && body["data"].is_array()) {
      for (const auto& model : body["data"]) names.push_back(model.value("id", ""));
    }
    return names;
  };
  EXPECT_EQ(ids(limited), std::vector<std::string>{"gpt-4o-mini"});
  EXPECT_EQ(ids(open), (std::vector<std::string>{"fake-model", "gpt-4o-mini"}));
}

TEST_F(ClientKeysTest, GuessingKeysFromOneAddressIsStopped) {
  auto staple = StartStaple(KeysEnv({{"STAPLE_AUTH_FAILURE_LIMIT", "5 per minute"}}));
  const std::string good = CreateKey(*staple, {{"name", "good"}})["key"];
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Chat(*staple, "sk-staple-guess" + std::to_string(i)).status, 401) << i;
  }
  HttpResponse stopped = Chat(*staple, "sk-staple-guess-again");
  EXPECT_EQ(stopped.status, 429);
  EXPECT_TRUE(stopped.Header("Retry-After").has_value());
  // While the address is stopped, not even a right key is looked at: guesses cannot succeed.
  EXPECT_EQ(Chat(*staple, good).status, 429);
}

TEST_F(ClientKeysTest, PerKeyLimitsAndUsage) {
  auto staple = StartStaple(KeysEnv());
  json limited = CreateKey(*staple, {{"name", "limited"}, {"request_limits", "2 per minute"}});
  const std::string other = CreateKey(*staple, {{"name", "other"}})["key"];
  EXPECT_EQ(Chat(*staple, limited["key"]).status, 200);
  EXPECT_EQ(Chat(*staple, limited["key"]).status, 200);
  HttpResponse third = Chat(*staple, limited["key"]);
  EXPECT_EQ(third.status, 429);
  EXPECT_NE(third.Json()["error"]["message"].get<std::string>().find("2 per 1 minute"),
            std::string::npos);
  EXPECT_EQ(Chat(*staple, other).status, 200);  // another key is not affected

  // Usage is recorded per key and day (flushed about once a second).
  const std::string path = staple->url() + "/admin/keys/" + limited["id"].get<std::string>();
  json usage;
  EXPECT_TRUE(WaitUntil(
      [&] {
        usage = client_.Get(path, Bearer(kAdminKey)).Json()["usage"];
        return usage.is_array() && !usage.empty() && usage[0]["requests"] == 2;
      },
      std::chrono::seconds(10)))
      << usage.dump();
  if (usage.is_array() && !usage.empty()) {
    EXPECT_GT(usage[0]["completion_tokens"], 0);
  }
}

TEST_F(ClientKeysTest, AdminApiValidatesAndNeverShowsSecretsAgain) {
  auto staple = StartStaple(KeysEnv());
  HttpResponse bad =
      client_.Request("POST", staple->url() + "/admin/keys",
                      R"({"name":"x","request_limits":"lots"})", JsonWith(Bearer(kAdminKey)));
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(bad.body.find("request_limits"), std::string::npos) << bad.body;
  EXPECT_EQ(client_.Get(staple->url() + "/admin/keys", Bearer("wrong-admin-key-000000000000000000"))
                .status,
            401);
  json key = CreateKey(*staple, {{"name", "listed"}, {"metadata", {{"team", "search"}}}});
  HttpResponse listed = client_.Get(staple->url() + "/admin/keys", Bearer(kAdminKey));
  ASSERT_EQ(listed.status, 200);
  EXPECT_EQ(listed.body.find(key["key"].get<std::string>()), std::string::npos);
  EXPECT_EQ(listed.Json()["data"][0]["metadata"]["team"], "search");
  HttpResponse updated =
      client_.Request("PATCH", staple->url() + "/admin/keys/" + key["id"].get<std::string>(),
                      R"({"models":["m1"]})", JsonWith(Bearer(kAdminKey)));
  EXPECT_EQ(updated.status, 200);
  EXPECT_EQ(updated.Json()["models"], json({"m1"}));
  EXPECT_EQ(
      client_.Get(staple->url() + "/admin/keys/key_0000000000000000", Bearer(kAdminKey)).status,
      404);
  ExpectNoSecretIn(staple->AllStderr());
}

// A key's own limit is one exact limit across replicas sharing Redis (and PostgreSQL for the keys):
// 9 requests alternating between two replicas against "3 per minute" admit exactly 3.
TEST_F(ClientKeysTest, PerKeyLimitsAreExactAcrossReplicas) {
  PostgresServer postgres;
  postgres.CreateDatabase("staple");
  RedisServer redis;
  auto env = KeysEnv(
      {{"STAPLE_DATABASE_URL", postgres.Url("staple")}, {"STAPLE_RATELIMIT_STORAGE", redis.url()}});
  // Made with `staple keys create` before the replicas start, so both load it at start-up.
  TempDir cli_dir;
  RunResult created =
      RunStaple({"keys", "create", "--name", "metered", "--request-limits", "3 per minute"},
                {{"STAPLE_DATABASE_URL", postgres.Url("staple")}}, cli_dir.path());
  ASSERT_TRUE(created.status.has_value() && created.status->Success()) << created.err;
  std::string key;
  for (const auto& line : SplitLines(created.out)) {
    if (line.rfind("sk-staple-", 0) == 0) key = line;
  }
  ASSERT_FALSE(key.empty()) << created.out;
  secrets_.push_back(key);
  auto a = StartStaple(env);
  auto b = StartStaple(env);
  int passed = 0;
  int limited = 0;
  for (int i = 0; i < 9; ++i) {
    HttpResponse response = Chat(i % 2 == 0 ? *a : *b, key);
    if (response.status == 200) {
      ++passed;
    } else if (response.status == 429) {
      ++limited;
    } else {
      ADD_FAILURE() << i << ": " << response.status << " " << response.body;
    }
  }
  EXPECT_EQ(passed, 3);
  EXPECT_EQ(limited, 6);
  EXPECT_EQ(fake_.chat_bodies().size(), 3u);
}

// Two replicas sharing PostgreSQL and Redis: a key revoked on one is refused by the other within
// two seconds (each replica polls the keys' version every second).
TEST_F(ClientKeysTest, ARevocationReachesTheOtherReplica) {
  PostgresServer postgres;
  postgres.CreateDatabase("staple");
  RedisServer redis;
  // Waiting for the key on B makes failed attempts: allow them.
  auto env = KeysEnv({{"STAPLE_DATABASE_URL", postgres.Url("staple")},
                      {"STAPLE_RATELIMIT_STORAGE", redis.url()},
                      {"STAPLE_AUTH_FAILURE_LIMIT", "100000 per minute"}});
  auto a = StartStaple(env);
  auto b = StartStaple(env);
  json key = CreateKey(*a, {{"name", "shared"}});
  HttpResponse last;
  ASSERT_TRUE(WaitUntil(
      [&] {
        last = Chat(*b, key["key"]);
        return last.status == 200;
      },
      std::chrono::seconds(5)))
      << last.status << " " << last.body << "\n"
      << b->AllStderr();
  HttpResponse revoked = client_.Request(
      "DELETE", a->url() + "/admin/keys/" + key["id"].get<std::string>(), "", Bearer(kAdminKey));
  ASSERT_EQ(revoked.status, 200);
  const auto revoked_at = std::chrono::steady_clock::now();
  EXPECT_TRUE(
      WaitUntil([&] { return Chat(*b, key["key"]).status == 401; }, std::chrono::seconds(2)));
  EXPECT_LE(std::chrono::steady_clock::now() - revoked_at, std::chrono::seconds(2));
  ExpectNoSecretIn(a->AllStderr() + b->AllStderr());
}

// Responses and conversations belong to the key that made them: another key gets 404 for every
// one of them, as if they did not exist.
TEST_F(ClientKeysTest, ResponsesAndConversationsBelongToTheirKey) {
  auto staple = StartStaple(KeysEnv());
  const std::string alice = CreateKey(*staple, {{"name", "alice"}}).value("key", "");
  const std::string bob = CreateKey(*staple, {{"name", "bob"}}).value("key", "");
  ASSERT_FALSE(alice.empty());
  ASSERT_FALSE(bob.empty());
  auto post = [&](const std::string& secret, const std::string& path, const json& body) {
    return client_.Request("POST", staple->url() + path, body.dump(), JsonWith(Bearer(secret)));
  };
  HttpResponse created = post(alice, "/v1/responses", {{"model", "m"}, {"input", "mine"}});
  ASSERT_EQ(created.status, 200) << created.body;
  const std::string response_id = created.Json()["id"];
  HttpResponse conversation = post(alice, "/v1/conversations", json::object());
  ASSERT_EQ(conversation.status, 200) << conversation.body;
  const std::string conversation_id = conversation.Json()["id"];

  EXPECT_EQ(client_.Get(staple->url() + "/v1/responses/" + response_id, Bearer(alice)).status, 200);
  EXPECT_EQ(client_.Get(staple->url() + "/v1/responses/" + response_id, Bearer(bob)).status, 404);
  EXPECT_EQ(
      client_.Get(staple->url() + "/v1/responses/" + response_id + "/input_items", Bearer(bob))
          .status,
      404);
  EXPECT_EQ(
      client_.Request("DELETE", staple->url() + "/v1/responses/" + response_id, "", Bearer(bob))
          .status,
      404);
  EXPECT_EQ(post(bob, "/v1/responses",
                 {{"model", "m"}, {"input", "theirs"}, {"previous_response_id", response_id}})
                .status,
            404);
  EXPECT_EQ(post(bob, "/v1/responses",
                 {{"model", "m"}, {"input", "theirs"}, {"conversation", conversation_id}})
                .status,
            404);
  EXPECT_EQ(client_.Get(staple->url() + "/v1/conversations/" + conversation_id, Bearer(bob)).status,
            404);
  EXPECT_EQ(post(bob, "/v1/conversations/" + conversation_id + "/items",
                 {{"items", json::array({{{"role", "user"}, {"content", "x"}}})}})
                .status,
            404);
  // Without a key, nothing at all.
  EXPECT_EQ(client_.Get(staple->url() + "/v1/responses/" + response_id).status, 401);
  // Alice still has hers.
  EXPECT_EQ(post(alice, "/v1/responses",
                 {{"model", "m"}, {"input", "more"}, {"previous_response_id", response_id}})
                .status,
            200);
}

}  // namespace
}  // namespace staple::testing
