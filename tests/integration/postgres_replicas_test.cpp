// Replicas sharing one PostgreSQL database: a conversation moves freely between them, its rows
// are in PostgreSQL, and the database password shows up nowhere.

#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "support/gateway_test.h"
#include "support/postgres_server.h"

namespace staple::testing {
namespace {

using nlohmann::json;

class PostgresReplicasTest : public GatewayTest {
 protected:
  void SetUp() override { postgres_.CreateDatabase("staple"); }

  std::map<std::string, std::string> DatabaseEnv() {
    return {{"STAPLE_DATABASE_URL", postgres_.Url("staple")}};
  }

  // POST /v1/responses that must succeed; the response object (empty on failure).
  json Respond(const StapleServer& staple, const json& body) {
    HttpResponse response = client_.PostJson(staple.url() + "/v1/responses", body.dump());
    EXPECT_EQ(response.status, 200) << response.body;
    json parsed = response.Json();
    return parsed.is_object() ? parsed : json::object();
  }

  PostgresServer postgres_;
};

TEST_F(PostgresReplicasTest, ConversationContinuesOnAnotherReplica) {
  auto a = StartStaple(DatabaseEnv());
  auto b = StartStaple(DatabaseEnv());

  json first = Turn(*a, "first question");
  ASSERT_FALSE(first.empty());
  const std::string user_id = first["user_id"];
  EXPECT_EQ(first.value("completion", ""), "echo(1): first question");

  // Replica B sends the whole history (two stored messages plus the new prompt) upstream.
  json second = Turn(*b, "second question", user_id);
  ASSERT_FALSE(second.empty());
  EXPECT_EQ(second.value("completion", ""), "echo(3): second question");

  json third = Turn(*a, "third question", user_id);
  ASSERT_FALSE(third.empty());
  EXPECT_EQ(third.value("completion", ""), "echo(5): third question");

  // The rows are in PostgreSQL, in order, also through the seed's view.
  EXPECT_EQ(
      postgres_.Psql("staple", "SELECT role || ':' || content FROM messages WHERE user_id = '" +
                                   user_id + "' ORDER BY id"),
      "user:first question\n"
      "assistant:echo(1): first question\n"
      "user:second question\n"
      "assistant:echo(3): second question\n"
      "user:third question\n"
      "assistant:echo(5): third question\n");
  EXPECT_EQ(
      postgres_.Psql("staple", "SELECT count(*) FROM message WHERE user_id = '" + user_id + "'"),
      "6\n");

  // Both replicas report ready, and neither logged the database password.
  HttpClient client;
  EXPECT_EQ(client.Get(a->url() + "/readyz").status, 200);
  EXPECT_EQ(client.Get(b->url() + "/readyz").status, 200);
  for (StapleServer* staple : {a.get(), b.get()}) {
    const std::string output = staple->Stdout() + staple->AllStderr();
    EXPECT_EQ(output.find(PostgresServer::password()), std::string::npos) << output;
  }
}

// The Responses API's state is committed before the answer: the very next request continues it on
// the other replica, and it survives a kill -9 right after the answer.
TEST_F(PostgresReplicasTest, ResponseChainContinuesOnAnotherReplicaAndSurvivesAKill) {
  auto a = StartStaple(DatabaseEnv());
  auto b = StartStaple(DatabaseEnv());
  auto respond = [this](const StapleServer& staple, const json& body) {
    return Respond(staple, body);
  };
  json first = respond(*a, {{"model", "m"}, {"input", "first"}});
  ASSERT_TRUE(first.contains("id"));
  json second =
      respond(*b, {{"model", "m"}, {"input", "second"}, {"previous_response_id", first["id"]}});
  ASSERT_TRUE(second.contains("id"));
  EXPECT_EQ(second["output"][0]["content"][0]["text"], "echo(3): second");

  // Killed at once after its answer: the answer was sent only after the commit.
  a->Stop(SIGKILL);
  a->Restart();
  json third =
      respond(*a, {{"model", "m"}, {"input", "third"}, {"previous_response_id", second["id"]}});
  EXPECT_EQ(third["output"][0]["content"][0]["text"], "echo(5): third");
  EXPECT_EQ(postgres_.Psql("staple", "SELECT count(*) FROM responses"), "3\n");
}

// Each replica keeps the chains it committed in memory. A delete on one replica reaches the
// other's memory through the state epoch in the database (read at most a second apart), and from
// then on the deleted response cannot be continued there either.
TEST_F(PostgresReplicasTest, ADeleteOnOneReplicaEndsTheChainOnTheOther) {
  // No request limit: B is asked again and again until it has seen the delete.
  auto env = DatabaseEnv();
  env.emplace("STAPLE_DEFAULT_LIMITS", "");
  auto a = StartStaple(env);
  auto b = StartStaple(env);
  json first = Respond(*a, {{"model", "m"}, {"input", "one"}});
  ASSERT_TRUE(first.contains("id"));
  // B has never seen the first response: it reads the chain from PostgreSQL.
  json second =
      Respond(*b, {{"model", "m"}, {"input", "two"}, {"previous_response_id", first["id"]}});
  ASSERT_TRUE(second.contains("id"));
  // B committed the second one: its chain comes from B's memory.
  json third =
      Respond(*b, {{"model", "m"}, {"input", "three"}, {"previous_response_id", second["id"]}});
  EXPECT_EQ(third["output"][0]["content"][0]["text"], "echo(5): three");
  EXPECT_EQ(Metric(*b, "staple_response_chain_cache_misses_total"), 1);
  EXPECT_EQ(Metric(*b, "staple_response_chain_cache_hits_total"), 1);

  HttpResponse deleted =
      client_.Request("DELETE", a->url() + "/v1/responses/" + third["id"].get<std::string>());
  ASSERT_EQ(deleted.status, 200) << deleted.body;
  const std::string continue_third =
      json{{"model", "m"}, {"input", "four"}, {"previous_response_id", third["id"]}}.dump();
  HttpResponse refused;
  const bool gone = WaitUntil(
      [&] {
        refused = client_.PostJson(b->url() + "/v1/responses", continue_third);
        return refused.status == 404;
      },
      std::chrono::seconds(10));
  EXPECT_TRUE(gone) << refused.status << " " << refused.body;
  EXPECT_NE(refused.body.find("previous_response_not_found"), std::string::npos) << refused.body;
}

TEST_F(PostgresReplicasTest, UnreachableDatabaseStopsStartupWithoutThePassword) {
  TempDir dir;
  const std::string url = "postgresql://staple:" + PostgresServer::password() +
                          "@127.0.0.1:" + std::to_string(FreePort()) + "/staple";
  RunResult result =
      RunStaple({"serve", "--host", "127.0.0.1", "--port", "0"}, {{"STAPLE_DATABASE_URL", url}},
                dir.path(), std::chrono::seconds(20));
  ASSERT_TRUE(result.status.has_value()) << "staple did not exit";
  EXPECT_FALSE(result.status->Success());
  const std::string output = result.out + result.err;
  EXPECT_NE(output.find("conversation store"), std::string::npos) << output;
  EXPECT_EQ(output.find(PostgresServer::password()), std::string::npos) << output;
}

}  // namespace
}  // namespace staple::testing
