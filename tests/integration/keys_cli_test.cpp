// `staple keys`: client keys managed from the command line on the configured SQLite database. The
// secret is printed once, at creation; the stored hash is never printed.

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "support/staple_server.h"
#include "support/temp_dir.h"

namespace staple::testing {
namespace {

std::size_t Occurrences(const std::string& text, const std::string& needle) {
  std::size_t count = 0;
  for (std::size_t pos = text.find(needle); pos != std::string::npos;
       pos = text.find(needle, pos + needle.size())) {
    ++count;
  }
  return count;
}

// The lines of `text`.
std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t end = std::min(text.find('\n', pos), text.size());
    lines.push_back(text.substr(pos, end - pos));
    pos = end + 1;
  }
  return lines;
}

// The value after "<label>" on the first line that starts with it, spaces skipped.
std::string LineValue(const std::string& text, const std::string& label) {
  for (const std::string& line : Lines(text)) {
    if (line.rfind(label, 0) != 0) continue;
    const std::size_t start = line.find_first_not_of(' ', label.size());
    return start == std::string::npos ? std::string() : line.substr(start);
  }
  return {};
}

class KeysCliTest : public ::testing::Test {
 protected:
  // Runs `staple keys <args>` against the test's database; fails the test when it does not end
  // with `expected_code`. Keeps all output for the checks at the end.
  RunResult Keys(std::vector<std::string> args, int expected_code = 0) {
    args.insert(args.begin(), "keys");
    RunResult result = RunStaple(args, env_, dir_.path());
    EXPECT_TRUE(result.status.has_value()) << "staple keys did not finish";
    if (result.status) {
      EXPECT_TRUE(result.status->Exited());
      EXPECT_EQ(result.status->code, expected_code) << result.out << result.err;
    }
    all_output_ += result.out + result.err;
    return result;
  }

  TempDir dir_;
  std::filesystem::path db_ = dir_ / "data" / "gateway.db";
  std::map<std::string, std::string> env_{{"STAPLE_DATABASE_URL", "sqlite:///" + db_.string()}};
  std::string all_output_;
};

TEST_F(KeysCliTest, CreateListRevokeShowPrintsTheSecretOnceAndTheHashNever) {
  RunResult created =
      Keys({"create", "--name", "ci key", "--models", "gpt-4o-mini, llama3", "--request-limits",
            "5 per minute", "--token-limits", "1000/day", "--expires-at", "2030-01-02T03:04:05Z",
            "--metadata", R"({"team":"ci"})"});
  const std::string id = LineValue(created.out, "id:");
  ASSERT_EQ(id.rfind("key_", 0), 0u) << created.out;
  std::string secret;
  for (const std::string& line : Lines(created.out)) {
    if (line.rfind("sk-staple-", 0) == 0) secret = line;
  }
  ASSERT_EQ(secret.size(), 53u) << "the secret is on a line of its own:\n" << created.out;
  EXPECT_NE(created.out.find("secret"), std::string::npos) << "the secret is labelled";

  RunResult listed = Keys({"list"});
  EXPECT_NE(listed.out.find(id), std::string::npos) << listed.out;
  EXPECT_NE(listed.out.find("ci key"), std::string::npos) << listed.out;
  EXPECT_NE(listed.out.find("2030-01-02T03:04:05Z"), std::string::npos) << listed.out;
  EXPECT_NE(listed.out.find("gpt-4o-mini,llama3"), std::string::npos) << listed.out;
  EXPECT_NE(listed.out.find("5 per minute"), std::string::npos) << listed.out;

  Keys({"revoke", id});

  // Usage as the server would have flushed it.
  QuerySqlite(db_,
              "INSERT INTO api_key_usage (key_id, day, requests, prompt_tokens, completion_tokens) "
              "VALUES ('" +
                  id + "', '2026-01-02', 7, 70, 700)");
  RunResult shown = Keys({"show", id});
  EXPECT_EQ(LineValue(shown.out, "revoked:"), "yes") << shown.out;
  EXPECT_EQ(LineValue(shown.out, "name:"), "ci key") << shown.out;
  EXPECT_EQ(LineValue(shown.out, "token limits:"), "1000/day") << shown.out;
  EXPECT_EQ(LineValue(shown.out, "metadata:"), R"({"team":"ci"})") << shown.out;
  EXPECT_NE(shown.out.find("2026-01-02"), std::string::npos) << shown.out;
  EXPECT_NE(shown.out.find("700"), std::string::npos) << shown.out;

  const auto rows = QuerySqlite(db_, "SELECT secret_hash, revoked FROM api_keys");
  ASSERT_EQ(rows.size(), 1u) << rows.dump();
  const std::string hash = rows[0].value("secret_hash", "");
  ASSERT_EQ(hash.size(), 64u);
  EXPECT_EQ(rows[0].value("revoked", 0), 1);

  EXPECT_EQ(Occurrences(all_output_, secret), 1u) << all_output_;
  EXPECT_EQ(Occurrences(all_output_, hash), 0u) << all_output_;
}

TEST_F(KeysCliTest, UpdateChangesOnlyTheGivenFields) {
  RunResult created = Keys({"create", "--name", "first", "--expires-in-days", "3"});
  const std::string id = LineValue(created.out, "id:");
  ASSERT_FALSE(id.empty()) << created.out;
  EXPECT_NE(LineValue(created.out, "expires:"), "never");

  RunResult updated = Keys({"update", id, "--clear-expiry", "--request-limits", "9/hour"});
  EXPECT_EQ(LineValue(updated.out, "name:"), "first") << updated.out;
  EXPECT_EQ(LineValue(updated.out, "expires:"), "never") << updated.out;
  EXPECT_EQ(LineValue(updated.out, "request limits:"), "9/hour") << updated.out;
  EXPECT_EQ(LineValue(updated.out, "revoked:"), "no") << updated.out;
}

TEST_F(KeysCliTest, FailuresNameTheProblemWithTheirExitCode) {
  // Usage errors: 2.
  Keys({}, 2);
  RunResult no_name = Keys({"create"}, 2);
  EXPECT_NE(no_name.err.find("--name"), std::string::npos) << no_name.err;
  RunResult bad_limits = Keys({"create", "--name", "x", "--token-limits", "lots"}, 2);
  EXPECT_NE(bad_limits.err.find("token_limits"), std::string::npos) << bad_limits.err;
  RunResult bad_metadata = Keys({"create", "--name", "x", "--metadata", "[1]"}, 2);
  EXPECT_NE(bad_metadata.err.find("metadata"), std::string::npos) << bad_metadata.err;
  RunResult bad_time = Keys({"create", "--name", "x", "--expires-at", "next week"}, 2);
  EXPECT_NE(bad_time.err.find("--expires-at"), std::string::npos) << bad_time.err;
  Keys({"update", "key_0000000000000000", "--clear-expiry", "--expires-in-days", "2"}, 2);

  // Failures: 1.
  RunResult unknown = Keys({"show", "key_0000000000000000"}, 1);
  EXPECT_NE(unknown.err.find("key_0000000000000000"), std::string::npos) << unknown.err;
  Keys({"revoke", "key_0000000000000000"}, 1);
  RunResult listed = Keys({"list"});
  EXPECT_EQ(listed.out.find("key_"), std::string::npos) << "nothing was created: " << listed.out;

  // A database that cannot be opened.
  WriteFile(dir_ / "blocker", "a file where a folder should be");
  env_["STAPLE_DATABASE_URL"] = "sqlite:///" + (dir_ / "blocker" / "x.db").string();
  RunResult broken = Keys({"list"}, 1);
  EXPECT_FALSE(broken.err.empty());
}

}  // namespace
}  // namespace staple::testing
