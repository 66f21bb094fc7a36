#include "fake_server.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <csignal>
#include <cstdio>
#include <exception>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <string_view>
#include <thread>
#include <vector>

#include "common/net.h"
#include "fake_logic.h"

namespace staple::fake {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using beast::error_code;

constexpr std::size_t kHeaderLimit = 64 * 1024;
constexpr std::uint64_t kBodyLimit = 256ull * 1024 * 1024;

// State shared by every connection of every thread.
struct Shared {
  explicit Shared(const ServerOptions& o) : options(o), log(o.record) {}

  const ServerOptions options;
  RequestLog log;
  Stats stats;
  FlakyKeys flaky;
  std::atomic<std::uint64_t> next_id{1};
  // PUT /_fake/fault: fault markers applied to every /v1 request until DELETE /_fake/fault.
  std::mutex standing_fault_mutex;
  std::string standing_fault;  // guarded by standing_fault_mutex
};

// One accepted connection. Lives on a single io_context thread, so its fields need no lock; a
// second coroutine (the watcher) shares it while a stream is written.
struct Connection {
  explicit Connection(tcp::socket s)
      : socket(std::move(s)), timer(socket.get_executor()), watch_done(socket.get_executor()) {}

  tcp::socket socket;
  beast::flat_buffer buffer;     // bytes read ahead of the current request
  net::steady_timer timer;       // delays; cancelled when the peer closes during a stream
  net::steady_timer watch_done;  // cancelled when the watcher exits
  bool watching = false;
  bool stop_watching = false;
  bool peer_closed = false;
};

// What to send for a plain (not streamed) answer.
struct Reply {
  http::status status = http::status::ok;
  std::string_view content_type = "application/json";
  std::string body;
  std::string_view allow;  // non-empty for 405
};

void LogException(std::exception_ptr error) {
  if (!error) return;
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fake_openai: connection failed: %s\n", e.what());
  }
}

auto Redirect(error_code& ec) { return net::redirect_error(net::use_awaitable, ec); }

std::int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Reply JsonError(http::status status, std::string_view message, std::string_view type) {
  return Reply{status, "application/json", ErrorBody(message, type), {}};
}

Reply MethodNotAllowed(std::string_view allow) {
  Reply reply =
      JsonError(http::status::method_not_allowed, "Method not allowed", "invalid_request_error");
  reply.allow = allow;
  return reply;
}

Reply FakeFailure(int status) {
  return JsonError(static_cast<http::status>(status), "fake failure " + std::to_string(status),
                   "server_error");
}

void CloseSocket(Connection& conn) {
  error_code ignored;
  conn.socket.shutdown(tcp::socket::shutdown_both, ignored);
  conn.socket.close(ignored);
}

// Writes `reply`; returns whether the connection may serve another request. `reply` belongs to the
// awaiting caller (g++ 12 destroys temporaries inside co_await expressions twice, so callers pass
// named objects only).
net::awaitable<bool> Send(Connection& conn, unsigned version, bool keep_alive, Reply& reply) {
  http::response<http::string_body> res{reply.status, version};
  res.set(http::field::content_type, reply.content_type);
  if (!reply.allow.empty()) res.set(http::field::allow, reply.allow);
  res.keep_alive(keep_alive);
  res.body() = std::move(reply.body);
  res.prepare_payload();
  error_code ec;
  co_await http::async_write(conn.socket, res, Redirect(ec));
  co_return !ec && keep_alive;
}

// FAULT:hang: read (and discard) until the client gives up, without ever answering.
net::awaitable<void> Hang(Connection& conn) {
  std::array<char, 4096> sink;
  for (;;) {
    error_code ec;
    co_await conn.socket.async_read_some(net::buffer(sink), Redirect(ec));
    if (ec) co_return;
  }
}

// Reads while a stream is being written, to notice at once when the client closes. Bytes that
// arrive (a pipelined request) stay in conn.buffer for the next parse.
net::awaitable<void> Watch(std::shared_ptr<Connection> conn) {
  while (!conn->stop_watching) {
    error_code ec;
    std::size_t n = co_await conn->socket.async_read_some(conn->buffer.prepare(4096), Redirect(ec));
    conn->buffer.commit(n);
    if (ec) {
      if (!conn->stop_watching) {
        conn->peer_closed = true;
        conn->timer.cancel();
      }
      break;
    }
  }
  conn->watching = false;
  conn->watch_done.cancel();
}

void StartWatching(const std::shared_ptr<Connection>& conn) {
  conn->watching = true;
  conn->stop_watching = false;
  conn->peer_closed = false;
  conn->watch_done.expires_at(net::steady_timer::time_point::max());
  net::co_spawn(conn->socket.get_executor(), Watch(conn), LogException);
}

net::awaitable<void> StopWatching(Connection& conn) {
  conn.stop_watching = true;
  if (!conn.watching) co_return;
  error_code ec;
  conn.socket.cancel(ec);
  co_await conn.watch_done.async_wait(Redirect(ec));
}

net::awaitable<void> Delay(Connection& conn, std::chrono::milliseconds delay) {
  if (delay.count() <= 0) co_return;
  conn.timer.expires_after(delay);
  error_code ec;
  co_await conn.timer.async_wait(Redirect(ec));
}

// Writes the SSE answer, one chunk per event. Returns whether the connection may be reused.
net::awaitable<bool> Stream(Shared& shared, std::shared_ptr<Connection> conn, unsigned version,
                            bool keep_alive, const StreamEvents& stream,
                            std::optional<std::size_t> drop_after,
                            std::chrono::milliseconds first_delay) {
  shared.stats.streams_started.fetch_add(1, std::memory_order_relaxed);
  std::size_t drop_at = stream.events.size() + 1;  // events written before the drop
  if (drop_after) drop_at = stream.first_content + std::min(*drop_after, stream.content_count);

  http::response<http::empty_body> res{http::status::ok, version};
  res.set(http::field::content_type, "text/event-stream");
  res.set(http::field::cache_control, "no-cache");
  res.keep_alive(keep_alive);
  res.chunked(true);
  http::response_serializer<http::empty_body> serializer{res};
  error_code ec;
  co_await http::async_write_header(conn->socket, serializer, Redirect(ec));
  if (ec) {
    shared.stats.streams_aborted.fetch_add(1, std::memory_order_relaxed);
    co_return false;
  }

  StartWatching(conn);
  bool aborted = false;
  for (std::size_t i = 0; i < stream.events.size() && !aborted; ++i) {
    if (i == drop_at) {
      shared.stats.streams_dropped.fetch_add(1, std::memory_order_relaxed);
      co_await StopWatching(*conn);
      CloseSocket(*conn);
      co_return false;
    }
    if (i > 0) co_await Delay(*conn, shared.options.chunk_delay);
    if (i == 0) co_await Delay(*conn, first_delay);  // cut short when the client leaves
    if (conn->peer_closed) {
      aborted = true;
      break;
    }
    const auto chunk = http::make_chunk(net::buffer(stream.events[i]));
    co_await net::async_write(conn->socket, chunk, Redirect(ec));
    aborted = static_cast<bool>(ec) || conn->peer_closed;
  }
  if (!aborted) {
    const auto last = http::make_chunk_last();
    co_await net::async_write(conn->socket, last, Redirect(ec));
    aborted = static_cast<bool>(ec);
  }
  co_await StopWatching(*conn);
  if (aborted) {
    shared.stats.streams_aborted.fetch_add(1, std::memory_order_relaxed);
    co_return false;
  }
  shared.stats.streams_completed.fetch_add(1, std::memory_order_relaxed);
  co_return keep_alive && !conn->peer_closed;
}

void MergeFault(const Fault& from, Fault& into) {
  into.drop = into.drop || from.drop;
  into.hang = into.hang || from.hang;
  into.invalid_json = into.invalid_json || from.invalid_json;
  if (from.status) into.status = from.status;
  into.sleep += from.sleep;
  into.flaky_keys.insert(into.flaky_keys.end(), from.flaky_keys.begin(), from.flaky_keys.end());
  if (from.first_token_delay.count() > 0) {
    into.first_token_delay = from.first_token_delay;
    into.first_token_delay_percent = from.first_token_delay_percent;
  }
  if (from.stream_drop_after && !into.stream_drop_after) {
    into.stream_drop_after = from.stream_drop_after;
  }
}

enum class FaultOutcome { kNone, kClose, kReply };

// Applies the faults that replace or delay an answer, in this order: drop, hang, delay (latency
// plus sleep), status, flaky, invalid-json. kReply means `reply` holds the answer to send.
net::awaitable<FaultOutcome> ApplyFaults(Shared& shared, Connection& conn, const Fault& fault,
                                         Reply& reply) {
  if (fault.drop) {
    CloseSocket(conn);
    co_return FaultOutcome::kClose;
  }
  if (fault.hang) {
    co_await Hang(conn);
    CloseSocket(conn);
    co_return FaultOutcome::kClose;
  }
  co_await Delay(conn, shared.options.latency + fault.sleep);
  if (fault.status) {
    reply = FakeFailure(*fault.status);
    co_return FaultOutcome::kReply;
  }
  bool first_time = false;
  for (const auto& key : fault.flaky_keys) first_time = shared.flaky.FirstSeen(key) || first_time;
  if (first_time) {
    reply = FakeFailure(503);
    co_return FaultOutcome::kReply;
  }
  if (fault.invalid_json) {
    reply = Reply{http::status::ok, "application/json", "this is not json", {}};
    co_return FaultOutcome::kReply;
  }
  co_return FaultOutcome::kNone;
}

std::string NextId(Shared& shared) {
  return "chatcmpl-fake-" + std::to_string(shared.next_id.fetch_add(1, std::memory_order_relaxed));
}

void Record(Shared& shared, const http::request<http::string_body>& req) {
  RecordedRequest record{
      std::string(req.method_string()), std::string(req.target()), {}, req.body()};
  for (const auto& field : req) {
    std::string name(field.name_string());
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    record.headers.emplace_back(std::move(name), std::string(field.value()));
  }
  shared.log.Add(std::move(record));
}

// What a request asks for, decided without I/O.
struct Action {
  enum class Kind { kReply, kChat, kModels, kFixed } kind = Kind::kReply;
  Reply reply;    // kReply: the answer
  ChatPlan plan;  // kChat
  Reply fixed;    // kFixed: the answer unless a fault answers instead
  Fault fault;    // the faults to apply first (kChat, kModels, kFixed)
};

Action Route(Shared& shared, const http::request<http::string_body>& req) {
  const std::string_view target = req.target();
  const std::string_view path = target.substr(0, target.find('?'));
  const http::verb method = req.method();
  Action action;

  if (path.starts_with("/v1/")) {
    shared.stats.requests.fetch_add(1, std::memory_order_relaxed);
    if (shared.log.enabled()) Record(shared, req);
    ParseFaultMarkers(req["X-Fake-Fault"], action.fault);
    {
      std::lock_guard lock(shared.standing_fault_mutex);
      ParseFaultMarkers(shared.standing_fault, action.fault);
    }
    if (path == "/v1/chat/completions") {
      if (method != http::verb::post) {
        action.reply = MethodNotAllowed("POST");
        return action;
      }
      ChatParse parsed = ParseChatRequest(req.body());
      if (!parsed.plan) {
        action.reply = JsonError(http::status::bad_request, parsed.error, "invalid_request_error");
        return action;
      }
      action.kind = Action::Kind::kChat;
      action.plan = std::move(*parsed.plan);
      MergeFault(action.plan.fault, action.fault);
      return action;
    }
    if (path == "/v1/models") {
      if (method != http::verb::get) {
        action.reply = MethodNotAllowed("GET");
        return action;
      }
      action.kind = Action::Kind::kModels;
      return action;
    }
    // Any other OpenAI call a gateway may pass through: models/{id}, embeddings, and an echo of
    // what arrived for the rest.
    action.kind = Action::Kind::kFixed;
    constexpr std::string_view kModelPrefix = "/v1/models/";
    if (path.starts_with(kModelPrefix) && method == http::verb::get) {
      const auto id = path.substr(kModelPrefix.size());
      if (auto body = ModelBody(id)) {
        action.fixed = Reply{http::status::ok, "application/json", std::move(*body), {}};
      } else {
        action.fixed =
            JsonError(http::status::not_found, "The model '" + std::string(id) + "' does not exist",
                      "invalid_request_error");
      }
      return action;
    }
    if (path == "/v1/embeddings") {
      if (method != http::verb::post) {
        action.fixed = MethodNotAllowed("POST");
        return action;
      }
      EmbeddingsReply embeddings = EmbeddingsBody(req.body());
      action.fixed =
          embeddings.error.empty()
              ? Reply{http::status::ok, "application/json", std::move(embeddings.body), {}}
              : JsonError(http::status::bad_request, embeddings.error, "invalid_request_error");
      return action;
    }
    action.fixed =
        Reply{http::status::ok,
              "application/json",
              EchoBody(req.method_string(), target, req[http::field::content_type], req.body()),
              {}};
    return action;
  } else if (path == "/_fake/requests") {
    if (method == http::verb::get) {
      action.reply = Reply{http::status::ok, "application/json", shared.log.ToJson(), {}};
    } else if (method == http::verb::delete_) {
      shared.log.Clear();
      action.reply = Reply{http::status::ok, "application/json", "{\"cleared\":true}", {}};
    } else {
      action.reply = MethodNotAllowed("GET, DELETE");
    }
    return action;
  } else if (path == "/_fake/fault") {
    if (method == http::verb::put) {
      std::lock_guard lock(shared.standing_fault_mutex);
      shared.standing_fault = req.body();
      action.reply = Reply{http::status::ok, "application/json", "{\"fault\":\"set\"}", {}};
    } else if (method == http::verb::delete_) {
      std::lock_guard lock(shared.standing_fault_mutex);
      shared.standing_fault.clear();
      action.reply = Reply{http::status::ok, "application/json", "{\"fault\":\"cleared\"}", {}};
    } else {
      action.reply = MethodNotAllowed("PUT, DELETE");
    }
    return action;
  } else if (path == "/_fake/stats") {
    action.reply = method == http::verb::get
                       ? Reply{http::status::ok, "application/json", shared.stats.ToJson(), {}}
                       : MethodNotAllowed("GET");
    return action;
  }
  action.reply = JsonError(http::status::not_found, "Unknown path: " + std::string(path),
                           "invalid_request_error");
  return action;
}

// Answers one request; returns whether the connection may serve another one.
net::awaitable<bool> Handle(Shared& shared, std::shared_ptr<Connection> conn,
                            http::request<http::string_body> req) {
  const unsigned version = req.version();
  const bool keep_alive = req.keep_alive();
  Action action = Route(shared, req);

  if (action.kind != Action::Kind::kReply) {
    const FaultOutcome outcome = co_await ApplyFaults(shared, *conn, action.fault, action.reply);
    if (outcome == FaultOutcome::kClose) co_return false;
    if (outcome == FaultOutcome::kNone) {
      if (action.kind == Action::Kind::kModels) {
        action.reply = Reply{http::status::ok, "application/json", ModelsBody(), {}};
      } else if (action.kind == Action::Kind::kFixed) {
        action.reply = std::move(action.fixed);
      } else if (action.plan.stream) {
        const StreamEvents events =
            BuildStreamEvents(action.plan, NextId(shared), UnixNow(), shared.options.chunks);
        const std::optional<std::size_t> drop_after = action.fault.stream_drop_after;
        std::chrono::milliseconds first_delay{0};
        if (action.fault.first_token_delay.count() > 0) {
          thread_local std::mt19937 engine{std::random_device{}()};
          if (std::uniform_int_distribution<int>(0, 99)(engine) <
              action.fault.first_token_delay_percent) {
            first_delay = action.fault.first_token_delay;
          }
        }
        const bool reuse =
            co_await Stream(shared, conn, version, keep_alive, events, drop_after, first_delay);
        co_return reuse;
      } else {
        action.reply = Reply{http::status::ok,
                             "application/json",
                             CompletionBody(action.plan, NextId(shared), UnixNow()),
                             {}};
      }
    }
  }
  const bool reuse = co_await Send(*conn, version, keep_alive, action.reply);
  co_return reuse;
}

// Serves the requests of one connection, one after the other (HTTP/1.1 keep-alive).
net::awaitable<void> Serve(std::shared_ptr<Shared> shared, std::shared_ptr<Connection> conn) {
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(kHeaderLimit);
    parser.body_limit(kBodyLimit);
    error_code ec;
    co_await http::async_read_header(conn->socket, conn->buffer, parser, Redirect(ec));
    if (ec) break;
    // curl asks before sending bodies over 1 KiB; answer at once instead of making it wait.
    if (beast::iequals(parser.get()[http::field::expect], "100-continue")) {
      http::response<http::empty_body> go_on{http::status::continue_, parser.get().version()};
      co_await http::async_write(conn->socket, go_on, Redirect(ec));
      if (ec) break;
    }
    co_await http::async_read(conn->socket, conn->buffer, parser, Redirect(ec));
    if (ec) break;
    http::request<http::string_body> request = parser.release();
    const bool reuse = co_await Handle(*shared, conn, std::move(request));
    if (!reuse) break;
  }
  CloseSocket(*conn);
}

// Accepts on one io_context and hands the connections to all of them in turn.
net::awaitable<void> Accept(tcp::acceptor acceptor, std::vector<net::io_context*> contexts,
                            std::shared_ptr<Shared> shared) {
  std::size_t next = 0;
  net::steady_timer backoff(acceptor.get_executor());
  for (;;) {
    net::io_context& context = *contexts[next++ % contexts.size()];
    tcp::socket socket(context);
    error_code ec;
    co_await acceptor.async_accept(socket, Redirect(ec));
    if (ec == net::error::operation_aborted) co_return;
    if (ec) {
      // Out of descriptors or similar: wait a little instead of spinning.
      backoff.expires_after(std::chrono::milliseconds(10));
      co_await backoff.async_wait(Redirect(ec));
      continue;
    }
    socket.set_option(tcp::no_delay(true), ec);
    auto conn = std::make_shared<Connection>(std::move(socket));
    net::co_spawn(context, Serve(shared, std::move(conn)), LogException);
  }
}

}  // namespace

int RunServer(const ServerOptions& options) {
  auto shared = std::make_shared<Shared>(options);
  const int threads = std::max(1, options.threads);

  // Destroyed in this order at the end: contexts[0] owns the acceptor coroutine, whose pending
  // accept holds a socket of another context, so it must go first.
  std::vector<std::unique_ptr<net::io_context>> contexts;
  for (int i = 0; i < threads; ++i) contexts.push_back(std::make_unique<net::io_context>(1));
  std::vector<net::io_context*> raw;
  for (auto& context : contexts) raw.push_back(context.get());

  tcp::resolver resolver(*contexts[0]);
  tcp::endpoint endpoint = *resolver.resolve(options.host, std::to_string(options.port)).begin();
  tcp::acceptor acceptor(*contexts[0]);
  acceptor.open(endpoint.protocol());
  acceptor.set_option(net::socket_base::reuse_address(true));
  acceptor.bind(endpoint);
  acceptor.listen(net::socket_base::max_listen_connections);
  const tcp::endpoint local = acceptor.local_endpoint();
  const std::string host = local.address().is_v6() ? "[" + local.address().to_string() + "]"
                                                   : local.address().to_string();
  net::co_spawn(*contexts[0], Accept(std::move(acceptor), raw, shared), LogException);

  net::signal_set signals(*contexts[0], SIGINT, SIGTERM);
  signals.async_wait([&contexts](const error_code& ec, int) {
    if (ec) return;
    for (auto& context : contexts) context->stop();
  });

  std::vector<net::executor_work_guard<net::io_context::executor_type>> guards;
  for (auto& context : contexts) guards.push_back(net::make_work_guard(*context));

  std::cout << "fake_openai listening on http://" << host << ":" << local.port() << std::endl;

  std::vector<std::thread> workers;
  for (int i = 1; i < threads; ++i) {
    workers.emplace_back(
        [context = contexts[static_cast<std::size_t>(i)].get()] { context->run(); });
  }
  contexts[0]->run();
  for (auto& context : contexts) context->stop();
  for (auto& worker : workers) worker.join();

  guards.clear();
  signals.cancel();
  for (auto& context : contexts) context.reset();
  return 0;
}

}  // namespace staple::fake
