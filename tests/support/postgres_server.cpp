#include "postgres_server.h"

#include <pwd.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <stdexcept>
#include <system_error>
#include <utility>
#include <vector>

namespace staple::testing {
namespace {

constexpr const char* kDefaultBin = "/usr/lib/postgresql/15/bin";
constexpr const char* kServerUser = "postgres";

// Hands `path` to the server's user when running as root.
void GiveToServerUser(const std::filesystem::path& path) {
  if (::geteuid() != 0) return;
  const passwd* entry = ::getpwnam(kServerUser);
  if (entry == nullptr) throw std::runtime_error("no `postgres` user to run PostgreSQL as");
  if (::chown(path.c_str(), entry->pw_uid, entry->pw_gid) != 0) {
    throw std::system_error(errno, std::generic_category(), "chown " + path.string());
  }
}

std::string Describe(const std::string& tool, const RunResult& result) {
  return tool + " failed (" +
         (result.status ? result.status->ToString() : std::string("timed out")) +
         "): " + result.out + result.err;
}

}  // namespace

PostgresServer::PostgresServer() : dir_("staple-pg") {
  const char* bin = std::getenv("STAPLE_PG_BIN");
  bin_ = bin != nullptr && *bin != '\0' ? bin : kDefaultBin;
  port_ = FreePort();

  std::filesystem::create_directories(dir_ / "sock");
  WriteFile(dir_ / "pwfile", password() + "\n");
  for (const auto& path : {dir_.path(), dir_ / "sock", dir_ / "pwfile"}) GiveToServerUser(path);

  RunTool("initdb",
          {"-D", (dir_ / "data").string(), "-U", user(), "--pwfile=" + (dir_ / "pwfile").string(),
           "-E", "UTF8", "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
           "--no-sync", "--no-instructions"},
          std::chrono::seconds(60));
  Start();
}

PostgresServer::~PostgresServer() {
  if (!running_) return;
  try {
    Stop();
  } catch (const std::exception&) {
    // Nothing more to do: the dir is removed anyway.
  }
}

RunResult PostgresServer::RunTool(const std::string& tool, const std::vector<std::string>& args,
                                  std::chrono::milliseconds timeout) {
  ProcessOptions options;
  const std::string path = (bin_ / tool).string();
  if (::geteuid() == 0) {
    options.executable = "/usr/sbin/runuser";
    options.args = {"-u", kServerUser, "--", path};
  } else {
    options.executable = path;
  }
  options.args.insert(options.args.end(), args.begin(), args.end());
  options.unset_env = {"PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"};
  options.env = {{"LC_ALL", "C"}};
  options.working_dir = dir_.path();
  options.output_dir = dir_ / "logs";
  options.name = tool + "-" + std::to_string(++runs_);
  RunResult result = RunToCompletion(std::move(options), timeout);
  if (!result.status || !result.status->Success()) {
    throw std::runtime_error(Describe(tool, result));
  }
  return result;
}

void PostgresServer::Start() {
  const std::string server_options = "-p " + std::to_string(port_) + " -k " +
                                     socket_dir().string() +
                                     " -c listen_addresses=127.0.0.1 -c fsync=off"
                                     " -c full_page_writes=off -c max_connections=200";
  RunTool("pg_ctl",
          {"start", "-w", "-t", "60", "-D", (dir_ / "data").string(), "-l",
           (dir_ / "postgres.log").string(), "-o", server_options},
          std::chrono::seconds(70));
  running_ = true;
}

void PostgresServer::Stop() {
  RunTool("pg_ctl", {"stop", "-w", "-t", "60", "-m", "immediate", "-D", (dir_ / "data").string()},
          std::chrono::seconds(70));
  running_ = false;
}

std::filesystem::path PostgresServer::socket_dir() const { return dir_ / "sock"; }

std::string PostgresServer::Url(const std::string& database) const {
  return "postgresql://" + user() + ":" + password() + "@127.0.0.1:" + std::to_string(port_) + "/" +
         database;
}

void PostgresServer::CreateDatabase(const std::string& name) {
  Psql("postgres", "CREATE DATABASE \"" + name + "\" OWNER " + user());
}

std::string PostgresServer::Psql(const std::string& database, const std::string& sql) {
  return RunTool("psql",
                 {"-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", socket_dir().string(),
                  "-p", std::to_string(port_), "-U", user(), "-d", database, "-c", sql},
                 std::chrono::seconds(30))
      .out;
}

}  // namespace staple::testing
