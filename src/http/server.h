#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/ip_networks.h"
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
  std::chrono::milliseconds idle_timeout{60'000};  // keep-alive wait for the next request
  // From the first byte of a request head to its end: a head sent a byte at a time is answered
  // 408 and the connection closed once this passes.
  std::chrono::milliseconds header_timeout{10'000};
  std::chrono::milliseconds read_timeout{30'000};   // reading one request body once the head came
  std::chrono::milliseconds write_timeout{30'000};  // writing one response (or one stream chunk)
  bool access_log = true;
  // Open client connections allowed over all I/O threads (default for a process: see
  // http/connection_limits.h). At the cap a new connection takes the
  // place of the connection that has been idle longest (waiting for its next request); when none
  // is idle it is answered 503 and closed. 0: no cap.
  std::size_t max_connections = 0;
  // Open connections one peer address may hold; beyond it the peer's own longest-idle connection
  // makes room, else the new one is answered 503. 0: no share (only the cap).
  std::size_t max_connections_per_peer = 0;
  // Peers exempt from the share (IP addresses or CIDR networks, e.g. trusted proxies, which carry
  // many clients); entries that do not parse are ignored (config validates them).
  std::vector<std::string> unshared_peers;
};

// The HTTP/1.1 listener: N threads, each running its own io_context with its own listener on the
// same port (SO_REUSEPORT), serving keep-alive connections with Beast and C++20 coroutines.
// Every request gets an X-Request-Id, an access-log line and a metrics sample. An exception that
// escapes a route handler is logged, counted (staple_handler_exceptions_total) and answered 500 in
// the router's error shape; when it escapes a streamed body, whose status already went out, the
// body is cut short and the connection closed.
//
// Every connection counts against ServerOptions::max_connections and its peer's share from accept
// to close; the count is exact over all threads (one mutex-guarded table, touched once at accept
// and once at close). A connection waiting for its next request (none in flight, no byte of the
// next head yet) is idle and may be closed to make room: its buffer is released while it waits.
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

  // Connections idle now (waiting for their next request), over all threads. A connection turns
  // idle on its own thread just after its answer was written, so a client that read the answer
  // may see it still busy for a moment. Any thread.
  std::size_t idle_connections() const { return idle_.load(std::memory_order_relaxed); }

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
  // Why a connection could not be admitted.
  enum class Refusal { kNone, kCapacity, kPeer };
  // Takes a slot for a connection of `peer` (its count and the total), or says which limit is
  // reached. Any thread.
  Refusal Reserve(const std::string& peer);
  // Gives back the slot of a connection of `peer`. Any thread.
  void Release(const std::string& peer);
  // A connection refused by Reserve: makes room by closing an idle connection (the peer's own
  // when its share is the limit) and serves it, else answers 503 and closes it.
  net::awaitable<void> Admit(Worker& worker, net::ip::tcp::socket socket, std::string peer,
                             Refusal refusal);
  // Runs on worker `index`'s thread: closes its longest-idle connection (of `peer` when not
  // empty), or passes the request on to the next worker; `done(closed)` runs on `origin` once a
  // connection was closed or every worker was asked (`left` counts the workers still to ask).
  void EvictIdle(std::size_t index, std::size_t left, std::string peer, Worker& origin,
                 std::function<void(bool)> done);
  // Index of the worker whose idle connection has waited longest (or `fallback` when none has).
  std::size_t OldestIdleWorker(std::size_t fallback) const;
  // Writes a 503 on a refused connection, waits briefly for the client to read it, closes it.
  net::awaitable<void> Refuse(Worker& worker, net::ip::tcp::socket socket, Refusal refusal);
  net::awaitable<void> Serve(Worker& worker, net::ip::tcp::socket socket, std::string peer);
  // Returns freed heap memory to the system after many connections closed (rate-limited).
  void TrimMemory();
  // The request's log line: the access line (STAPLE_ACCESS_LOG) with what its note says, or, for
  // a request that failed (its note's failure, or a 5xx answer's reason), a warn line with the
  // reason whether the access log is on or not.
  void LogRequest(const Request& request, const Response& response, double seconds,
                  const std::string& peer, bool stream_cut) const;
  // Logs and counts an exception that escaped the route handler of `request`.
  void HandlerFailed(const Request& request, const std::exception_ptr& error);

  // Constant after construction.
  const ServerOptions options_;
  const Router& router_;
  observe::Metrics& metrics_;

  std::vector<std::unique_ptr<Worker>> workers_;
  std::uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> sessions_{0};  // open connections over all workers (written under slots_mutex_)
  std::atomic<std::size_t> idle_{0};  // idle connections over all workers

  // Connection slots: the total is sessions_, the per-peer counts are here (only peers with an
  // open connection have an entry).
  std::mutex slots_mutex_;
  std::unordered_map<std::string, std::size_t> peer_connections_;  // guarded by slots_mutex_
  const IpNetworks unshared_;  // peers without a share (ServerOptions::unshared_peers)

  std::atomic<int> lingering_{0};  // refused connections being drained (Refuse)

  // Memory trimming (TrimMemory, worker 0's thread only): the highest connection count since the
  // last trim, when that was, and the count at the previous sweep.
  std::atomic<int> high_water_{0};
  std::chrono::steady_clock::time_point last_trim_{};
  int open_at_last_sweep_ = 0;  // guarded by slots_mutex_
};

}  // namespace staple::http
