#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/net.h"
#include "common/result.h"

struct redisAsyncContext;

namespace staple::ratelimit {

// A Redis reply, copied out of hiredis so it outlives the callback.
struct RedisReply {
  enum class Type { kString, kStatus, kError, kInteger, kNil, kArray };
  Type type = Type::kNil;
  std::string str;                   // kString, kStatus, kError
  long long integer = 0;             // kInteger
  std::vector<RedisReply> elements;  // kArray
};

struct RedisConnectionSettings {
  std::string host;
  std::uint16_t port = 6379;
  int db = 0;
  std::string username;  // AUTH username password when both are set (Redis 6 ACL users)
  std::string password;  // AUTH password when set
  std::chrono::milliseconds timeout{500};
  std::chrono::milliseconds backoff_initial{50};
  std::chrono::milliseconds backoff_max{2000};
};

// One hiredis async connection driven by an Asio io_context (the adapter installs hiredis' event
// hooks as waits on the socket). Every method must run on the thread that runs `io`.
//
// Execute() connects first when there is no connection (unless a backoff after a failure is
// still running: then it fails at once), sends the command (pipelined behind earlier ones) and
// calls `done` exactly once, on the io thread: with the reply, with kUnavailable "rate limit
// storage timed out" when the deadline passed first, or with kUnavailable when the connection
// failed or was lost. A timeout drops the connection; the next call reconnects.
class RedisConnection {
 public:
  using Callback = std::function<void(Result<RedisReply>)>;

  RedisConnection(net::io_context& io, RedisConnectionSettings settings);
  // Frees the connection; commands still waiting complete with kUnavailable.
  ~RedisConnection();
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  void Execute(std::vector<std::string> argv, Callback done);

 private:
  struct Pending;
  struct Watcher;

  void Connect();
  // Frees the hiredis context now (pending commands complete with kUnavailable).
  void Drop();
  // Called from the cleanup hook: the context is going away, whoever freed it.
  void OnContextGone();
  bool Send(const std::vector<std::string>& argv, std::shared_ptr<Pending> pending);

  static void OnReply(redisAsyncContext* context, void* reply, void* privdata);
  static void OnConnect(const redisAsyncContext* context, int status);

  // Constant after construction.
  net::io_context& io_;
  const RedisConnectionSettings settings_;
  // Used on the io thread only.
  redisAsyncContext* context_ = nullptr;
  std::shared_ptr<Watcher> watcher_;
  std::chrono::steady_clock::time_point next_attempt_{};
  std::chrono::milliseconds backoff_;
  bool closing_ = false;
  std::string setup_error_;  // why AUTH or SELECT failed on the current connection
};

}  // namespace staple::ratelimit
