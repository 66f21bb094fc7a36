// The data lifecycle over the real binary: retention (STAPLE_RETENTION) deleting old turns while
// serving, and `staple backup` copying a database that a running server writes to.

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "support/gateway_test.h"

namespace staple::testing {
namespace {

using nlohmann::json;

class LifecycleTest : public GatewayTest {
 protected:
  // No request limits: the tests poll and write as fast as they like.
  std::map<std::string, std::string> Env(std::map<std::string, std::string> extra = {}) {
    extra.emplace("STAPLE_DEFAULT_LIMITS", "");
    extra.emplace("STAPLE_COMPLETION_LIMIT", "");
    return extra;
  }

  // The stored messages of `user_id` through GET /users/{id}/messages; nullopt when the request
  // failed.
  std::optional<json> Messages(const StapleServer& staple, const std::string& user_id) {
    auto response = client_.Get(staple.url() + "/users/" + user_id + "/messages");
    if (response.status != 200) return std::nullopt;
    json body = json::parse(response.body, nullptr, false);
    if (!body.is_object() || !body["messages"].is_array()) return std::nullopt;
    return body["messages"];
  }
};

TEST_F(LifecycleTest, RetentionDeletesTurnsOlderThanThePeriodWhileServing) {
  auto staple = StartStaple(Env({{"STAPLE_RETENTION", "2 seconds"}}));
  json first = Turn(*staple, "soon forgotten");
  ASSERT_FALSE(first.empty());
  const std::string old_user = first["user_id"];
  auto stored = Messages(*staple, old_user);
  ASSERT_TRUE(stored.has_value());
  ASSERT_EQ(stored->size(), 2u) << stored->dump();

  // Runs come every second; the turn goes once it is two seconds old.
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto now = Messages(*staple, old_user);
        return now.has_value() && now->empty();
      },
      std::chrono::seconds(60)))
      << Messages(*staple, old_user).value_or(json()).dump();
  EXPECT_GE(Metric(*staple, "staple_retention_deleted_total"), 2);
  EXPECT_NE(staple->Stderr().find("retention run"), std::string::npos) << staple->Stderr();

  // The gateway goes on storing and answering; a new turn is within the period.
  json second = Turn(*staple, "fresh");
  ASSERT_FALSE(second.empty());
  auto fresh = Messages(*staple, second["user_id"]);
  ASSERT_TRUE(fresh.has_value());
  EXPECT_EQ(fresh->size(), 2u);
  EXPECT_TRUE(staple->Running());
}

TEST_F(LifecycleTest, RetentionSwitchesAnOlderDatabaseToIncrementalAutoVacuumOnce) {
  TempDir dir;
  std::filesystem::create_directories(dir.path() / "instance");
  const auto db = dir.path() / "instance" / "chat_history.db";
  QuerySqlite(db, "PRAGMA auto_vacuum = NONE; CREATE TABLE notes (text TEXT)");
  ASSERT_EQ(QuerySqlite(db, "PRAGMA auto_vacuum")[0].value("auto_vacuum", -1), 0);

  auto staple = StartStaple(Env({{"STAPLE_RETENTION", "90 days"}}), dir.path());
  ASSERT_FALSE(Turn(*staple, "kept").empty());
  EXPECT_NE(staple->Stderr().find("incremental auto-vacuum enabled"), std::string::npos)
      << staple->Stderr();
  EXPECT_EQ(QuerySqlite(db, "PRAGMA auto_vacuum")[0].value("auto_vacuum", -1), 2);

  // Already switched: the next start does not VACUUM again.
  staple->Restart();
  EXPECT_EQ(staple->Stderr().find("switching the SQLite database"), std::string::npos)
      << staple->Stderr();
  EXPECT_EQ(QuerySqlite(db, "SELECT count(*) AS n FROM messages")[0].value("n", 0), 2);
}

TEST_F(LifecycleTest, RetentionIsOffByDefault) {
  auto staple = StartStaple(Env());
  json turn = Turn(*staple, "kept");
  ASSERT_FALSE(turn.empty());
  EXPECT_EQ(Metric(*staple, "staple_retention_deleted_total"), 0);
  const json rows = QuerySqlite(staple->database_path(), "SELECT count(*) AS n FROM messages");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].value("n", 0), 2);
}

// The build links jemalloc into the binary (DESIGN.md §6 stack) unless sanitizers or fuzzing bring
// their own malloc; a linker that dropped it would silently bring back glibc's burst memory.
TEST_F(LifecycleTest, TheBinaryRunsOnTheAllocatorItWasBuiltWith) {
  auto staple = StartStaple(Env());
  const std::string expected = std::string("allocator=") + STAPLE_EXPECTED_ALLOCATOR;
  const std::string output = staple->Stdout() + staple->Stderr();
  EXPECT_NE(output.find(expected), std::string::npos) << output;
}

TEST_F(LifecycleTest, AnInvalidRetentionStopsStartUpNamingTheVariable) {
  TempDir dir;
  for (const char* value : {"90", "0 days", "1 per day", "90 days; 1 hour", "fortnight"}) {
    std::map<std::string, std::string> env = UpstreamEnv(fake_);
    env["STAPLE_RETENTION"] = value;
    auto result = RunStaple({"serve", "--port", "0"}, env, dir.path());
    ASSERT_TRUE(result.status.has_value()) << value;
    EXPECT_EQ(result.status->code, 2) << value << ": " << result.err;
    EXPECT_NE(result.err.find("STAPLE_RETENTION"), std::string::npos) << result.err;
  }
}

TEST_F(LifecycleTest, BackupOfALiveDatabaseHoldsEveryAcknowledgedTurn) {
  auto staple = StartStaple(Env());
  std::vector<std::string> acknowledged;
  for (int i = 0; i < 20; ++i) {
    json turn = Turn(*staple, "before the backup " + std::to_string(i));
    ASSERT_FALSE(turn.empty());
    acknowledged.push_back(turn["user_id"]);
  }

  // Clients keep writing while the backup runs.
  std::atomic<bool> done{false};
  std::atomic<int> during{0};
  std::thread writer([&] {
    HttpClient client;
    while (!done.load()) {
      auto response = client.PostJson(staple->url() + "/openai-completion",
                                      json{{"prompt", "during the backup"}});
      if (response.status == 200) during.fetch_add(1);
    }
  });
  auto result =
      RunStaple({"backup", "copy.db"}, {}, staple->working_dir(), std::chrono::seconds(60));
  done.store(true);
  writer.join();
  ASSERT_TRUE(result.status.has_value());
  ASSERT_TRUE(result.status->Success()) << result.status->ToString() << ": " << result.err;
  EXPECT_NE(result.out.find("backed up"), std::string::npos) << result.out;
  EXPECT_GT(during.load(), 0);

  const auto copy = staple->working_dir() / "copy.db";
  ASSERT_TRUE(std::filesystem::exists(copy));
  const json check = QuerySqlite(copy, "PRAGMA integrity_check");
  ASSERT_EQ(check.size(), 1u) << check.dump();
  EXPECT_EQ(check[0].value("integrity_check", ""), "ok") << check.dump();
  for (const std::string& user_id : acknowledged) {
    const json rows =
        QuerySqlite(copy, "SELECT count(*) AS n FROM messages WHERE user_id = '" + user_id + "'");
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0].value("n", 0), 2) << user_id;
  }
  // Whole turns only: a snapshot never holds half of one.
  const json halves = QuerySqlite(copy,
                                  "SELECT count(*) AS n FROM messages WHERE content = 'during the "
                                  "backup'");
  ASSERT_EQ(halves.size(), 1u);
  const json answers =
      QuerySqlite(copy,
                  "SELECT count(*) AS n FROM messages WHERE content LIKE '%during the backup' AND "
                  "role = 'assistant'");
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(halves[0].value("n", -1), answers[0].value("n", -2));

  // An existing file is kept unless --force.
  auto again = RunStaple({"backup", "copy.db"}, {}, staple->working_dir());
  ASSERT_TRUE(again.status.has_value());
  EXPECT_EQ(again.status->code, 2);
  EXPECT_NE(again.err.find("already exists"), std::string::npos) << again.err;
  auto forced = RunStaple({"backup", "--force", "copy.db"}, {}, staple->working_dir());
  ASSERT_TRUE(forced.status.has_value());
  EXPECT_TRUE(forced.status->Success()) << forced.err;
  EXPECT_TRUE(staple->Running());
}

TEST_F(LifecycleTest, BackupExplainsPgDumpForPostgres) {
  TempDir dir;
  auto result = RunStaple({"backup", "copy.db"},
                          {{"STAPLE_DATABASE_URL", "postgresql://staple:hunter2@db:5432/staple"}},
                          dir.path());
  ASSERT_TRUE(result.status.has_value());
  EXPECT_NE(result.status->code, 0);
  EXPECT_NE(result.err.find("pg_dump"), std::string::npos) << result.err;
  EXPECT_EQ(result.err.find("hunter2"), std::string::npos) << result.err;
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "copy.db"));
}

TEST_F(LifecycleTest, BackupWithoutADatabaseFailsClearly) {
  TempDir dir;
  auto result = RunStaple({"backup", "copy.db"}, {}, dir.path());
  ASSERT_TRUE(result.status.has_value());
  EXPECT_EQ(result.status->code, 2);
  EXPECT_NE(result.err.find("no SQLite database"), std::string::npos) << result.err;
}

}  // namespace
}  // namespace staple::testing
