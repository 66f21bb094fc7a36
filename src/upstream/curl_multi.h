#pragma once

#include <curl/curl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/net.h"
#include "common/result.h"

namespace staple::upstream {

class CurlTransfer;

// One libcurl multi handle run by one io_context: its connection pool (keep-alive, HTTP/2
// multiplexing) and the transfers it runs, driven by that io_context through libcurl's
// multi_socket API: libcurl says which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when to
// call back (CURLMOPT_TIMERFUNCTION); Asio waits and calls curl_multi_socket_action.
//
// An io_context has a few of them, its lanes (CurlMultiSet): libcurl 7.88 walks every connection
// of a multi handle on each finished transfer and on each connection lookup, so one handle with
// thousands of connections spends more time walking lists than moving bytes. Of() picks the lane
// a new transfer runs on.
//
// Threading: the io_context must be run by one thread; every member is used on that thread.
class CurlMulti {
 public:
  explicit CurlMulti(net::io_context& io);
  ~CurlMulti();
  CurlMulti(const CurlMulti&) = delete;
  CurlMulti& operator=(const CurlMulti&) = delete;

  // Initialises libcurl for the process (once; later calls do nothing). Throws std::runtime_error
  // when libcurl cannot be initialised. Of() calls it; calling it at start-up keeps the cost there.
  static void GlobalInit();

  // The lane of the io_context behind `executor` (an io_context executor or a strand of one)
  // that the next transfer should run on (CurlMultiSet::Pick). Throws std::logic_error for any
  // other executor (a programming error).
  static CurlMulti& Of(const net::any_io_executor& executor);

  // Transfers running now.
  std::size_t running() const { return running_.size(); }

  net::any_io_executor executor() const { return executor_; }

  // Hands the transfer to libcurl, which starts it on the next turn of the io_context. The multi
  // keeps a reference until the transfer finishes or Stop(). Errors: kCancelled (the io_context is
  // shutting down), kInternal.
  Status Start(std::shared_ptr<CurlTransfer> transfer);

  // Takes a running transfer away from libcurl; no effect if it is not running. Must not be called
  // from inside a libcurl callback.
  void Stop(CurlTransfer& transfer);

  // The io_context is going away: every transfer is finished without resuming anyone, and
  // libcurl's sockets are handed back before libcurl closes them. Later Start()s fail.
  void Cleanup();

 private:
  struct Socket;

  static int SocketCallback(CURL* easy, curl_socket_t fd, int what, void* self, void* socket_data);
  static curl_socket_t OpenSocketCallback(void* self, curlsocktype purpose,
                                          struct curl_sockaddr* address);
  static int CloseSocketCallback(void* self, curl_socket_t fd);
  // Stops watching `fd` (libcurl is closing it).
  void Forget(curl_socket_t fd);
  static int TimerCallback(CURLM* multi, long timeout_ms, void* self);
  void Watch(curl_socket_t fd, int what);
  void Arm(curl_socket_t fd, const std::shared_ptr<Socket>& socket);
  void Rearm(curl_socket_t fd, const std::shared_ptr<Socket>& socket);
  void OnReady(curl_socket_t fd, const std::shared_ptr<Socket>& socket, int event);
  void ArmTimer(std::chrono::steady_clock::time_point at);
  void OnTimerExpired();
  void OnTimer();
  void CollectDone();

  net::any_io_executor executor_;
  CURLM* multi_ = nullptr;
  // libcurl's timer: when it wants curl_multi_socket_action(CURL_SOCKET_TIMEOUT); none when unset.
  std::optional<std::chrono::steady_clock::time_point> due_;
  bool run_posted_ = false;  // a 0 ms timeout is posted to the io_context, not waited for
  // The wait on timer_, when one is pending. It may be earlier than due_ (libcurl moved its timer
  // later): it then only re-arms for due_. `timer_generation_` tells the latest wait from
  // superseded ones.
  net::steady_timer timer_;
  bool timer_pending_ = false;
  std::chrono::steady_clock::time_point timer_at_;
  std::uint64_t timer_generation_ = 0;
  std::unordered_map<curl_socket_t, std::shared_ptr<Socket>> sockets_;
  // Connection sockets opened through OpenSocketCallback and not closed yet: libcurl closes them
  // through CloseSocketCallback, so their reactor registration can outlive CURL_POLL_REMOVE.
  std::unordered_set<curl_socket_t> owned_;
  std::unordered_map<CURL*, std::shared_ptr<CurlTransfer>> running_;
  bool shut_down_ = false;
};

// The lanes of one io_context: an Asio service of it, created on first use, shut down and
// destroyed with it. Every CurlClient shares it, so all upstream connections of one I/O thread
// form one set of pools.
class CurlMultiSet : public net::execution_context::service {
 public:
  static net::execution_context::id id;

  // A lane keeps up to this many transfers before the next lane is used. Under it, one lane (one
  // pool) serves everything, as a single multi handle would.
  static constexpr std::size_t kLaneTransfers = 256;
  // Lanes per io_context at most; beyond kLaneTransfers * kMaxLanes the least busy lane is used.
  static constexpr std::size_t kMaxLanes = 64;

  explicit CurlMultiSet(net::io_context& io);
  ~CurlMultiSet() override;

  // The first lane with fewer than kLaneTransfers transfers (created when none has room), so the
  // low lanes and their warm connections are used first; the least busy one when all are full.
  CurlMulti& Pick();

  std::size_t lanes() const { return lanes_.size(); }

 private:
  void shutdown() override;

  net::io_context& io_;
  std::vector<std::unique_ptr<CurlMulti>> lanes_;
};

}  // namespace staple::upstream
