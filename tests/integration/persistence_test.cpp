// What the gateway stores: the SQLite database of the seed, content fidelity, restarts and
// graceful shutdown.

#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <string>
#include <thread>

#include "support/gateway_test.h"

namespace staple::testing {
namespace {

using nlohmann::json;

class PersistenceTest : public GatewayTest {};

constexpr const char* kMessagesOfUser =
    "SELECT id, user_id, role, content, timestamp FROM messages WHERE user_id = '%s' ORDER BY id";

json MessagesOf(const std::filesystem::path& db, const std::string& user_id) {
  std::string sql = kMessagesOfUser;
  sql.replace(sql.find("%s"), 2, user_id);  // ids in these tests are UUIDs: nothing to escape
  return QuerySqlite(db, sql);
}

TEST_F(PersistenceTest, TurnsAreStoredInTheSeedDatabase) {
  auto staple = StartStaple();
  json turn = Turn(*staple, "first question");
  ASSERT_FALSE(turn.empty());
  const std::string user_id = turn["user_id"];
  Turn(*staple, "second question", user_id);

  ASSERT_TRUE(std::filesystem::exists(staple->database_path())) << staple->database_path();
  const json rows = MessagesOf(staple->database_path(), user_id);
  ASSERT_EQ(rows.size(), 4u) << rows.dump();
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"user", "first question"},
      {"assistant", "echo(1): first question"},
      {"user", "second question"},
      {"assistant", "echo(3): second question"}};
  std::int64_t last_id = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const json& row = rows[i];
    EXPECT_EQ(row.value("user_id", ""), user_id);
    EXPECT_EQ(row.value("role", ""), expected[i].first) << row.dump();
    EXPECT_EQ(row.value("content", ""), expected[i].second) << row.dump();
    EXPECT_TRUE(IsSeedTimestamp(row.value("timestamp", ""))) << row.dump();
    EXPECT_GT(row.value("id", std::int64_t{0}), last_id) << row.dump();
    last_id = row.value("id", std::int64_t{0});
  }

  // The seed README's query, on the view with the seed's five columns.
  const json seed_rows = QuerySqlite(staple->database_path(), "SELECT * FROM message;");
  ASSERT_EQ(seed_rows.size(), 4u) << seed_rows.dump();
  for (const json& row : seed_rows) {
    ASSERT_TRUE(row.is_object());
    EXPECT_EQ(row.size(), 5u) << row.dump();
    for (const char* column : {"id", "user_id", "timestamp", "role", "content"}) {
      EXPECT_TRUE(row.contains(column)) << column << " missing in " << row.dump();
    }
  }
}

TEST_F(PersistenceTest, DatabaseUrlChoosesTheFile) {
  auto staple = StartStaple({{"STAPLE_DATABASE_URL", "sqlite:///custom_history.db"}});
  json turn = Turn(*staple, "stored elsewhere");
  ASSERT_FALSE(turn.empty());
  const std::filesystem::path db = staple->working_dir() / "custom_history.db";
  ASSERT_TRUE(std::filesystem::exists(db));
  EXPECT_FALSE(std::filesystem::exists(staple->database_path()));
  EXPECT_EQ(MessagesOf(db, turn["user_id"]).size(), 2u);
}

TEST_F(PersistenceTest, UnicodeComesBackIntact) {
  auto staple = StartStaple();
  const std::string prompt = "héllo wörld 你好 🎉";
  json turn = Turn(*staple, prompt);
  ASSERT_FALSE(turn.empty());
  EXPECT_EQ(turn["completion"], "echo(1): " + prompt);
  EXPECT_EQ(LastUpstreamMessages(), json::array({{{"role", "user"}, {"content", prompt}}}));

  const json rows = MessagesOf(staple->database_path(), turn["user_id"]);
  ASSERT_EQ(rows.size(), 2u) << rows.dump();
  EXPECT_EQ(rows[0].value("content", ""), prompt);
  EXPECT_EQ(rows[1].value("content", ""), "echo(1): " + prompt);
}

TEST_F(PersistenceTest, HundredKilobytePromptComesBackIntact) {
  auto staple = StartStaple();
  std::string prompt;
  for (int i = 0; prompt.size() < 100 * 1024; ++i) {
    prompt += "line " + std::to_string(i) + ": ünïcödé \"quoted\" \\ tab\t 🎉\n";
  }
  json turn = Turn(*staple, prompt);
  ASSERT_FALSE(turn.empty());
  EXPECT_TRUE(turn["completion"] == "echo(1): " + prompt) << "completion differs";

  const json rows = MessagesOf(staple->database_path(), turn["user_id"]);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_TRUE(rows[0].value("content", "") == prompt) << "stored prompt differs";
  EXPECT_TRUE(rows[1].value("content", "") == "echo(1): " + prompt) << "stored answer differs";
}

TEST_F(PersistenceTest, ConversationSurvivesARestart) {
  auto staple = StartStaple();
  json turn = Turn(*staple, "before restart");
  ASSERT_FALSE(turn.empty());
  const std::string user_id = turn["user_id"];
  EXPECT_EQ(Turn(*staple, "still before", user_id).value("completion", ""),
            "echo(3): still before");

  ExitStatus stopped = staple->Stop(SIGTERM);
  EXPECT_TRUE(stopped.Success()) << stopped.ToString();
  staple->Restart();

  EXPECT_EQ(Turn(*staple, "after restart", user_id).value("completion", ""),
            "echo(5): after restart");
  const json expected = json::array({
      {{"role", "user"}, {"content", "before restart"}},
      {{"role", "assistant"}, {"content", "echo(1): before restart"}},
      {{"role", "user"}, {"content", "still before"}},
      {{"role", "assistant"}, {"content", "echo(3): still before"}},
      {{"role", "user"}, {"content", "after restart"}},
  });
  EXPECT_EQ(LastUpstreamMessages(), expected);
}

TEST_F(PersistenceTest, GracefulShutdownFinishesTheRequestInFlight) {
  auto staple = StartStaple();
  json turn = Turn(*staple, "warm up");
  ASSERT_FALSE(turn.empty());
  const std::string user_id = turn["user_id"];
  const std::string slow_prompt = "slow one FAULT:sleep=1500";

  HttpResponse slow;
  {
    // Joined when the scope ends, whatever the assertions below do.
    std::jthread in_flight([&] {
      HttpClient client(std::chrono::seconds(30));
      json body = {{"prompt", slow_prompt}, {"user_id", user_id}};
      slow = client.PostJson(staple->url() + "/openai-completion", body);
    });
    // The request is in flight once the fake has it (it then sleeps 1.5 s before answering):
    // SIGTERM arrives while staple waits for the answer.
    ASSERT_TRUE(
        WaitUntil([&] { return fake_.requests_to("POST", "/v1/chat/completions").size() == 2; },
                  std::chrono::seconds(30)));
    ASSERT_TRUE(staple->process().Signal(SIGTERM));
    std::optional<ExitStatus> exited = staple->process().Wait(std::chrono::seconds(10));
    ASSERT_TRUE(exited.has_value()) << "staple did not exit after SIGTERM";
    EXPECT_TRUE(exited->Success()) << exited->ToString();
  }
  EXPECT_EQ(slow.status, 200) << slow.error << " " << slow.body;
  json slow_json = slow.Json();
  EXPECT_EQ(slow_json.is_object() ? slow_json.value("completion", "") : "",
            "echo(3): " + slow_prompt);

  staple->Restart();
  EXPECT_EQ(Turn(*staple, "after shutdown", user_id).value("completion", ""),
            "echo(5): after shutdown");
  const json messages = LastUpstreamMessages();
  ASSERT_EQ(messages.size(), 5u) << messages.dump();
  EXPECT_EQ(messages[2].value("content", ""), slow_prompt);
}

}  // namespace
}  // namespace staple::testing
