#include "staple_server.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <thread>

#include "fake_openai.h"
#include "http_client.h"

extern char** environ;

namespace staple::testing {
namespace {

// Variables of the test's own environment that would change how the server behaves.
std::vector<std::string> InheritedVariablesToDrop() {
  std::vector<std::string> names;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    std::string item(*entry);
    std::string name = item.substr(0, item.find('='));
    if (name.starts_with("OPENAI_") || name.starts_with("STAPLE_")) names.push_back(name);
  }
  for (const char* proxy : {"http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                            "ALL_PROXY", "no_proxy", "NO_PROXY"}) {
    names.emplace_back(proxy);
  }
  return names;
}

ProcessOptions StapleProcess(const std::vector<std::string>& args,
                             const std::map<std::string, std::string>& env,
                             const std::filesystem::path& working_dir) {
  ProcessOptions process;
  process.executable = BuiltBinary("staple", "STAPLE_BIN");
  process.args = args;
  process.unset_env = InheritedVariablesToDrop();
  process.env = env;
  process.working_dir = working_dir;
  return process;
}

}  // namespace

std::map<std::string, std::string> UpstreamEnv(const FakeOpenAI& fake, const std::string& api_key) {
  return {{"OPENAI_BASE_URL", fake.base_url()}, {"OPENAI_API_KEY", api_key}};
}

StapleServer::StapleServer(StapleOptions options)
    : options_(std::move(options)), logs_("staple-logs") {
  if (options_.working_dir) {
    dir_ = *options_.working_dir;
  } else {
    own_dir_.emplace("staple-work");
    dir_ = own_dir_->path();
  }
  Start();
}

StapleServer::~StapleServer() {
  if (process_ && process_->Running()) {
    process_->Signal(SIGTERM);
    if (!process_->Wait(std::chrono::seconds(5))) process_->Kill();
  }
}

void StapleServer::Start() {
  ++runs_;
  port_ = FreePort();
  std::vector<std::string> args = {"serve", "--host", "127.0.0.1", "--port", std::to_string(port_)};
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  ProcessOptions process = StapleProcess(args, options_.env, dir_);
  process.output_dir = logs_.path();
  process.name = "staple-" + std::to_string(runs_);
  process_ = std::make_unique<Process>(std::move(process));

  HttpClient client(std::chrono::milliseconds(500));
  const auto deadline = std::chrono::steady_clock::now() + options_.ready_timeout;
  std::string last_error;
  while (std::chrono::steady_clock::now() < deadline) {
    HttpResponse response = client.Get(url() + "/healthz");
    if (response.status == 200) return;
    last_error =
        response.status != 0 ? "status " + std::to_string(response.status) : response.error;
    if (!process_->Running()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const std::string why = process_->Running() ? "not ready (last /healthz: " + last_error + ")"
                                              : process_->status()->ToString();
  process_->Kill();
  ADD_FAILURE() << "staple did not start: " << why << "\nstderr:\n" << process_->Stderr();
  throw std::runtime_error("staple did not start: " + why);
}

std::string StapleServer::url() const { return "http://127.0.0.1:" + std::to_string(port_); }

pid_t StapleServer::pid() const { return process_->pid(); }

std::filesystem::path StapleServer::database_path() const {
  return dir_ / "instance" / "chat_history.db";
}

std::string StapleServer::Stdout() const { return process_->Stdout(); }

std::string StapleServer::Stderr() const { return process_->Stderr(); }

std::string StapleServer::AllStderr() const {
  std::string all;
  for (int run = 1; run <= runs_; ++run) {
    all += ReadFile(logs_.path() / ("staple-" + std::to_string(run) + ".stderr.log"));
  }
  return all;
}

bool StapleServer::Running() { return process_->Running(); }

ExitStatus StapleServer::Stop(int signal, std::chrono::milliseconds timeout) {
  if (process_->Running()) process_->Signal(signal);
  std::optional<ExitStatus> status = process_->Wait(timeout);
  if (!status) {
    ADD_FAILURE() << "staple did not exit within " << timeout.count() << " ms after signal "
                  << signal << "; killing it";
    return process_->Kill();
  }
  return *status;
}

void StapleServer::Restart() {
  if (process_->Running()) Stop();
  Start();
}

RunResult RunStaple(const std::vector<std::string>& args,
                    const std::map<std::string, std::string>& env,
                    const std::filesystem::path& working_dir, std::chrono::milliseconds timeout) {
  return RunToCompletion(StapleProcess(args, env, working_dir), timeout);
}

nlohmann::json QuerySqlite(const std::filesystem::path& db, const std::string& sql) {
  ProcessOptions process;
  process.executable = "sqlite3";
  process.args = {"-init", "/dev/null", "-json", db.string(), sql};
  RunResult result = RunToCompletion(std::move(process), std::chrono::seconds(10));
  if (!result.status || !result.status->Success()) {
    ADD_FAILURE() << "sqlite3 " << db << " \"" << sql << "\" failed ("
                  << (result.status ? result.status->ToString() : "timeout") << "): " << result.err;
    return nlohmann::json::array();
  }
  if (result.out.find_first_not_of(" \r\n\t") == std::string::npos) {
    return nlohmann::json::array();
  }
  nlohmann::json rows = nlohmann::json::parse(result.out, nullptr, false);
  if (rows.is_discarded()) {
    ADD_FAILURE() << "sqlite3 printed something that is not JSON: " << result.out.substr(0, 500);
    return nlohmann::json::array();
  }
  return rows;
}

}  // namespace staple::testing
