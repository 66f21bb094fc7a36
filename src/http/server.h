#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/net.h"
#include "common/result.h"
#include "http/router.h"
#include "observe/log.h"
#include "observe/metrics.h"

namespace staple::http {

struct ServerOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 5000;  // 0: pick a free port (see Server::port())
  int threads = 1;            // I/O threads, one io_context and one SO_REUSEPORT listener each
  std::size_t max_body_bytes = 1024 * 1024;
  std::size_t max_header_bytes = 16 * 1024;
  // Deadlines are enforced by a sweep about once a second, so they end an operation up to a second
  // late.
  std::chrono::milliseconds idle_timeout{60'000};   // keep-alive wait for the next request
  std::chrono::milliseconds read_timeout{30'000};   // reading one request once it started
  std::chrono::milliseconds write_timeout{30'000};  // writing one response (or one stream chunk)
  bool access_log = true;
};

// The HTTP/1.1 listener: N threads, each running its own io_context with its own listener on the
// same port (SO_REUSEPORT), serving keep-alive connections with Beast and C++20 coroutines.
// Every request gets an X-Request-Id, an access-log line and a metrics sample. An exception that
// escapes a route handler is logged, counted (staple_handler_exceptions_total) and answered 500 in
// the router's error shape; when it escapes a streamed body, whose status already went out, the
// body is cut short and the connection closed.
//
// Lifetime: construct, Start(), then Shutdown() from another thread (e.g. the signal waiter);
// the router and metrics must outlive the server, and every route is added before Start() (which
// hands the router's route labels to the metrics). Requests still suspended after Shutdown's grace
// are destroyed with the server, so whatever their handlers use must outlive it too.
class Server {
 public:
  Server(ServerOptions options, const Router& router, observe::Metrics& metrics);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the listeners; fails with a clear message when the address is taken or invalid. Does not
  // run anything yet.
  Status Bind();
  // The io_contexts, one per I/O thread, valid after Bind() (for back ends that live per thread).
  std::vector<net::io_context*> contexts();
  // Starts the I/O threads.
  void Start();
  std::uint16_t port() const { return port_; }

  // Graceful stop: closes the listeners, closes idle connections, lets in-flight requests finish
  // (answers then carry Connection: close) for up to `grace`, then stops the threads. Blocking;
  // call from a non-I/O thread, once.
  void Shutdown(std::chrono::milliseconds grace);

 private:
  struct Worker;
  struct Session;

  net::awaitable<void> Accept(Worker& worker);
  // Closes the connections of `worker` whose read or write deadline passed, about once a second.
  net::awaitable<void> Sweep(Worker& worker);
  net::awaitable<void> Serve(Worker& worker, net::ip::tcp::socket socket);
  // Logs and counts an exception that escaped the route handler of `request`.
  void HandlerFailed(const Request& request, const std::exception_ptr& error);

  // Constant after construction.
  const ServerOptions options_;
  const Router& router_;
  observe::Metrics& metrics_;

  std::vector<std::unique_ptr<Worker>> workers_;
  std::uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> sessions_{0};  // open connections over all workers
};

}  // namespace staple::http
