#include "process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <system_error>
#include <thread>

#include "temp_dir.h"

extern char** environ;

namespace staple::testing {
namespace {

// The executable to pass to execve: names without a slash are looked up in $PATH here, before
// fork, because the child may only make async-signal-safe calls.
std::string ResolveExecutable(const std::filesystem::path& executable) {
  const std::string name = executable.string();
  if (name.find('/') != std::string::npos) return name;
  const char* path_env = std::getenv("PATH");
  std::string paths = path_env != nullptr ? path_env : "/usr/local/bin:/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= paths.size()) {
    std::size_t end = paths.find(':', start);
    if (end == std::string::npos) end = paths.size();
    std::filesystem::path candidate =
        std::filesystem::path(paths.substr(start, end - start)) / name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    start = end + 1;
  }
  return name;
}

std::vector<std::string> BuildEnvironment(const ProcessOptions& options) {
  std::map<std::string, std::string> env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    std::string item(*entry);
    std::size_t eq = item.find('=');
    if (eq == std::string::npos) continue;
    env[item.substr(0, eq)] = item.substr(eq + 1);
  }
  for (const auto& name : options.unset_env) env.erase(name);
  for (const auto& [name, value] : options.env) env[name] = value;
  std::vector<std::string> out;
  out.reserve(env.size());
  for (const auto& [name, value] : env) out.push_back(name + "=" + value);
  return out;
}

std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Reports errno to the parent through `error_fd` and ends the forked child.
[[noreturn]] void FailChild(int error_fd) {
  int error = errno;
  ssize_t ignored = ::write(error_fd, &error, sizeof error);
  (void)ignored;
  ::_exit(127);
}

// Runs in the forked child: only async-signal-safe calls until execve.
[[noreturn]] void ExecChild(pid_t parent, int error_fd, const char* dir, const char* out_path,
                            const char* err_path, const char* executable, char** argv,
                            char** envp) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(126);  // the parent died before prctl

  // Undo what the test process may have changed: blocked and ignored signals are inherited.
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction default_action;
  std::memset(&default_action, 0, sizeof default_action);
  default_action.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &default_action, nullptr);

  if (dir != nullptr && ::chdir(dir) != 0) FailChild(error_fd);
  int null_fd = ::open("/dev/null", O_RDONLY);
  int out_fd = ::open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int err_fd = ::open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (null_fd < 0 || out_fd < 0 || err_fd < 0) FailChild(error_fd);
  if (::dup2(null_fd, 0) < 0 || ::dup2(out_fd, 1) < 0 || ::dup2(err_fd, 2) < 0) FailChild(error_fd);
  // Descriptors the test process left open (sockets, files) must not leak into the child.
  for (int fd = 3; fd < 1024; ++fd) {
    if (fd != error_fd) ::close(fd);
  }
  ::execve(executable, argv, envp);
  FailChild(error_fd);
}

}  // namespace

std::string ExitStatus::ToString() const {
  if (signal != 0) return "killed by signal " + std::to_string(signal);
  return "exit code " + std::to_string(code);
}

Process::Process(ProcessOptions options) : options_(std::move(options)) {
  if (options_.output_dir.empty())
    throw std::invalid_argument("ProcessOptions.output_dir is empty");
  std::filesystem::create_directories(options_.output_dir);

  const std::string executable = ResolveExecutable(options_.executable);
  std::vector<std::string> args;
  args.push_back(options_.executable.string());
  args.insert(args.end(), options_.args.begin(), options_.args.end());
  std::vector<char*> argv = Pointers(args);
  std::vector<std::string> env = BuildEnvironment(options_);
  std::vector<char*> envp = Pointers(env);
  const std::string dir = options_.working_dir.string();
  const std::string out_path = stdout_path().string();
  const std::string err_path = stderr_path().string();

  int error_pipe[2];
  if (::pipe2(error_pipe, O_CLOEXEC) != 0) {
    throw std::system_error(errno, std::generic_category(), "pipe2");
  }
  const pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ < 0) {
    int error = errno;
    ::close(error_pipe[0]);
    ::close(error_pipe[1]);
    throw std::system_error(error, std::generic_category(), "fork");
  }
  if (pid_ == 0) {
    ::close(error_pipe[0]);
    ExecChild(parent, error_pipe[1], dir.empty() ? nullptr : dir.c_str(), out_path.c_str(),
              err_path.c_str(), executable.c_str(), argv.data(), envp.data());
  }

  // The pipe closes on a successful execve; otherwise the child reports errno through it.
  ::close(error_pipe[1]);
  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(error_pipe[0], &child_errno, sizeof child_errno);
  } while (n < 0 && errno == EINTR);
  ::close(error_pipe[0]);
  if (n > 0) {
    Reap(true);
    throw std::runtime_error("cannot start " + executable + ": " + std::strerror(child_errno));
  }
}

Process::~Process() {
  if (!status_) Kill();
}

std::filesystem::path Process::stdout_path() const {
  return options_.output_dir / (options_.name + ".stdout.log");
}

std::filesystem::path Process::stderr_path() const {
  return options_.output_dir / (options_.name + ".stderr.log");
}

std::string Process::Stdout() const { return ReadFile(stdout_path()); }

std::string Process::Stderr() const { return ReadFile(stderr_path()); }

bool Process::Reap(bool block) {
  if (status_) return true;
  int raw = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &raw, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r != pid_) return false;
  ExitStatus status;
  if (WIFEXITED(raw)) {
    status.code = WEXITSTATUS(raw);
  } else if (WIFSIGNALED(raw)) {
    status.signal = WTERMSIG(raw);
  }
  status_ = status;
  return true;
}

bool Process::Running() { return !Reap(false); }

bool Process::Signal(int signal) {
  if (!Running()) return false;
  return ::kill(pid_, signal) == 0;
}

std::optional<ExitStatus> Process::Wait(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!Reap(false)) {
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return status_;
}

ExitStatus Process::Kill() {
  if (!Reap(false)) {
    ::kill(pid_, SIGKILL);
    Reap(true);
  }
  return *status_;
}

RunResult RunToCompletion(ProcessOptions options, std::chrono::milliseconds timeout) {
  std::optional<TempDir> scratch;
  if (options.output_dir.empty()) {
    scratch.emplace("staple-run");
    options.output_dir = scratch->path();
  }
  Process process(std::move(options));
  RunResult result;
  result.status = process.Wait(timeout);
  if (!result.status) process.Kill();
  result.out = process.Stdout();
  result.err = process.Stderr();
  return result;
}

std::filesystem::path BuiltBinary(const std::string& name, const std::string& env_name) {
  const char* from_env = std::getenv(env_name.c_str());
  if (from_env != nullptr && *from_env != '\0') return from_env;
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const auto& dir : {self.parent_path().parent_path(), self.parent_path()}) {
      const std::filesystem::path candidate = dir / name;
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
  }
  return name;
}

std::uint16_t FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "socket");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    int error = errno;
    ::close(fd);
    throw std::system_error(error, std::generic_category(), "bind 127.0.0.1:0");
  }
  ::close(fd);
  return ntohs(address.sin_port);
}

}  // namespace staple::testing
