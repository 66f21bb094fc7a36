#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "process.h"
#include "temp_dir.h"

namespace staple::testing {

// A throwaway redis-server (/usr/bin/redis-server, or $REDIS_SERVER) on 127.0.0.1 and a free
// port, with its files in a temp dir and no persistence. Stop() and Start() keep the port, so a
// test can take Redis away and bring it back. Not thread-safe.
class RedisServer {
 public:
  // Starts the server and waits until it answers PING. Throws std::runtime_error on failure.
  RedisServer();
  // Kills the server if it still runs.
  ~RedisServer();
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  std::uint16_t port() const { return port_; }
  // "redis://127.0.0.1:PORT".
  std::string url() const;
  bool running() const { return process_ != nullptr; }

  // Starts the server again on the same port (after Stop()); waits until it answers PING.
  void Start();
  // SIGKILLs the server by its PID and reaps it (all data is lost, as in a crash).
  void Stop();
  // SIGSTOP / SIGCONT: the server keeps its connections but stops answering.
  void Pause();
  void Resume();

  // Sends one inline command (e.g. "SCRIPT FLUSH", "PTTL key") on a fresh connection and returns
  // the raw reply (first read, at most 64 KiB), or "" when the server does not answer.
  std::string Query(const std::string& inline_command) const;

 private:
  TempDir dir_;
  std::uint16_t port_ = 0;
  std::unique_ptr<Process> process_;
};

}  // namespace staple::testing
