#include "upstream/curl_multi.h"

#include <sys/socket.h>
#include <unistd.h>

#include <stdexcept>
#include <utility>

#include "upstream/curl_transfer.h"

namespace staple::upstream {
namespace {

// Idle connections kept per lane. Transfers themselves are not limited: a request never queues
// inside libcurl, where none of our deadlines would watch it. Over HTTP/1.1 each concurrent
// upstream request needs a connection of its own; keeping too few made every burst close and
// reopen thousands of them (bench/run concurrency, 5000 clients on a 500 ms upstream, one lane
// per thread: 256 kept -> 0.24x of direct, 4096 -> 0.55x). A lane runs about kLaneTransfers at
// once, so twice that covers its bursts.
constexpr long kMaxCachedConnections = 2 * static_cast<long>(CurlMultiSet::kLaneTransfers);

}  // namespace

net::execution_context::id CurlMultiSet::id;

// The first lane is made here, not on first use: its timer registers the io_context's timer service
// while this service is being constructed, so that service is older than this one and is
// destroyed after it (services go in reverse order of creation), when the lanes' timers die.
CurlMultiSet::CurlMultiSet(net::io_context& io) : net::execution_context::service(io), io_(io) {
  lanes_.push_back(std::make_unique<CurlMulti>(io_));
}

CurlMultiSet::~CurlMultiSet() { shutdown(); }

// The io_context is being destroyed. It runs no more handlers, and the coroutines that wait for
// our transfers are destroyed after this (with the handlers that hold them).
void CurlMultiSet::shutdown() {
  for (auto& lane : lanes_) lane->Cleanup();
}

CurlMulti& CurlMultiSet::Pick() {
  CurlMulti* least = nullptr;
  for (auto& lane : lanes_) {
    if (lane->running() < kLaneTransfers) return *lane;
    if (least == nullptr || lane->running() < least->running()) least = lane.get();
  }
  if (lanes_.size() < kMaxLanes) {
    lanes_.push_back(std::make_unique<CurlMulti>(io_));
    return *lanes_.back();
  }
  return *least;
}

// A socket libcurl asked us to watch. `descriptor` borrows the fd: libcurl owns it and closes it
// itself, after telling us CURL_POLL_REMOVE, at which point we release() it (never close()).
struct CurlMulti::Socket {
  explicit Socket(const net::any_io_executor& executor) : descriptor(executor) {}
  net::posix::stream_descriptor descriptor;
  int wanted = CURL_POLL_NONE;  // what libcurl wants to know: CURL_POLL_IN / _OUT / _INOUT
  bool reading = false;         // an async_wait(wait_read) is pending
  bool writing = false;         // an async_wait(wait_write) is pending
  bool closed = false;          // released: pending waits are stale
  bool owned = false;           // opened by OpenSocketCallback: see CurlMulti::owned_
};

void CurlMulti::GlobalInit() {
  static const CURLcode code = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (code != CURLE_OK) throw std::runtime_error("curl_global_init failed");
}

CurlMulti& CurlMulti::Of(const net::any_io_executor& executor) {
  GlobalInit();
  using IoExecutor = net::io_context::executor_type;
  if (const auto* io = executor.target<IoExecutor>()) {
    return net::use_service<CurlMultiSet>(io->context()).Pick();
  }
  if (const auto* strand = executor.target<net::strand<IoExecutor>>()) {
    return net::use_service<CurlMultiSet>(strand->get_inner_executor().context()).Pick();
  }
  throw std::logic_error("the upstream client needs a net::io_context executor");
}

CurlMulti::CurlMulti(net::io_context& io) : executor_(io.get_executor()), timer_(io) {
  multi_ = curl_multi_init();
  if (multi_ == nullptr) throw std::runtime_error("curl_multi_init failed");
  bool ok = true;
  auto check = [&ok](CURLMcode code) { ok = ok && code == CURLM_OK; };
  check(curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &CurlMulti::SocketCallback));
  check(curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this));
  check(curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &CurlMulti::TimerCallback));
  check(curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this));
  check(curl_multi_setopt(multi_, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX));
  check(curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, kMaxCachedConnections));
  if (!ok) {
    curl_multi_cleanup(multi_);
    throw std::runtime_error("curl_multi_setopt failed");
  }
}

CurlMulti::~CurlMulti() { Cleanup(); }

void CurlMulti::Cleanup() {
  if (multi_ == nullptr) return;
  shut_down_ = true;
  auto running = std::move(running_);
  running_.clear();
  for (auto& [easy, transfer] : running) {
    curl_multi_remove_handle(multi_, easy);
    transfer->OnAbandoned();
  }
  for (auto& [fd, socket] : sockets_) {
    socket->closed = true;
    socket->descriptor.release();
  }
  sockets_.clear();
  timer_.cancel();
  curl_multi_cleanup(multi_);
  multi_ = nullptr;
  running.clear();  // may destroy transfers: their easy handles are out of the multi by now
}

Status CurlMulti::Start(std::shared_ptr<CurlTransfer> transfer) {
  if (shut_down_) {
    return MakeError(ErrorKind::kCancelled, "the I/O context of the upstream request stopped");
  }
  CURL* easy = transfer->easy();
  // Connection sockets are opened and closed through us, so that a pooled connection stays
  // registered with the reactor between the transfers that use it.
  bool ok = curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, &CurlMulti::OpenSocketCallback) ==
                CURLE_OK &&
            curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, this) == CURLE_OK &&
            curl_easy_setopt(easy, CURLOPT_CLOSESOCKETFUNCTION, &CurlMulti::CloseSocketCallback) ==
                CURLE_OK &&
            curl_easy_setopt(easy, CURLOPT_CLOSESOCKETDATA, this) == CURLE_OK;
  if (!ok) return MakeError(ErrorKind::kInternal, "could not set up the upstream transfer");
  // libcurl only arms its timer here (TimerCallback); the transfer begins on the next turn.
  if (curl_multi_add_handle(multi_, easy) != CURLM_OK) {
    return MakeError(ErrorKind::kInternal, "could not start the upstream transfer");
  }
  transfer->OnStarted(this);
  running_.emplace(easy, std::move(transfer));
  return Ok();
}

void CurlMulti::Stop(CurlTransfer& transfer) {
  auto it = running_.find(transfer.easy());
  if (it == running_.end()) return;
  // The caller holds its own reference, so `transfer` outlives `keep`.
  auto keep = std::move(it->second);
  running_.erase(it);
  curl_multi_remove_handle(multi_, transfer.easy());
}

int CurlMulti::SocketCallback(CURL*, curl_socket_t fd, int what, void* self, void*) {
  static_cast<CurlMulti*>(self)->Watch(fd, what);
  return 0;
}

// What libcurl does without the callback, plus remembering the socket as ours to watch until it
// is closed.
curl_socket_t CurlMulti::OpenSocketCallback(void* self, curlsocktype,
                                            struct curl_sockaddr* address) {
  const curl_socket_t fd = ::socket(address->family, address->socktype, address->protocol);
  if (fd != CURL_SOCKET_BAD) static_cast<CurlMulti*>(self)->owned_.insert(fd);
  return fd;
}

// Also called while curl_multi_cleanup closes the pooled connections.
int CurlMulti::CloseSocketCallback(void* self, curl_socket_t fd) {
  static_cast<CurlMulti*>(self)->Forget(fd);
  return ::close(fd);
}

void CurlMulti::Forget(curl_socket_t fd) {
  owned_.erase(fd);
  auto it = sockets_.find(fd);
  if (it == sockets_.end()) return;
  // release() deregisters the fd from the reactor and aborts pending waits, before it is closed.
  it->second->closed = true;
  it->second->descriptor.release();
  sockets_.erase(it);
}

int CurlMulti::TimerCallback(CURLM*, long timeout_ms, void* self) {
  auto* multi = static_cast<CurlMulti*>(self);
  if (multi->shut_down_) return 0;
  if (timeout_ms < 0) {
    // A pending wait may stay: it finds nothing due and ends.
    multi->due_.reset();
    return 0;
  }
  const auto now = std::chrono::steady_clock::now();
  multi->due_ = now + std::chrono::milliseconds(timeout_ms);
  // Never call libcurl back from inside its callback: the work goes through the io_context.
  if (timeout_ms == 0) {
    // "Now" (every new transfer asks for it): a posted handler instead of a timer, which would
    // become the io_context's earliest and cost two timerfd_settime calls.
    if (!multi->run_posted_) {
      multi->run_posted_ = true;
      net::post(multi->executor_, [multi] {
        multi->run_posted_ = false;
        multi->OnTimer();
      });
    }
    return 0;
  }
  // A pending wait that ends no later than the new due time is kept: it re-arms for due_ when it
  // ends early. libcurl moves its timer often, mostly later.
  if (multi->timer_pending_ && multi->timer_at_ <= *multi->due_) return 0;
  multi->ArmTimer(*multi->due_);
  return 0;
}

void CurlMulti::ArmTimer(std::chrono::steady_clock::time_point at) {
  timer_pending_ = true;
  timer_at_ = at;
  const std::uint64_t generation = ++timer_generation_;
  timer_.expires_at(at);
  timer_.async_wait([this, generation](const boost::system::error_code& ec) {
    if (generation != timer_generation_) return;  // superseded by a later ArmTimer
    timer_pending_ = false;
    if (!ec) OnTimerExpired();
  });
}

void CurlMulti::OnTimerExpired() {
  if (shut_down_ || !due_) return;
  if (std::chrono::steady_clock::now() < *due_) {
    ArmTimer(*due_);
    return;
  }
  OnTimer();
}

void CurlMulti::Watch(curl_socket_t fd, int what) {
  auto it = sockets_.find(fd);
  if (what == CURL_POLL_REMOVE) {
    if (it != sockets_.end() && it->second->owned) {
      // A connection going back to the pool: it stays registered (no epoll_ctl now, nor when the
      // next transfer reuses it) until CloseSocketCallback. A wait still pending (libcurl may have
      // read the answer on its timer instead) is cancelled: an idle connection must not keep the
      // io_context busy. The reactor keeps the registration; the next transfer arms anew.
      it->second->wanted = CURL_POLL_NONE;
      if (it->second->reading || it->second->writing) {
        boost::system::error_code ignored;
        it->second->descriptor.cancel(ignored);
      }
      return;
    }
    if (it != sockets_.end()) {
      // release() deregisters the fd from the reactor and aborts pending waits; libcurl may close
      // or reuse the fd right after this callback.
      it->second->closed = true;
      it->second->descriptor.release();
      sockets_.erase(it);
    }
    return;
  }
  if (shut_down_) return;
  if (it == sockets_.end()) {
    auto socket = std::make_shared<Socket>(executor_);
    boost::system::error_code ec;
    socket->descriptor.assign(fd, ec);
    // Not watchable (cannot happen for a socket): libcurl's own timeouts end the transfer.
    if (ec) return;
    socket->owned = owned_.count(fd) != 0;
    it = sockets_.emplace(fd, std::move(socket)).first;
  }
  it->second->wanted = what;
  Arm(fd, it->second);
}

// Starts the waits libcurl wants that are not pending yet. A wait that libcurl no longer wants
// stays pending and is ignored when it completes (cancelling would abort the wanted one too).
void CurlMulti::Arm(curl_socket_t fd, const std::shared_ptr<Socket>& socket) {
  if (socket->closed) return;
  if ((socket->wanted & CURL_POLL_IN) != 0 && !socket->reading) {
    socket->reading = true;
    socket->descriptor.async_wait(net::posix::descriptor_base::wait_read,
                                  [this, fd, socket](const boost::system::error_code& ec) {
                                    socket->reading = false;
                                    if (!ec) {
                                      OnReady(fd, socket, CURL_CSELECT_IN);
                                    } else if (ec == net::error::operation_aborted) {
                                      Rearm(fd, socket);
                                    }
                                  });
  }
  if ((socket->wanted & CURL_POLL_OUT) != 0 && !socket->writing) {
    socket->writing = true;
    socket->descriptor.async_wait(net::posix::descriptor_base::wait_write,
                                  [this, fd, socket](const boost::system::error_code& ec) {
                                    socket->writing = false;
                                    if (!ec) {
                                      OnReady(fd, socket, CURL_CSELECT_OUT);
                                    } else if (ec == net::error::operation_aborted) {
                                      Rearm(fd, socket);
                                    }
                                  });
  }
}

// A cancelled wait: a transfer may have taken the connection from the pool (and wanted it
// again) before the cancellation was delivered, while this wait still counted as pending.
void CurlMulti::Rearm(curl_socket_t fd, const std::shared_ptr<Socket>& socket) {
  if (socket->closed || shut_down_) return;
  Arm(fd, socket);
}

void CurlMulti::OnReady(curl_socket_t fd, const std::shared_ptr<Socket>& socket, int event) {
  if (socket->closed || shut_down_) return;
  const int wanted_bit = event == CURL_CSELECT_IN ? CURL_POLL_IN : CURL_POLL_OUT;
  if ((socket->wanted & wanted_bit) == 0) return;  // a stale wait
  int running = 0;
  curl_multi_socket_action(multi_, fd, event, &running);
  CollectDone();
  // libcurl only calls SocketCallback when its interest changes: wait again for what it still
  // wants (the wait is level-triggered: Asio re-arms the fd on each new wait).
  Arm(fd, socket);
}

void CurlMulti::OnTimer() {
  if (shut_down_) return;
  int running = 0;
  curl_multi_socket_action(multi_, CURL_SOCKET_TIMEOUT, 0, &running);
  CollectDone();
}

// Hands finished transfers back: out of the multi handle first (the connection returns to the
// pool or is closed), then the transfer wakes its coroutine through the io_context.
void CurlMulti::CollectDone() {
  int left = 0;
  while (CURLMsg* message = curl_multi_info_read(multi_, &left)) {
    if (message->msg != CURLMSG_DONE) continue;
    CURL* easy = message->easy_handle;
    const CURLcode code = message->data.result;  // `message` dies with the removal below
    auto it = running_.find(easy);
    if (it == running_.end()) continue;
    auto transfer = std::move(it->second);
    running_.erase(it);
    curl_multi_remove_handle(multi_, easy);
    transfer->OnDone(code);
  }
}

}  // namespace staple::upstream
