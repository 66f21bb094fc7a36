// The operator console: GET /console (the page, no secrets in it) and the admin API behind it:
// /admin/stats (the last hour per minute) and /admin/conversations/{id} of any owner, guarded by
// the admin key.

#include <gtest/gtest.h>

#include <string>

#include "support/gateway_test.h"

namespace staple::testing {
namespace {

using nlohmann::json;

constexpr const char* kAdminKey = "admin-key-for-console-tests-0123456789";

Headers Admin() { return {{"Authorization", std::string("Bearer ") + kAdminKey}}; }

class ConsoleTest : public GatewayTest {};

TEST_F(ConsoleTest, ThePageIsServedAndHoldsNoSecret) {
  auto staple = StartStaple({{"STAPLE_ADMIN_KEY", kAdminKey}});
  HttpResponse page = client_.Get(staple->url() + "/console");
  ASSERT_EQ(page.status, 200);
  EXPECT_NE(page.Header("content-type").value_or("").find("text/html"), std::string::npos);
  EXPECT_NE(page.body.find("Staple console"), std::string::npos);
  EXPECT_NE(page.body.find("/admin/stats"), std::string::npos);
  EXPECT_EQ(page.body.find(kAdminKey), std::string::npos);
  EXPECT_EQ(page.body.find(kTestApiKey), std::string::npos);
}

TEST_F(ConsoleTest, StatsCountTheTrafficOfThisMinuteBehindTheAdminKey) {
  auto staple = StartStaple({{"STAPLE_ADMIN_KEY", kAdminKey}});
  for (int i = 0; i < 3; ++i) Turn(*staple, "count me " + std::to_string(i));
  ASSERT_EQ(client_.PostJson(staple->url() + "/openai-completion", std::string("{}")).status, 400);

  EXPECT_EQ(client_.Get(staple->url() + "/admin/stats").status, 401);
  HttpResponse stats = client_.Get(staple->url() + "/admin/stats", Admin());
  ASSERT_EQ(stats.status, 200) << stats.body;
  const json body = stats.Json();
  EXPECT_EQ(body.value("interval_seconds", 0), 60);
  ASSERT_TRUE(body["points"].is_array() && !body["points"].empty()) << stats.body;
  // (Summed over the points: a minute may have turned between the requests and this read.)
  std::int64_t requests = 0, client_errors = 0, server_errors = 0, prompt_tokens = 0;
  bool percentile = false;
  for (const auto& point : body["points"]) {
    requests += point.value("requests", 0);
    client_errors += point.value("client_errors", 0);
    server_errors += point.value("server_errors", 0);
    prompt_tokens += point.value("prompt_tokens", 0);
    percentile = percentile || point["p50_ms"].is_number();
  }
  // Health checks, metrics and the admin API are not traffic: exactly the four requests above.
  EXPECT_EQ(requests, 4) << stats.body;
  EXPECT_EQ(client_errors, 1) << stats.body;
  EXPECT_EQ(server_errors, 0) << stats.body;
  EXPECT_GT(prompt_tokens, 0) << stats.body;
  EXPECT_TRUE(percentile) << stats.body;
}

TEST_F(ConsoleTest, TheAdminReadsAndDeletesAConversationOfAnyOwner) {
  auto staple = StartStaple({{"STAPLE_ADMIN_KEY", kAdminKey}, {"STAPLE_AUTH", "keys"}});
  Headers create = Admin();
  create.emplace_back("Content-Type", "application/json");
  HttpResponse created =
      client_.Request("POST", staple->url() + "/admin/keys", R"({"name":"tenant"})", create);
  ASSERT_EQ(created.status, 201) << created.body;
  const std::string key_id = created.Json()["id"];
  const std::string secret = created.Json()["key"];
  HttpResponse turn = client_.PostJson(staple->url() + "/openai-completion",
                                       json{{"prompt", "tenant secret"}, {"user_id", "conv-1"}},
                                       {{"Authorization", "Bearer " + secret}});
  ASSERT_EQ(turn.status, 200) << turn.body;

  const std::string path = staple->url() + "/admin/conversations/conv-1";
  EXPECT_EQ(client_.Get(path + "?owner=" + key_id).status, 401) << "no admin key";
  EXPECT_EQ(client_.Get(path + "?owner=" + key_id, {{"Authorization", "Bearer " + secret}}).status,
            401)
      << "a client key never opens the admin API";
  // Without the owner: the conversations made without keys (there is none of that id).
  HttpResponse unowned = client_.Get(path, Admin());
  ASSERT_EQ(unowned.status, 200) << unowned.body;
  EXPECT_TRUE(unowned.Json()["messages"].empty()) << unowned.body;
  HttpResponse owned = client_.Get(path + "?owner=" + key_id, Admin());
  ASSERT_EQ(owned.status, 200) << owned.body;
  ASSERT_EQ(owned.Json()["messages"].size(), 2u) << owned.body;
  EXPECT_EQ(owned.Json()["messages"][0]["content"], "tenant secret");

  HttpResponse deleted = client_.Request("DELETE", path + "?owner=" + key_id, "", Admin());
  ASSERT_EQ(deleted.status, 200) << deleted.body;
  EXPECT_EQ(deleted.Json()["deleted"], 2);
  EXPECT_TRUE(client_.Get(path + "?owner=" + key_id, Admin()).Json()["messages"].empty());

  HttpResponse too_long =
      client_.Get(staple->url() + "/admin/conversations/" + std::string(300, 'x'), Admin());
  EXPECT_EQ(too_long.status, 400) << too_long.body;
}

}  // namespace
}  // namespace staple::testing
