#include "http/server.h"

#include <algorithm>
#include <array>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cmath>
#include <limits>
#include <list>
#include <optional>

#include "common/allocator.h"

namespace staple::http {
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

namespace {

using ReusePort = net::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>;
using Clock = std::chrono::steady_clock;

// How often a worker looks for connections whose deadline passed. A deadline therefore ends an
// operation up to this much late, which is nothing next to timeouts of tens of seconds.
constexpr std::chrono::milliseconds kSweepPeriod{1000};

// A connection over the cap or its peer's share asks for an idle connection to be closed up to this
// many times before it is refused: another new connection may take the freed slot first, and
// connections accepted a moment ago may not have started waiting yet (they become idle when they
// do), so after finding no idle connection it looks again kAdmitBackoff later, then twice that...
// (about 0.1 s in all). It waits at most kEvictionWait for each answer (the workers answer within
// one turn of their event loop).
constexpr int kAdmitAttempts = 6;
constexpr std::chrono::milliseconds kAdmitBackoff{5};
constexpr std::chrono::milliseconds kEvictionWait{1000};

// A refused connection gets its 503, then is kept open up to kRefusalLinger while what the client
// sent is read and dropped: closing a socket with unread data resets the connection, and the
// client could lose the answer. At most kMaxLingering refused connections linger at once; the
// others are closed right after the answer, so a flood of refused connections cannot hold many
// descriptors.
constexpr std::chrono::milliseconds kRefusalLinger{1000};
constexpr int kMaxLingering = 64;

// Freed memory goes back to the system (common::ReturnFreedMemory) once the open connections
// dropped by at least kTrimDrop and by half from their highest count since the last trim and
// stopped falling, at most every kTrimInterval; jemalloc would return it on its own within its
// decay period, this makes it prompt (and is what frees it at all under glibc's malloc). What
// stays is Asio's reactor state of every connection ever open at once (168 bytes each, kept in a
// pool that is never freed): a later burst reuses it, so it does not grow. Under glibc's malloc
// those live objects sit between the freed coroutine frames and buffers and pin most of their
// pages; jemalloc keeps objects of one size class together, so the freed pages are whole.
constexpr int kTrimDrop = 512;
constexpr std::chrono::seconds kTrimInterval{10};

// The idle-since time of a worker without idle connections.
constexpr Clock::rep kNoIdle = std::numeric_limits<Clock::rep>::max();

void LogIfFailed(std::exception_ptr error) {
  if (!error) return;
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    observe::Error("connection task failed", {{"error", e.what()}});
  }
}

// Client-given text as the access log shows it: at most `limit` bytes (cut at a UTF-8 character
// boundary) and "…", so a client cannot fill the log with one long URL, model name or id.
constexpr std::size_t kLoggedPathBytes = 512;
constexpr std::size_t kLoggedNameBytes = 256;

std::string Clipped(std::string_view text, std::size_t limit) {
  if (text.size() <= limit) return std::string(text);
  std::size_t cut = limit;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return std::string(text.substr(0, cut)) + "\u2026";
}

std::string LoggedPath(std::string_view path) { return Clipped(path, kLoggedPathBytes); }

// A client-supplied request id is echoed only when it is short and plain, so it cannot break a
// header or a log line.
bool UsableRequestId(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (c <= ' ' || c >= 127 || c == '"' || c == '\\') return false;
  }
  return true;
}

// The origin-form part ("/path?query") of a request target. An absolute-form target
// ("http://host/path?query", RFC 9112 §3.2.2), which servers must accept, is routed by its path
// (which may be empty: "http://host?query"); its host is not looked at, as for the Host header.
std::string_view OriginForm(std::string_view target) {
  if (target.empty() || target.front() == '/') return target;
  const auto scheme_end = target.find("://");
  if (scheme_end == std::string_view::npos) return target;
  const auto scheme = target.substr(0, scheme_end);
  if (!EqualsIgnoreCase(scheme, "http") && !EqualsIgnoreCase(scheme, "https")) return target;
  const auto authority = target.substr(scheme_end + 3);
  const auto path_start = authority.find_first_of("/?");
  if (path_start == std::string_view::npos) return "/";
  return authority.substr(path_start);
}

// Framing checks that Beast 1.74 leaves to the server (RFC 9112 §6.3, §3.2): a request whose
// body length could be read two ways is refused, not guessed at, because a proxy in front of us
// may have guessed the other way and the rest of the bytes would be read as another request
// (request smuggling). Beast reads a Transfer-Encoding that does not end in chunked as "no body",
// so anything but exactly `chunked` is refused. Returns the problem, or "" when there is none.
std::string_view FramingProblem(const bhttp::request<bhttp::string_body>& head) {
  const auto encodings = head.count(bhttp::field::transfer_encoding);
  if (encodings > 1 ||
      (encodings == 1 && !EqualsIgnoreCase(head[bhttp::field::transfer_encoding], "chunked"))) {
    return "Unsupported Transfer-Encoding: only chunked is accepted";
  }
  const auto hosts = head.count(bhttp::field::host);
  if (hosts > 1) return "More than one Host header";
  if (hosts == 0 && head.version() >= 11) return "Host header is required";
  return {};
}

// The address a connection's share is counted under: an IPv4 client reaching an IPv6 listener is
// counted as the IPv4 address it is.
std::string PeerKey(const net::ip::address& address) {
  if (address.is_v6() && address.to_v6().is_v4_mapped()) {
    return net::ip::make_address_v4(net::ip::v4_mapped, address.to_v6()).to_string();
  }
  return address.to_string();
}

Request ToRequest(bhttp::request<bhttp::string_body>&& message, const std::string& peer) {
  Request request;
  request.method = std::string(message.method_string());
  request.target = std::string(message.target());
  const auto origin = OriginForm(request.target);
  const auto question = origin.find('?');
  request.path = std::string(origin.substr(0, question));
  if (request.path.empty()) request.path = "/";  // "http://host?query"
  if (question != std::string_view::npos) request.query = std::string(origin.substr(question + 1));
  for (const auto& field : message) {
    request.headers.Add(std::string(field.name_string()), std::string(field.value()));
  }
  request.body = std::move(message.body());
  request.peer_address = peer;
  const auto given = request.headers.Get("X-Request-Id");
  request.request_id =
      given && UsableRequestId(*given) ? std::string(*given) : observe::NewRequestId();
  return request;
}

std::string Describe(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown exception";
  }
}

template <typename Message>
void CopyHeaders(const Response& response, const Request& request, Message& message) {
  message.set(bhttp::field::server, "staple");
  for (const auto& [name, value] : response.headers.fields()) message.insert(name, value);
  message.set("X-Request-Id", request.request_id);
}

}  // namespace

// One open connection. Touched only on its worker's thread.
struct Server::Session {
  tcp::socket* socket = nullptr;
  std::string peer;   // its PeerKey
  bool busy = false;  // a request is being handled: let it finish
  // Waiting for the first byte of the next request head, nothing in flight: it may be closed to
  // make room for a new connection. Then `idle_position` is its place in Worker::idle.
  bool idle = false;
  std::list<Session*>::iterator idle_position;
  Clock::time_point idle_since;
  bool reading_head = false;    // between the first byte of a head and its end
  bool head_timed_out = false;  // the sweep cancelled the head's read: answer 408
  bool released = false;        // its slot was given back early (closed to make room)
  // When the read or write in progress must be done; Clock::time_point::max() while nothing is
  // expected from or sent to the client (the request is being handled). The worker's sweep closes
  // the socket once it passes, which fails the pending operation.
  Clock::time_point deadline = Clock::time_point::max();
};

namespace {

// Streams a chunked body: one HTTP chunk per Write, each with its own write deadline.
class ChunkWriter final : public BodyWriter {
 public:
  ChunkWriter(tcp::socket& socket, Clock::time_point& deadline, std::chrono::milliseconds timeout)
      : socket_(socket), deadline_(deadline), timeout_(timeout) {}

  net::awaitable<Status> Write(std::string data) override {
    if (failed_ || aborted_) co_return MakeError(ErrorKind::kCancelled, "client connection closed");
    if (data.empty()) co_return Ok();
    beast::error_code ec;
    deadline_ = Clock::now() + timeout_;
    co_await net::async_write(socket_, bhttp::make_chunk(net::buffer(data)),
                              net::redirect_error(net::use_awaitable, ec));
    deadline_ = Clock::time_point::max();
    if (ec) {
      failed_ = true;
      co_return MakeError(ErrorKind::kCancelled, "client connection closed");
    }
    co_return Ok();
  }

  void Abort() override { aborted_ = true; }

  bool failed() const { return failed_; }
  bool aborted() const { return aborted_; }

 private:
  tcp::socket& socket_;
  Clock::time_point& deadline_;
  std::chrono::milliseconds timeout_;
  bool failed_ = false;
  bool aborted_ = false;
};

}  // namespace

// Members are destroyed in reverse order of declaration, and that order matters. A request still
// suspended when the threads stop (its handler outlived Shutdown's grace) is a coroutine frame
// owned by `context`; destroying `context` destroys that frame, whose Session unregisters itself
// from `sessions`. So `sessions` is declared before `context` and outlives it. The I/O objects
// (`acceptor`, `sweep`) belong to `context` and are declared after it, so they go first. `thread`
// must have been joined before any of this (~Server and Shutdown do).
struct Server::Worker {
  std::size_t index = 0;
  std::atomic<std::size_t>* idle_total = nullptr;  // Server::idle_
  std::list<Session*> sessions;                    // guarded by being touched only on `thread`
  std::list<Session*> idle;  // the idle ones, longest idle first; only on `thread`
  // idle.front()'s idle_since (kNoIdle when none), for other workers choosing whom to ask for room.
  std::atomic<Clock::rep> oldest_idle{kNoIdle};
  net::io_context context{1};
  tcp::acceptor acceptor{context};
  std::optional<net::executor_work_guard<net::io_context::executor_type>> guard;
  net::steady_timer sweep{context};
  std::thread thread;

  void MarkIdle(Session& session) {
    idle_total->fetch_add(1, std::memory_order_relaxed);
    session.idle = true;
    session.idle_since = Clock::now();
    idle.push_back(&session);
    session.idle_position = std::prev(idle.end());
    if (idle.size() == 1) PublishOldestIdle();
  }
  void MarkNotIdle(Session& session) {
    if (!session.idle) return;
    idle_total->fetch_sub(1, std::memory_order_relaxed);
    const bool was_oldest = session.idle_position == idle.begin();
    idle.erase(session.idle_position);
    session.idle = false;
    if (was_oldest) PublishOldestIdle();
  }
  void PublishOldestIdle() {
    oldest_idle.store(idle.empty() ? kNoIdle : idle.front()->idle_since.time_since_epoch().count(),
                      std::memory_order_relaxed);
  }
};

Server::Server(ServerOptions options, const Router& router, observe::Metrics& metrics)
    : options_(std::move(options)),
      router_(router),
      metrics_(metrics),
      unshared_(options_.unshared_peers) {}

Server::~Server() {
  for (auto& worker : workers_) {
    if (worker->thread.joinable()) {
      worker->guard.reset();
      worker->context.stop();
      worker->thread.join();
    }
  }
  // Destroying a worker's io_context destroys the requests still suspended in it, and their
  // Sessions update `sessions_` and the metrics as they go: destroy the workers here, while every
  // other member is alive, not after them as member destruction order would.
  workers_.clear();
}

Status Server::Bind() {
  beast::error_code ec;
  auto address =
      net::ip::make_address(options_.host == "localhost" ? "127.0.0.1" : options_.host, ec);
  if (ec)
    return MakeError(ErrorKind::kInvalidArgument, "invalid listen address '" + options_.host + "'");
  std::uint16_t port = options_.port;
  // The listeners share the port through SO_REUSEPORT, which would let a second process of the
  // same user join it too, and the kernel would then split connections between the two. A probe
  // bound without SO_REUSEPORT fails while anyone listens there, so a busy port is a start-up
  // error. (Two processes starting at the same instant can still both pass the probe.)
  if (port != 0) {
    net::io_context probe_context(1);
    tcp::acceptor probe(probe_context);
    const tcp::endpoint endpoint(address, port);
    probe.open(endpoint.protocol(), ec);
    if (!ec) probe.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) probe.bind(endpoint, ec);
    if (ec == net::error::address_in_use) {
      return MakeError(ErrorKind::kUnavailable,
                       "cannot listen on " + options_.host + ":" + std::to_string(port) +
                           ": the port is already in use (another Staple or another server "
                           "listens there)");
    }
    if (ec) {
      return MakeError(ErrorKind::kUnavailable, "cannot listen on " + options_.host + ":" +
                                                    std::to_string(port) + ": " + ec.message());
    }
  }
  const int threads = options_.threads < 1 ? 1 : options_.threads;
  for (int i = 0; i < threads; ++i) {
    auto worker = std::make_unique<Worker>();
    worker->index = workers_.size();
    worker->idle_total = &idle_;
    auto& acceptor = worker->acceptor;
    const tcp::endpoint endpoint(address, port);
    acceptor.open(endpoint.protocol(), ec);
    if (!ec) acceptor.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) acceptor.set_option(ReusePort(true), ec);
    if (!ec) acceptor.bind(endpoint, ec);
    if (!ec) acceptor.listen(net::socket_base::max_listen_connections, ec);
    if (ec) {
      return MakeError(ErrorKind::kUnavailable, "cannot listen on " + options_.host + ":" +
                                                    std::to_string(port) + ": " + ec.message());
    }
    // With port 0 the first listener picks the port and the others join it.
    port = acceptor.local_endpoint().port();
    workers_.push_back(std::move(worker));
  }
  port_ = port;
  return Ok();
}

std::vector<net::io_context*> Server::contexts() {
  std::vector<net::io_context*> result;
  for (auto& worker : workers_) result.push_back(&worker->context);
  return result;
}

void Server::Start() {
  // The router's indexes become the metrics' route indexes (Request::route).
  metrics_.SetRouteLabels(router_.route_labels());
  for (auto& worker : workers_) {
    worker->guard.emplace(worker->context.get_executor());
    net::co_spawn(worker->context, Accept(*worker), LogIfFailed);
    net::co_spawn(worker->context, Sweep(*worker), LogIfFailed);
    worker->thread = std::thread([w = worker.get()] { w->context.run(); });
  }
}

net::awaitable<void> Server::Accept(Worker& worker) {
  net::steady_timer backoff(worker.context);
  for (;;) {
    beast::error_code ec;
    auto socket =
        co_await worker.acceptor.async_accept(net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      if (!worker.acceptor.is_open() || ec == net::error::operation_aborted) co_return;
      // Out of descriptors or a transient failure: wait a little instead of spinning.
      backoff.expires_after(std::chrono::milliseconds(10));
      co_await backoff.async_wait(net::redirect_error(net::use_awaitable, ec));
      continue;
    }
    socket.set_option(tcp::no_delay(true), ec);
    const auto remote = socket.remote_endpoint(ec);
    std::string peer = ec ? std::string("unknown") : PeerKey(remote.address());
    const auto refusal = Reserve(peer);
    if (refusal == Refusal::kNone) {
      net::co_spawn(worker.context, Serve(worker, std::move(socket), std::move(peer)), LogIfFailed);
    } else {
      net::co_spawn(worker.context, Admit(worker, std::move(socket), std::move(peer), refusal),
                    LogIfFailed);
    }
  }
}

Server::Refusal Server::Reserve(const std::string& peer) {
  std::lock_guard lock(slots_mutex_);
  // The share first: when both are reached, closing one of the peer's own idle connections makes
  // room under both.
  const auto found = peer_connections_.find(peer);
  const std::size_t held = found == peer_connections_.end() ? 0 : found->second;
  if (options_.max_connections_per_peer > 0 && held >= options_.max_connections_per_peer &&
      !unshared_.Contains(peer)) {
    return Refusal::kPeer;
  }
  const int open = sessions_.load(std::memory_order_relaxed);
  if (options_.max_connections > 0 && static_cast<std::size_t>(open) >= options_.max_connections) {
    return Refusal::kCapacity;
  }
  ++peer_connections_[peer];
  sessions_.store(open + 1);
  if (open + 1 > high_water_.load(std::memory_order_relaxed)) high_water_.store(open + 1);
  return Refusal::kNone;
}

void Server::Release(const std::string& peer) {
  std::lock_guard lock(slots_mutex_);
  if (const auto found = peer_connections_.find(peer); found != peer_connections_.end()) {
    if (--found->second == 0) peer_connections_.erase(found);
  }
  sessions_.fetch_sub(1);
}

std::size_t Server::OldestIdleWorker(std::size_t fallback) const {
  std::size_t oldest = fallback;
  Clock::rep oldest_since = kNoIdle;
  for (const auto& worker : workers_) {
    const auto since = worker->oldest_idle.load(std::memory_order_relaxed);
    if (since < oldest_since) {
      oldest_since = since;
      oldest = worker->index;
    }
  }
  return oldest;
}

// Each worker closes only its own connections, on its own thread: a request for room travels from
// worker to worker (posted to each one's io_context) until one of them closed an idle connection,
// and the answer is posted back to the worker holding the new connection.
void Server::EvictIdle(std::size_t index, std::size_t left, std::string peer, Worker& origin,
                       std::function<void(bool)> done) {
  Worker& worker = *workers_[index];
  net::post(worker.context, [this, &worker, left, peer = std::move(peer), &origin,
                             done = std::move(done)]() mutable {
    Session* victim = nullptr;
    for (Session* session : worker.idle) {  // longest idle first
      if (peer.empty() || session->peer == peer) {
        victim = session;
        break;
      }
    }
    if (victim != nullptr) {
      // The slot is given back now, not when its coroutine has unwound: the descriptor is closed
      // here, and the new connection waiting for it may be served at once.
      worker.MarkNotIdle(*victim);
      victim->released = true;
      victim->deadline = Clock::time_point::max();
      beast::error_code ignored;
      victim->socket->close(ignored);  // fails its pending wait: its coroutine ends
      Release(victim->peer);
      metrics_.ConnectionClosed();
      metrics_.CountIdleConnectionEvicted();
    }
    if (victim != nullptr || left <= 1) {
      const bool closed = victim != nullptr;
      net::post(origin.context, [done = std::move(done), closed] { done(closed); });
      return;
    }
    EvictIdle((worker.index + 1) % workers_.size(), left - 1, std::move(peer), origin,
              std::move(done));
  });
}

net::awaitable<void> Server::Admit(Worker& worker, tcp::socket socket, std::string peer,
                                   Refusal refusal) {
  for (int attempt = 0; attempt < kAdmitAttempts && refusal != Refusal::kNone; ++attempt) {
    if (stopping_.load(std::memory_order_relaxed)) break;
    // Over its share, the peer makes room with its own idle connections, starting with this
    // worker's; over the cap, the connection idle longest anywhere goes.
    const bool own = refusal == Refusal::kPeer;
    const std::size_t first = own ? worker.index : OldestIdleWorker(worker.index);
    auto answered = std::make_shared<net::steady_timer>(worker.context);
    auto closed = std::make_shared<bool>(false);
    answered->expires_after(kEvictionWait);
    std::string victim_peer = own ? peer : std::string();
    // The answer holds the timer weakly: it may be destroyed with another worker's io_context,
    // after this one's (at shutdown), and must not own a timer of this one.
    std::weak_ptr<net::steady_timer> waiting = answered;
    EvictIdle(first, workers_.size(), std::move(victim_peer), worker,
              [waiting, closed](bool result) {
                *closed = result;
                if (auto timer = waiting.lock()) timer->cancel();
              });
    beast::error_code ec;
    co_await answered->async_wait(net::redirect_error(net::use_awaitable, ec));
    if (!*closed) {
      answered->expires_after(kAdmitBackoff * (attempt + 1));
      co_await answered->async_wait(net::redirect_error(net::use_awaitable, ec));
    }
    refusal = Reserve(peer);
  }
  if (refusal == Refusal::kNone) {
    net::co_spawn(worker.context, Serve(worker, std::move(socket), std::move(peer)), LogIfFailed);
    co_return;
  }
  metrics_.CountConnectionRefused(refusal == Refusal::kPeer);
  co_await Refuse(worker, std::move(socket), refusal);
}

net::awaitable<void> Server::Refuse(Worker& worker, tcp::socket socket, Refusal refusal) {
  auto connection = std::make_shared<tcp::socket>(std::move(socket));
  // The deadline of the whole refusal: the answer and the lingering read.
  net::steady_timer deadline(worker.context);
  deadline.expires_after(kRefusalLinger);
  deadline.async_wait([connection](const beast::error_code& ec) {
    beast::error_code ignored;
    if (!ec) connection->close(ignored);
  });

  const std::string reason = refusal == Refusal::kPeer
                                 ? "Too many connections from this address: try again later"
                                 : "Too many connections: try again later";
  Response response = router_.format_error()(503, reason, "/");
  bhttp::response<bhttp::string_body> message{bhttp::status::service_unavailable, 11};
  message.set(bhttp::field::server, "staple");
  for (const auto& [name, value] : response.headers.fields()) message.insert(name, value);
  message.set(bhttp::field::retry_after, "1");
  message.keep_alive(false);
  message.body() = std::move(response.body);
  message.prepare_payload();
  beast::error_code ec;
  co_await bhttp::async_write(*connection, message, net::redirect_error(net::use_awaitable, ec));
  if (!ec) {
    if (lingering_.fetch_add(1) < kMaxLingering) {
      connection->shutdown(tcp::socket::shutdown_send, ec);
      std::array<char, 512> drain;
      while (!ec) {
        co_await connection->async_read_some(net::buffer(drain),
                                             net::redirect_error(net::use_awaitable, ec));
      }
    }
    lingering_.fetch_sub(1);
  }
  deadline.cancel();
  connection->close(ec);
}

// One timer per worker enforces every connection's deadline, instead of one timer operation per
// read and write: arming a timer that becomes the earliest one costs a timerfd_settime system
// call, and per-operation deadlines did that several times per request. As the earliest timer of
// the worker, the sweep also keeps longer timers (upstream deadlines) from re-arming the timerfd.
net::awaitable<void> Server::Sweep(Worker& worker) {
  for (;;) {
    worker.sweep.expires_after(kSweepPeriod);
    beast::error_code ec;
    co_await worker.sweep.async_wait(net::redirect_error(net::use_awaitable, ec));
    if (ec == net::error::operation_aborted) co_return;
    const auto now = Clock::now();
    for (Session* session : worker.sessions) {
      if (session->deadline > now) continue;
      session->deadline = Clock::time_point::max();
      if (session->reading_head) {
        // The head is late: its read is cancelled (operation_aborted) and answered 408.
        session->head_timed_out = true;
        session->socket->cancel(ec);
        continue;
      }
      // Closing fails the pending operation (operation_aborted) and every later one.
      session->socket->close(ec);
    }
    if (worker.index == 0) TrimMemory();
  }
}

void Server::TrimMemory() {
  const auto now = Clock::now();
  if (now - last_trim_ < kTrimInterval) return;
  {
    std::lock_guard lock(slots_mutex_);
    const int open = sessions_.load();
    const int high = high_water_.load();
    // Not while the count is still falling: the connections closing now free their memory later.
    const bool falling = open < open_at_last_sweep_;
    open_at_last_sweep_ = open;
    if (falling || high - open < kTrimDrop || open > high / 2) return;
    high_water_.store(open);
  }
  last_trim_ = now;
  for (auto& other : workers_) net::post(other->context, [] { common::ReturnFreedMemory(); });
  observe::Info("returned freed memory to the system after connections closed",
                {{"open_connections", sessions_.load()}});
}

// Runs with a slot taken by Reserve, which it gives back when it ends (unless the connection was
// closed to make room, which gave it back then).
net::awaitable<void> Server::Serve(Worker& worker, tcp::socket socket, std::string peer) {
  beast::error_code ec;
  // Registration for the deadline sweep and graceful shutdown, undone however this coroutine ends.
  Session session;
  session.socket = &socket;
  session.peer = peer;
  // Deadlines cost no system call: the sweep reads them.
  const auto expires_after = [&session](std::chrono::milliseconds timeout) {
    session.deadline = Clock::now() + timeout;
  };
  worker.sessions.push_back(&session);
  const auto registration = std::prev(worker.sessions.end());
  metrics_.ConnectionOpened();
  struct Unregister {
    Server* server;
    Worker* worker;
    Session* session;
    std::list<Session*>::iterator it;
    ~Unregister() {
      worker->MarkNotIdle(*session);
      worker->sessions.erase(it);
      if (!session->released) {
        server->Release(session->peer);
        server->metrics_.ConnectionClosed();
      }
    }
  } unregister{this, &worker, &session, registration};

  beast::flat_buffer buffer;
  char first_byte = 0;
  while (!stopping_.load(std::memory_order_relaxed)) {
    bhttp::request_parser<bhttp::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(options_.max_header_bytes));
    parser.body_limit(options_.max_body_bytes);

    // 1. Idle: wait for the first byte of the next head, unless it already arrived (pipelining).
    // The byte is peeked, not read, so that no buffer is held meanwhile: an idle connection costs
    // its coroutine frame only, and can be closed to make room for a new one. (A peek rather than
    // a readiness wait: the reactor reports readiness once, and it may have been reported before
    // the wait was queued.)
    if (buffer.size() == 0) {
      buffer.shrink_to_fit();
      expires_after(options_.idle_timeout);
      worker.MarkIdle(session);
      co_await socket.async_receive(net::buffer(&first_byte, 1), tcp::socket::message_peek,
                                    net::redirect_error(net::use_awaitable, ec));
      worker.MarkNotIdle(session);
      if (ec) break;  // closed by the client, by the sweep, to make room, or at shutdown
    }

    // 2. Read the head, which must be complete within the header timeout of its first byte.
    session.reading_head = true;
    expires_after(options_.header_timeout);
    co_await bhttp::async_read_header(socket, buffer, parser,
                                      net::redirect_error(net::use_awaitable, ec));
    session.reading_head = false;
    if (!session.head_timed_out &&
        (ec == bhttp::error::end_of_stream || ec == net::error::operation_aborted ||
         ec == net::error::bad_descriptor || ec == net::error::connection_reset ||
         ec == net::error::eof)) {
      break;
    }
    session.busy = true;
    const auto started = std::chrono::steady_clock::now();

    // 3. Read the body, unless the head already shows a problem.
    int early_status = 0;
    std::string early_message;
    if (session.head_timed_out) {
      early_status = 408;
      early_message = "Request header timeout";
    } else if (ec == bhttp::error::body_limit) {
      early_status = 413;  // the declared Content-Length is over the limit
    } else if (ec == bhttp::error::header_limit) {
      early_status = 431;
      early_message = "Request header fields too large";
    } else if (ec) {
      early_status = 400;
      early_message = "Malformed HTTP request";
    } else if (const auto problem = FramingProblem(parser.get()); !problem.empty()) {
      early_status = 400;  // and the connection is closed: where this request ends is unknown
      early_message = problem;
    } else {
      const auto expect = parser.get()[bhttp::field::expect];
      if (EqualsIgnoreCase(expect, "100-continue")) {
        // curl waits a second for this before sending a large body.
        static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
        expires_after(options_.write_timeout);
        co_await net::async_write(socket, net::buffer(kContinue.data(), kContinue.size()),
                                  net::redirect_error(net::use_awaitable, ec));
        if (ec) break;
      }
      expires_after(options_.read_timeout);
      co_await bhttp::async_read(socket, buffer, parser,
                                 net::redirect_error(net::use_awaitable, ec));
      if (ec == bhttp::error::body_limit) {
        early_status = 413;
      } else if (ec &&
                 ec.category() == bhttp::make_error_code(bhttp::error::body_limit).category() &&
                 ec != bhttp::error::partial_message) {
        early_status = 400;
        early_message = "Malformed HTTP request";
      } else if (ec) {
        break;  // the client went away or was too slow
      }
    }
    session.deadline = Clock::time_point::max();
    if (early_status == 413) {
      early_message = "Request body too large: the limit is " +
                      std::to_string(options_.max_body_bytes) + " bytes";
    }

    // 4. Handle it.
    const bool parsed = early_status == 0;
    Request request = ToRequest(parser.release(), peer);
    // (No co_await inside a conditional expression: g++ 12 miscompiles it.)
    Response response;
    if (parsed) {
      // An exception escaping a handler is a bug there; the client still gets an answer in the
      // router's error shape, and the connection stays usable. (co_await is not allowed in a
      // catch block: the failure is kept and answered after it.)
      std::exception_ptr failure;
      try {
        response = co_await router_.Dispatch(request);
      } catch (...) {
        failure = std::current_exception();
      }
      if (failure) {
        HandlerFailed(request, failure);
        response = router_.format_error()(500, "Internal server error", request.path);
      }
    } else {
      response = router_.format_error()(early_status, early_message, request.path);
    }
    const bool keep_alive =
        parsed && parser.keep_alive() && !stopping_.load(std::memory_order_relaxed);

    // 5. Write the answer.
    bool write_failed = false;
    bool client_gone = false;  // a stream's client left (or was too slow) before its end
    if (!response.stream) {
      bhttp::response<bhttp::string_body> message{static_cast<bhttp::status>(response.status), 11};
      CopyHeaders(response, request, message);
      message.keep_alive(keep_alive);
      message.body() = std::move(response.body);
      message.prepare_payload();
      expires_after(options_.write_timeout);
      co_await bhttp::async_write(socket, message, net::redirect_error(net::use_awaitable, ec));
      write_failed = static_cast<bool>(ec);
    } else {
      bhttp::response<bhttp::empty_body> message{static_cast<bhttp::status>(response.status), 11};
      CopyHeaders(response, request, message);
      message.keep_alive(keep_alive);
      message.chunked(true);
      bhttp::response_serializer<bhttp::empty_body> serializer{message};
      expires_after(options_.write_timeout);
      co_await bhttp::async_write_header(socket, serializer,
                                         net::redirect_error(net::use_awaitable, ec));
      session.deadline = Clock::time_point::max();
      write_failed = static_cast<bool>(ec);
      if (!write_failed) {
        ChunkWriter writer(socket, session.deadline, options_.write_timeout);
        std::exception_ptr failure;
        try {
          co_await response.stream(writer);
        } catch (...) {
          failure = std::current_exception();
        }
        // The status already went out: all that is left is to cut the body short (no last chunk)
        // so that the client sees an incomplete answer, and to close the connection.
        if (failure) HandlerFailed(request, failure);
        client_gone = writer.failed();
        write_failed = client_gone || writer.aborted() || failure != nullptr;
        if (!write_failed) {
          expires_after(options_.write_timeout);
          co_await net::async_write(socket, bhttp::make_chunk_last(),
                                    net::redirect_error(net::use_awaitable, ec));
          write_failed = static_cast<bool>(ec);
        }
      }
    }
    // The deadline stays: the next iteration sets the idle deadline before its read.

    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    metrics_.CountRequest(request.route, response.status, seconds);
    LogRequest(request, response, seconds, peer, client_gone);
    session.busy = false;
    if (write_failed || !keep_alive) break;
  }
  session.deadline = Clock::time_point::max();
  socket.shutdown(tcp::socket::shutdown_send, ec);
}

void Server::LogRequest(const Request& request, const Response& response, double seconds,
                        const std::string& peer, bool stream_cut) const {
  const observe::RequestNote& note = request.note;
  // A failure is the handler's reason, or for a 5xx answer the reason its error answer carries.
  std::string_view failure = note.failure;
  if (failure.empty() && response.status >= 500) {
    failure = response.reason.empty() ? std::string_view("(no reason given)") : response.reason;
  }
  const bool failed = !failure.empty();
  // A failed request is logged even with the access log off: the reason is what an operator needs.
  if (!options_.access_log && !failed) return;
  observe::Fields fields = {
      {"method", request.method},         {"path", LoggedPath(request.path)},
      {"status", response.status},        {"latency_ms", std::round(seconds * 1e6) / 1e3},
      {"request_id", request.request_id}, {"client", peer}};
  if (!note.conversation.empty()) {
    fields.emplace_back("conversation", Clipped(note.conversation, kLoggedNameBytes));
  }
  if (!note.model.empty()) fields.emplace_back("model", Clipped(note.model, kLoggedNameBytes));
  if (!note.upstream.empty()) fields.emplace_back("upstream", note.upstream);
  if (note.upstream_ms >= 0) fields.emplace_back("upstream_ms", note.upstream_ms);
  if (note.prompt_tokens >= 0) fields.emplace_back("prompt_tokens", note.prompt_tokens);
  if (note.completion_tokens >= 0) {
    fields.emplace_back("completion_tokens", note.completion_tokens);
  }
  // A stream whose client left before its end: the answer was not all delivered (the turn may
  // still be stored: it is once the upstream's answer is whole).
  if (stream_cut) fields.emplace_back("stream", "cut short: the client went away");
  if (failed) {
    fields.emplace_back("error", failure);
    observe::Warn("request failed", fields);
  } else {
    observe::Info("request", fields);
  }
}

void Server::HandlerFailed(const Request& request, const std::exception_ptr& error) {
  metrics_.CountHandlerException();
  observe::Error("route handler failed", {{"request_id", request.request_id},
                                          {"method", request.method},
                                          {"path", request.path},
                                          {"error", Describe(error)}});
}

void Server::Shutdown(std::chrono::milliseconds grace) {
  stopping_.store(true);
  for (auto& worker : workers_) {
    net::post(worker->context, [w = worker.get()] {
      beast::error_code ignored;
      w->acceptor.close(ignored);
      for (Session* session : w->sessions) {
        if (!session->busy) session->socket->cancel(ignored);
      }
    });
  }
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (sessions_.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (sessions_.load() > 0) {
    observe::Warn("shutdown grace period over; closing remaining connections",
                  {{"connections", sessions_.load()}});
  }
  for (auto& worker : workers_) {
    worker->guard.reset();
    worker->context.stop();
    if (worker->thread.joinable()) worker->thread.join();
  }
}

}  // namespace staple::http
