#include "redis_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <stdexcept>
#include <thread>

namespace staple::testing {

namespace {

// One inline command on a fresh blocking connection (one second timeouts); the raw reply.
std::string Send(std::uint16_t port, const std::string& command) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  timeval timeout{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(port);
  std::string reply;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
    const std::string line = command + "\r\n";
    if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(line.size())) {
      std::string buffer(64 * 1024, '\0');
      const ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
      if (n > 0) reply.assign(buffer.data(), static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  return reply;
}

bool AnswersPing(std::uint16_t port) { return Send(port, "PING").rfind("+PONG", 0) == 0; }

std::string RedisBinary() {
  const char* env = std::getenv("REDIS_SERVER");
  return env != nullptr && *env != '\0' ? env : "/usr/bin/redis-server";
}

}  // namespace

RedisServer::RedisServer() : dir_("staple-redis"), port_(FreePort()) { Start(); }

RedisServer::~RedisServer() {
  if (process_) process_->Kill();
}

std::string RedisServer::url() const { return "redis://127.0.0.1:" + std::to_string(port_); }

void RedisServer::Start() {
  if (process_) return;
  ProcessOptions options;
  options.executable = RedisBinary();
  options.args = {"--port",
                  std::to_string(port_),
                  "--bind",
                  "127.0.0.1",
                  "--dir",
                  dir_.path().string(),
                  "--save",
                  "",
                  "--appendonly",
                  "no",
                  "--daemonize",
                  "no",
                  "--protected-mode",
                  "no"};
  options.output_dir = dir_.path();
  options.name = "redis-server";
  process_ = std::make_unique<Process>(std::move(options));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!AnswersPing(port_)) {
    if (!process_->Running()) {
      const std::string err = process_->Stdout() + process_->Stderr();
      process_.reset();
      throw std::runtime_error("redis-server exited at start: " + err);
    }
    if (std::chrono::steady_clock::now() > deadline) {
      process_.reset();
      throw std::runtime_error("redis-server did not answer PING within 10 s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void RedisServer::Stop() {
  if (!process_) return;
  process_->Signal(SIGCONT);  // a paused server must be able to die
  process_->Kill();
  process_.reset();
}

void RedisServer::Pause() {
  if (process_) process_->Signal(SIGSTOP);
}

void RedisServer::Resume() {
  if (process_) process_->Signal(SIGCONT);
}

std::string RedisServer::Query(const std::string& inline_command) const {
  return Send(port_, inline_command);
}

}  // namespace staple::testing
