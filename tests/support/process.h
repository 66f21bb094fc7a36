#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace staple::testing {

// How a child process ended: exited with `code`, or was killed by `signal`.
struct ExitStatus {
  int code = -1;   // exit code when signal == 0
  int signal = 0;  // terminating signal, 0 when the process exited

  bool Exited() const { return signal == 0; }
  bool Success() const { return signal == 0 && code == 0; }
  std::string ToString() const;
};

struct ProcessOptions {
  std::filesystem::path executable;
  std::vector<std::string> args;           // without argv[0]
  std::map<std::string, std::string> env;  // set on top of the current environment
  std::vector<std::string> unset_env;      // removed from the current environment first
  std::filesystem::path working_dir;       // empty: the current directory
  std::filesystem::path output_dir;        // where <name>.stdout.log / .stderr.log go
  std::string name = "process";            // prefix of the log files
};

// A child process with stdout and stderr redirected to files. The child gets SIGKILL when the
// process that started it dies (so a crashed test leaves nothing behind). Not thread-safe: use a
// Process from one thread, or guard it.
class Process {
 public:
  // Spawns the child. Throws std::runtime_error when it cannot be started (including when the
  // executable cannot be run).
  explicit Process(ProcessOptions options);
  // SIGKILLs and reaps the child if it is still running.
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  const ProcessOptions& options() const { return options_; }
  std::filesystem::path stdout_path() const;
  std::filesystem::path stderr_path() const;
  std::string Stdout() const;
  std::string Stderr() const;

  // True while the child has not been reaped and has not exited.
  bool Running();
  // Sends `signal` to a running child; false when it already ended.
  bool Signal(int signal);
  // Waits up to `timeout` for the child to end; its status, or nullopt on timeout.
  std::optional<ExitStatus> Wait(std::chrono::milliseconds timeout);
  // SIGKILLs the child if it runs, reaps it, and returns how it ended.
  ExitStatus Kill();
  // The status once the child has been reaped.
  const std::optional<ExitStatus>& status() const { return status_; }

 private:
  bool Reap(bool block);

  ProcessOptions options_;
  pid_t pid_ = -1;
  std::optional<ExitStatus> status_;
};

// Runs a process to completion (killing it after `timeout`) and returns its status and output.
struct RunResult {
  std::optional<ExitStatus> status;  // nullopt when it had to be killed after the timeout
  std::string out;
  std::string err;
};
RunResult RunToCompletion(ProcessOptions options, std::chrono::milliseconds timeout);

// Path of a binary built by this project (`staple`, `fake_openai`): the environment variable
// `env_name` when set (e.g. STAPLE_BIN, to test another build), else `<build dir>/<name>`, where
// the build dir is the parent of the directory holding the running test executable (tests/ of the
// build tree). Falls back to `name` (looked up in $PATH).
std::filesystem::path BuiltBinary(const std::string& name, const std::string& env_name);

// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).
std::uint16_t FreePort();

}  // namespace staple::testing
