#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "process.h"
#include "temp_dir.h"

namespace staple::testing {

class FakeOpenAI;

// The API key the tests give the gateway; it must never show up in a response or a log line.
inline constexpr const char* kTestApiKey = "sk-test-SECRET-1234567890";

// OPENAI_BASE_URL pointing at `fake` and OPENAI_API_KEY = `api_key`.
std::map<std::string, std::string> UpstreamEnv(const FakeOpenAI& fake,
                                               const std::string& api_key = kTestApiKey);

struct StapleOptions {
  // Environment of the server. Inherited OPENAI_*, STAPLE_* and proxy variables are removed
  // first, so only these (and .env files in the working directory) configure it.
  std::map<std::string, std::string> env;
  std::vector<std::string> extra_args;  // appended to `serve --host 127.0.0.1 --port P`
  // The server's working directory; a fresh TempDir when unset.
  std::optional<std::filesystem::path> working_dir;
  std::chrono::milliseconds ready_timeout = std::chrono::seconds(10);
};

// The `staple` binary (BuiltBinary("staple", "STAPLE_BIN")) serving on a free port of 127.0.0.1.
// The constructor starts it and waits until GET /healthz answers 200; when it does not, the test
// fails with the server's stderr and the constructor throws. The destructor stops a running server
// (SIGTERM, then SIGKILL after 5 s). Use from one thread.
class StapleServer {
 public:
  explicit StapleServer(StapleOptions options = {});
  ~StapleServer();
  StapleServer(const StapleServer&) = delete;
  StapleServer& operator=(const StapleServer&) = delete;

  // http://127.0.0.1:PORT of the current run.
  std::string url() const;
  std::uint16_t port() const { return port_; }
  pid_t pid() const;
  const std::filesystem::path& working_dir() const { return dir_; }
  // <working dir>/instance/chat_history.db (the default database).
  std::filesystem::path database_path() const;

  // Output of the current (or last) run, and stderr of every run joined.
  std::string Stdout() const;
  std::string Stderr() const;
  std::string AllStderr() const;

  bool Running();
  // Sends `signal` and waits up to `timeout` for the exit. On timeout the test fails and the
  // server is killed. Returns how it ended.
  ExitStatus Stop(int signal = SIGTERM,
                  std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Stop() if running, then start again on the same working directory (new port), and wait
  // until ready. Throws like the constructor.
  void Restart();

  Process& process() { return *process_; }

 private:
  void Start();

  StapleOptions options_;
  std::optional<TempDir> own_dir_;
  std::filesystem::path dir_;
  TempDir logs_;
  std::unique_ptr<Process> process_;
  std::uint16_t port_ = 0;
  int runs_ = 0;
};

// Runs `staple <args>` in `working_dir` with the same clean environment as StapleServer, to
// completion (killed after `timeout`). For start-up failures and other one-shot commands.
RunResult RunStaple(const std::vector<std::string>& args,
                    const std::map<std::string, std::string>& env,
                    const std::filesystem::path& working_dir,
                    std::chrono::milliseconds timeout = std::chrono::seconds(10));

// Runs `sqlite3 -json <db> <sql>` and returns the rows (an empty array when there are none).
// Fails the test (and returns an empty array) when sqlite3 fails.
nlohmann::json QuerySqlite(const std::filesystem::path& db, const std::string& sql);

}  // namespace staple::testing
