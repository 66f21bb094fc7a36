#include "upstream/asio_client.h"

#include <curl/curl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <algorithm>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <deque>
#include <limits>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "upstream/call_registry.h"
#include "upstream/request_head.h"
#include "upstream/retry.h"

namespace staple::upstream {

namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// Where the base URL points.
struct Origin {
  bool tls = false;
  std::string host;         // a name or an address, without the brackets of an IPv6 address
  std::string port;         // always given ("443" by default for https)
  std::string host_header;  // the Host field: the host, and the port when the URL names one
  std::string path;         // the base URL's path without a trailing slash, e.g. "/v1"
  std::string key;          // the pool's key: scheme, host and port
};

Error InvalidUrl() {
  // Never the URL itself: it may carry a key.
  return MakeError(ErrorKind::kInvalidArgument,
                   "the upstream base URL is not an http:// or https:// URL with a host (user "
                   "info, a query or a fragment are not supported)");
}

// Parsed with libcurl's URL API (the same parser the libcurl client uses).
Result<Origin> ParseOrigin(const std::string& base_url) {
  std::unique_ptr<CURLU, decltype(&curl_url_cleanup)> url(curl_url(), curl_url_cleanup);
  if (!url) return MakeError(ErrorKind::kInternal, "out of memory");
  if (curl_url_set(url.get(), CURLUPART_URL, base_url.c_str(), 0) != CURLUE_OK) {
    return InvalidUrl();
  }
  auto part = [&url](CURLUPart which, unsigned int flags) -> std::optional<std::string> {
    char* text = nullptr;
    if (curl_url_get(url.get(), which, &text, flags) != CURLUE_OK || text == nullptr) {
      return std::nullopt;
    }
    std::string out(text);
    curl_free(text);
    return out;
  };
  auto scheme = part(CURLUPART_SCHEME, 0);
  auto host = part(CURLUPART_HOST, 0);
  auto port = part(CURLUPART_PORT, CURLU_DEFAULT_PORT);
  auto path = part(CURLUPART_PATH, 0);
  if (!scheme || (*scheme != "http" && *scheme != "https") || !host || host->empty() || !port ||
      !path || part(CURLUPART_USER, 0) || part(CURLUPART_QUERY, 0) || part(CURLUPART_FRAGMENT, 0)) {
    return InvalidUrl();
  }
  Origin origin;
  origin.tls = *scheme == "https";
  origin.host_header = *host;
  if (part(CURLUPART_PORT, 0)) origin.host_header += ":" + *port;
  if (host->size() > 2 && host->front() == '[' && host->back() == ']') {
    origin.host = host->substr(1, host->size() - 2);
  } else {
    origin.host = *host;
  }
  origin.port = *port;
  origin.path = *path;
  while (!origin.path.empty() && origin.path.back() == '/') origin.path.pop_back();
  origin.key = *scheme + "://" + *host + ":" + *port;
  return origin;
}

std::shared_ptr<ssl::context> MakeTlsContext() {
  auto context = std::make_shared<ssl::context>(ssl::context::tls_client);
  context->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                       ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  context->set_default_verify_paths();
  context->set_verify_mode(ssl::verify_peer);
  return context;
}

std::string Ms(milliseconds duration) { return std::to_string(duration.count()) + " ms"; }

// One connection to an origin, plain or TLS, with the bytes read but not parsed yet.
class Connection {
 public:
  Connection(const net::any_io_executor& executor, std::shared_ptr<ssl::context> tls_context)
      : tls_context_(std::move(tls_context)) {
    if (tls_context_) {
      tls_.emplace(executor, *tls_context_);
    } else {
      plain_.emplace(executor);
    }
  }

  beast::tcp_stream& tcp() { return tls_ ? tls_->next_layer() : *plain_; }
  ssl::stream<beast::tcp_stream>* tls() { return tls_ ? &*tls_ : nullptr; }

  // Runs `operation(stream, token)` on the stream the bytes go through; the error it ended with.
  template <typename Operation>
  net::awaitable<beast::error_code> Run(Operation& operation) {
    beast::error_code error;
    auto token = net::redirect_error(net::use_awaitable, error);
    if (tls_) {
      co_await operation(*tls_, token);
    } else {
      co_await operation(*plain_, token);
    }
    co_return error;
  }

  // Whether the connection can carry another request: nothing unread in its buffer, the socket
  // open and, when `peek`, the peer neither closed it nor sent anything unasked since (a close, a
  // TLS alert, stray bytes: one recv with MSG_PEEK tells).
  bool LooksAlive(bool peek) {
    if (buffer.size() != 0) return false;
    auto& socket = tcp().socket();
    if (!socket.is_open()) return false;
    if (!peek) return true;
    char byte = 0;
    const ssize_t got = ::recv(socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  beast::flat_buffer buffer;  // read from the socket, not parsed yet
  Clock::time_point idle_since;

 private:
  std::shared_ptr<ssl::context> tls_context_;  // outlives the stream that uses it
  std::optional<beast::tcp_stream> plain_;
  std::optional<ssl::stream<beast::tcp_stream>> tls_;
};

// The idle connections and resolved addresses of one io_context (a service of it, so that they
// go when it goes), shared by every AsioClient. Used on the io_context's thread only.
class ConnectionPools final : public net::execution_context::service {
 public:
  static net::execution_context::id id;
  // Connections idle for longer are closed instead of used (servers close theirs after 60 s or
  // more, some after 5 s: the peek in LooksAlive and the resend in Exchange cover those).
  static constexpr auto kMaxIdle = std::chrono::seconds(50);
  // Idle connections kept per origin; a connection given back beyond that is closed.
  static constexpr std::size_t kMaxIdlePerOrigin = 4096;
  static constexpr auto kAddressLifetime = std::chrono::seconds(30);

  explicit ConnectionPools(net::execution_context& context) : service(context) {}

  static ConnectionPools& Of(const net::any_io_executor& executor) {
    using IoExecutor = net::io_context::executor_type;
    if (const auto* io = executor.target<IoExecutor>()) {
      return net::use_service<ConnectionPools>(io->context());
    }
    if (const auto* strand = executor.target<net::strand<IoExecutor>>()) {
      return net::use_service<ConnectionPools>(strand->get_inner_executor().context());
    }
    throw std::logic_error("the upstream client needs a net::io_context executor");
  }

  // The most recently used idle connection that still looks alive, or null. One idle for less
  // than `peek_after` is taken without LooksAlive's peek (Settings::peek_idle_after).
  std::unique_ptr<Connection> Take(const std::string& origin,
                                   std::chrono::milliseconds peek_after) {
    auto found = idle_.find(origin);
    if (found == idle_.end()) return nullptr;
    auto& stack = found->second;
    const auto now = Clock::now();
    while (!stack.empty()) {
      std::unique_ptr<Connection> connection = std::move(stack.back());
      stack.pop_back();
      const auto idle = now - connection->idle_since;
      if (idle < kMaxIdle && connection->LooksAlive(/*peek=*/idle >= peek_after)) {
        return connection;
      }
    }
    return nullptr;
  }

  // Keeps a connection whose last response was read to its end. The oldest ones past kMaxIdle
  // are closed here, so that a busy origin does not hold stale sockets.
  void Give(const std::string& origin, std::unique_ptr<Connection> connection) {
    auto& stack = idle_[origin];
    const auto now = Clock::now();
    while (!stack.empty() &&
           (now - stack.front()->idle_since >= kMaxIdle || stack.size() >= kMaxIdlePerOrigin)) {
      stack.pop_front();
    }
    connection->tcp().expires_never();
    connection->idle_since = now;
    stack.push_back(std::move(connection));
  }

  // One host-name lookup; waiters of the same origin share it.
  struct Lookup {
    explicit Lookup(const net::any_io_executor& executor) : done(executor) {
      done.expires_at(Clock::time_point::max());
    }
    std::vector<tcp::endpoint> endpoints;
    std::optional<Error> failure;
    bool finished = false;
    Clock::time_point at;
    net::steady_timer done;  // cancelled when the lookup finished
  };
  std::unordered_map<std::string, std::shared_ptr<Lookup>> lookups;

 private:
  void shutdown() override {
    idle_.clear();
    lookups.clear();
  }

  std::unordered_map<std::string, std::deque<std::unique_ptr<Connection>>> idle_;
};

net::execution_context::id ConnectionPools::id;

net::awaitable<Result<std::vector<tcp::endpoint>>> Resolve(ConnectionPools& pools,
                                                           const Origin& origin) {
  beast::error_code error;
  const auto address = net::ip::make_address(origin.host, error);
  if (!error) {
    const auto port = static_cast<unsigned short>(std::stoul(origin.port));
    co_return std::vector<tcp::endpoint>{tcp::endpoint(address, port)};
  }
  const auto executor = co_await net::this_coro::executor;
  std::shared_ptr<ConnectionPools::Lookup> lookup = pools.lookups[origin.key];
  const bool fresh = lookup && lookup->finished && !lookup->failure &&
                     Clock::now() - lookup->at < ConnectionPools::kAddressLifetime;
  if (lookup && !lookup->finished) {
    boost::system::error_code ignored;  // cancelled: the lookup finished
    co_await lookup->done.async_wait(net::redirect_error(net::use_awaitable, ignored));
  } else if (!fresh) {
    lookup = std::make_shared<ConnectionPools::Lookup>(executor);
    pools.lookups[origin.key] = lookup;
    tcp::resolver resolver(executor);
    auto results = co_await resolver.async_resolve(origin.host, origin.port,
                                                   net::redirect_error(net::use_awaitable, error));
    if (error || results.empty()) {
      lookup->failure =
          MakeError(ErrorKind::kUnavailable,
                    "cannot resolve the upstream host " + origin.host + ": " + error.message());
      auto entry = pools.lookups.find(origin.key);
      if (entry != pools.lookups.end() && entry->second == lookup) pools.lookups.erase(entry);
    } else {
      for (const auto& result : results) lookup->endpoints.push_back(result.endpoint());
    }
    lookup->finished = true;
    lookup->at = Clock::now();
    lookup->done.cancel();
  }
  if (lookup->failure) co_return *lookup->failure;
  co_return lookup->endpoints;
}

}  // namespace

// What the coroutines of one client share; it outlives the AsioClient while they run.
struct AsioClientState {
  explicit AsioClientState(Settings s)
      : settings(std::move(s)), origin(ParseOrigin(settings.base_url)) {
    if (origin && origin->tls) tls_context = MakeTlsContext();
  }

  const Settings settings;
  const Result<Origin> origin;
  std::shared_ptr<ssl::context> tls_context;  // https only
  CallRegistry calls;
};

// One Send() or stream in flight, registered with its client so that Shutdown() can reach it
// from any thread. It owns the connection of its current attempt, so that Cancel() can close it.
// Used on its io_context's thread; Shutdown() posts Cancel() there.
class AsioCall final : public CancellableCall {
 public:
  static std::shared_ptr<AsioCall> Begin(std::shared_ptr<AsioClientState> state,
                                         net::any_io_executor executor) {
    std::shared_ptr<AsioCall> call(new AsioCall(state, executor));
    if (!state->calls.Add(call, std::move(executor))) call->cancelled_ = true;
    return call;
  }

  ~AsioCall() override { state_->calls.Remove(this); }
  AsioCall(const AsioCall&) = delete;
  AsioCall& operator=(const AsioCall&) = delete;

  bool cancelled() const { return cancelled_; }

  void Cancel() override {
    cancelled_ = true;
    if (connection) connection->tcp().close();
    timer_.cancel();
  }

  // Waits before the next attempt; Cancel() cuts it short.
  net::awaitable<void> Sleep(milliseconds delay) {
    timer_.expires_after(delay);
    boost::system::error_code ignored;
    co_await timer_.async_wait(net::redirect_error(net::use_awaitable, ignored));
  }

  // Gives the connection back to its pool when the exchange on it is complete and the peer
  // keeps it open; closes it otherwise.
  void Release(ConnectionPools& pools, const std::string& origin, bool reusable) {
    std::unique_ptr<Connection> done = std::move(connection);
    if (!done || !reusable || cancelled_ || !done->tcp().socket().is_open() ||
        done->buffer.size() != 0) {
      return;
    }
    pools.Give(origin, std::move(done));
  }

  std::unique_ptr<Connection> connection;  // the current attempt's

 private:
  AsioCall(std::shared_ptr<AsioClientState> state, net::any_io_executor executor)
      : state_(std::move(state)), timer_(std::move(executor)) {}

  std::shared_ptr<AsioClientState> state_;
  net::steady_timer timer_;
  bool cancelled_ = false;
};

namespace {

// A body read into a std::string by appending what arrives. Unlike http::string_body it does not
// reserve the announced Content-Length up front: a stream hands its bytes out as they come, and
// an upstream's length must not decide what is allocated (the collected answer is capped by
// Settings::max_response_bytes through the parser's body limit).
struct AppendBody {
  using value_type = std::string;

  class reader {
   public:
    template <bool isRequest, class Fields>
    reader(http::header<isRequest, Fields>&, value_type& body) : body_(body) {}

    void init(const boost::optional<std::uint64_t>&, beast::error_code& error) { error = {}; }

    template <class ConstBufferSequence>
    std::size_t put(const ConstBufferSequence& buffers, beast::error_code& error) {
      error = {};
      std::size_t added = 0;
      for (auto it = net::buffer_sequence_begin(buffers); it != net::buffer_sequence_end(buffers);
           ++it) {
        const net::const_buffer piece = *it;
        body_.append(static_cast<const char*>(piece.data()), piece.size());
        added += piece.size();
      }
      return added;
    }

    void finish(beast::error_code& error) { error = {}; }

   private:
    value_type& body_;
  };
};

using Parser = http::response_parser<AppendBody>;
constexpr std::uint32_t kHeaderLimit = 64 * 1024;

// How one attempt ended before or at the response headers.
struct Outcome {
  std::optional<Error> failure;
  bool retryable = false;  // the server cannot have started on the request
};

Outcome Failed(ErrorKind kind, std::string message, bool retryable, const Settings& settings) {
  return Outcome{MakeError(kind, Redact(std::move(message), settings.api_key)), retryable};
}

// A connection to the origin: resolved, connected and (https) through the TLS handshake by
// `deadline`. It becomes the call's connection.
net::awaitable<Outcome> Connect(AsioCall& call, const AsioClientState& state,
                                ConnectionPools& pools, Clock::time_point deadline,
                                bool deadline_is_total) {
  const Origin& origin = *state.origin;
  const Settings& settings = state.settings;
  auto endpoints = co_await Resolve(pools, origin);
  if (call.cancelled()) co_return Outcome{ShutDownError(), false};
  if (!endpoints) co_return Outcome{endpoints.error(), true};
  const auto executor = co_await net::this_coro::executor;
  call.connection = std::make_unique<Connection>(executor, state.tls_context);
  Connection& connection = *call.connection;
  connection.tcp().expires_at(deadline);
  auto connect = [&endpoints](auto& stream, auto token) {
    return beast::get_lowest_layer(stream).async_connect(*endpoints, token);
  };
  beast::error_code error = co_await connection.Run(connect);
  const std::string where = origin.host + ":" + origin.port;
  auto timed_out = [&] {
    return deadline_is_total
               ? Failed(ErrorKind::kTimeout, "upstream exchange exceeded the total timeout", false,
                        settings)
               : Failed(ErrorKind::kTimeout,
                        "upstream connection not ready within " + Ms(settings.connect_timeout),
                        true, settings);
  };
  if (call.cancelled()) co_return Outcome{ShutDownError(), false};
  if (error == beast::error::timeout) co_return timed_out();
  if (error) {
    co_return Failed(ErrorKind::kUnavailable,
                     "upstream request failed: cannot connect to " + where + ": " + error.message(),
                     true, settings);
  }
  beast::error_code ignored;
  // No Nagle delay; TCP keepalive probes after 30 s idle, every 15 s, so that a kept connection
  // or a quiet stream whose peer vanished is noticed (as the libcurl client sets it).
  auto& socket = connection.tcp().socket();
  socket.set_option(tcp::no_delay(true), ignored);
  socket.set_option(net::socket_base::keep_alive(true), ignored);
  const int idle_seconds = 30;
  const int interval_seconds = 15;
  ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_KEEPIDLE, &idle_seconds,
               sizeof idle_seconds);
  ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_KEEPINTVL, &interval_seconds,
               sizeof interval_seconds);
  if (auto* tls = connection.tls()) {
    // SNI, and the certificate must name the host.
    if (SSL_set_tlsext_host_name(tls->native_handle(), origin.host.c_str()) != 1) {
      co_return Failed(ErrorKind::kUnavailable, "upstream request failed: cannot set TLS SNI",
                       false, settings);
    }
    tls->set_verify_callback(ssl::host_name_verification(origin.host));
    co_await tls->async_handshake(ssl::stream_base::client,
                                  net::redirect_error(net::use_awaitable, error));
    if (call.cancelled()) co_return Outcome{ShutDownError(), false};
    if (error == beast::error::timeout) co_return timed_out();
    if (error) {
      co_return Failed(
          ErrorKind::kUnavailable,
          "upstream request failed: TLS handshake with " + where + ": " + error.message(), true,
          settings);
    }
  }
  co_return Outcome{};
}

std::unique_ptr<Parser> NewParser(const http::request<http::string_body>& message,
                                  std::optional<std::uint64_t> body_limit) {
  auto parser = std::make_unique<Parser>();
  parser->header_limit(kHeaderLimit);
  // No limit is the largest one: Boost 1.74 compares a Content-Length with an empty limit as if
  // it were exceeded.
  parser->body_limit(body_limit.value_or(std::numeric_limits<std::uint64_t>::max()));
  // The answer to a HEAD has no body, whatever its Content-Length says.
  if (message.method() == http::verb::head) parser->skip(true);
  return parser;
}

// Whether `error` means the connection went away, rather than bytes that are not HTTP.
bool ConnectionDropped(const beast::error_code& error) {
  return error == http::error::partial_message || error == http::error::end_of_stream ||
         error == net::error::eof || error == net::error::connection_reset ||
         error == net::error::broken_pipe || error == net::error::connection_aborted ||
         error == ssl::error::stream_truncated;
}

struct Limits {
  std::optional<Clock::time_point> total;
  bool answer_at_once = false;
};

// One attempt up to the response headers: a pooled connection, or a new one, carries `message`;
// `parser` holds the headers when it succeeds, and the call the connection.
net::awaitable<Outcome> Exchange(AsioCall& call, const AsioClientState& state,
                                 ConnectionPools& pools, http::request<http::string_body>& message,
                                 std::unique_ptr<Parser>& parser, Limits limits,
                                 std::optional<std::uint64_t> body_limit) {
  const Settings& settings = state.settings;
  const Origin& origin = *state.origin;
  const auto started = Clock::now();
  for (;;) {
    if (call.cancelled()) co_return Outcome{ShutDownError(), false};
    bool reused = false;
    call.connection = pools.Take(origin.key, settings.peek_idle_after);
    if (call.connection) {
      reused = true;
    } else {
      auto connect_by = started + settings.connect_timeout;
      const bool by_total = limits.total && *limits.total <= connect_by;
      if (by_total) connect_by = *limits.total;
      Outcome connected = co_await Connect(call, state, pools, connect_by, by_total);
      if (connected.failure) {
        call.connection.reset();
        co_return connected;
      }
    }
    Connection& connection = *call.connection;
    parser = NewParser(message, body_limit);

    // From the moment the request goes out the first-byte deadline runs (none for an answer
    // that comes whole), capped by the total one.
    auto deadline = Clock::time_point::max();
    std::string why;
    if (!limits.answer_at_once) {
      deadline = Clock::now() + settings.first_byte_timeout;
      why = "upstream sent no response within " + Ms(settings.first_byte_timeout);
    }
    if (limits.total && *limits.total <= deadline) {
      deadline = *limits.total;
      why = "upstream exchange exceeded the total timeout";
    }
    if (deadline == Clock::time_point::max()) {
      connection.tcp().expires_never();
    } else {
      connection.tcp().expires_at(deadline);
    }
    auto write = [&message](auto& stream, auto token) {
      return http::async_write(stream, message, token);
    };
    beast::error_code error = co_await connection.Run(write);
    auto read_header = [&connection, &parser](auto& stream, auto token) {
      return http::async_read_header(stream, connection.buffer, *parser, token);
    };
    if (!error) error = co_await connection.Run(read_header);
    // Interim responses (103 Early Hints, a 100 Continue nobody asked for) come before the
    // answer: each is read and dropped.
    while (!error && parser->get().result_int() / 100 == 1 && parser->get().result_int() != 101) {
      parser = NewParser(message, body_limit);
      error = co_await connection.Run(read_header);
    }
    if (call.cancelled()) co_return Outcome{ShutDownError(), false};
    if (!error) co_return Outcome{};
    const bool nothing_back = !parser->got_some();
    call.connection.reset();
    if (error == beast::error::timeout) co_return Failed(ErrorKind::kTimeout, why, false, settings);
    // A pooled connection the server closed while it sat idle: it never saw this request.
    if (reused && nothing_back) continue;
    if (nothing_back) {
      co_return Failed(ErrorKind::kUnavailable,
                       "upstream request failed: the connection closed before a response (" +
                           error.message() + ")",
                       true, settings);
    }
    if (ConnectionDropped(error)) {
      co_return Failed(
          ErrorKind::kUnavailable,
          "upstream request failed: the connection closed mid-head (" + error.message() + ")",
          false, settings);
    }
    co_return Failed(ErrorKind::kUpstream,
                     "upstream request failed: invalid response head (" + error.message() + ")",
                     false, settings);
  }
}

std::string_view View(beast::string_view text) { return {text.data(), text.size()}; }

void ReadHead(const http::response_header<>& head, long& status, std::string& content_type,
              Headers& headers) {
  status = static_cast<long>(head.result_int());
  content_type = std::string(View(head[http::field::content_type]));
  headers.clear();
  for (const auto& field : head) {
    headers.emplace_back(ToLowerAscii(View(field.name_string())), std::string(View(field.value())));
  }
}

Result<http::request<http::string_body>> BuildMessage(const AsioClientState& state,
                                                      Request& request, bool stream) {
  auto fields = RequestHeaders(state.settings, request, stream);
  if (!fields) return fields.error();
  http::request<http::string_body> message;
  message.method_string(request.method);
  message.target(state.origin->path + request.path);
  message.version(11);
  message.set(http::field::host, state.origin->host_header);
  for (const auto& [name, value] : *fields) message.insert(name, value);
  message.body() = std::move(request.body);
  message.prepare_payload();
  return message;
}

// The wait before the next attempt, or std::nullopt when this outcome stands.
std::optional<milliseconds> RetryWait(const Settings& settings, int attempt, bool enabled,
                                      const Outcome& outcome, long status, const Headers& headers) {
  if (!enabled || attempt > settings.max_retries) return std::nullopt;
  if (outcome.failure) {
    if (!outcome.retryable) return std::nullopt;
    return RetryDelay(settings, attempt, std::nullopt, UniformSample());
  }
  if (!IsRetryableStatus(status)) return std::nullopt;
  return RetryDelay(settings, attempt, RetryAfter(headers), UniformSample());
}

std::shared_ptr<AsioCall> BeginCall(const std::shared_ptr<AsioClientState>& state,
                                    const net::any_io_executor& executor, const Request& request) {
  auto call = AsioCall::Begin(state, executor);
  if (request.cancellation) {
    request.cancellation->OnCancel([weak = std::weak_ptr<AsioCall>(call)] {
      if (auto alive = weak.lock()) alive->Cancel();
    });
  }
  return call;
}

Outcome BodyFailure(const beast::error_code& error, const Settings& settings, std::string why) {
  if (error == beast::error::timeout) {
    return Failed(ErrorKind::kTimeout, std::move(why), false, settings);
  }
  if (error == http::error::body_limit) {
    return Failed(
        ErrorKind::kUpstream,
        "upstream answer larger than " + std::to_string(settings.max_response_bytes) + " bytes",
        false, settings);
  }
  if (ConnectionDropped(error)) {
    return Failed(
        ErrorKind::kUnavailable,
        "upstream request failed: the connection closed mid-body (" + error.message() + ")", false,
        settings);
  }
  return Failed(ErrorKind::kUpstream,
                "upstream request failed: invalid response body (" + error.message() + ")", false,
                settings);
}

// The end of the total deadline: the client's, or the request's own when that is earlier.
Clock::time_point TotalDeadline(Clock::time_point started, const Settings& settings,
                                const Request& request) {
  const auto total = started + settings.total_timeout;
  return request.deadline && *request.deadline < total ? *request.deadline : total;
}

// Why no further attempt may start, if so: a cancelled call, or no time left.
std::optional<Error> NoMoreAttempts(const AsioCall& call, Clock::time_point total) {
  if (call.cancelled()) return ShutDownError();
  if (Clock::now() >= total) {
    return MakeError(ErrorKind::kTimeout, "upstream exchange exceeded the total timeout");
  }
  return std::nullopt;
}

// Whether an attempt that failed ran out of the total deadline: then an answer an earlier
// attempt got (a 429 or 5xx that was being retried) stands instead of the timeout.
bool RanOutOfTime(const std::optional<Error>& failure, Clock::time_point total) {
  return failure && failure->kind == ErrorKind::kTimeout && Clock::now() >= total;
}

// The coroutines take the client state by value: they never touch the AsioClient, which may be
// destroyed while they run.
net::awaitable<Result<Response>> SendWith(std::shared_ptr<AsioClientState> state, Request request) {
  const auto started = Clock::now();
  const Settings& settings = state->settings;
  if (!state->origin) co_return state->origin.error();
  const auto executor = co_await net::this_coro::executor;
  ConnectionPools& pools = ConnectionPools::Of(executor);
  auto call = BeginCall(state, executor, request);
  const auto total = TotalDeadline(started, settings, request);
  auto built = BuildMessage(*state, request, false);
  if (!built) co_return built.error();
  http::request<http::string_body> message = std::move(built).value();

  std::optional<Response> answered;  // the last answer of an attempt that was retried
  for (int attempt = 1;; ++attempt) {
    if (auto stop = NoMoreAttempts(*call, total)) {
      if (answered && !call->cancelled()) co_return *std::move(answered);
      co_return *stop;
    }
    std::unique_ptr<Parser> parser;
    Limits limits{total, request.answer_at_once};
    const std::optional<std::uint64_t> body_limit = settings.max_response_bytes;
    Outcome outcome = co_await Exchange(*call, *state, pools, message, parser, limits, body_limit);
    Response response;
    if (!outcome.failure) {
      // The body, under the total deadline only.
      Connection& connection = *call->connection;
      connection.tcp().expires_at(total);
      auto read_body = [&connection, &parser](auto& stream, auto token) {
        return http::async_read(stream, connection.buffer, *parser, token);
      };
      beast::error_code error = co_await connection.Run(read_body);
      if (call->cancelled()) co_return ShutDownError();
      if (error) {
        call->connection.reset();
        outcome = BodyFailure(error, settings, "upstream exchange exceeded the total timeout");
      } else {
        ReadHead(parser->get(), response.status, response.content_type, response.headers);
        response.body = std::move(parser->get().body());
        call->Release(pools, state->origin->key, parser->keep_alive());
      }
    }
    if (answered && RanOutOfTime(outcome.failure, total)) {
      answered->attempts = attempt;
      co_return *std::move(answered);
    }
    if (auto wait = RetryWait(settings, attempt, request.retry, outcome, response.status,
                              response.headers)) {
      if (Clock::now() + *wait < total && !call->cancelled()) {
        if (!outcome.failure) {
          response.attempts = attempt;
          response.elapsed = std::chrono::duration_cast<milliseconds>(Clock::now() - started);
          answered = std::move(response);
        }
        co_await call->Sleep(*wait);
        continue;
      }
    }
    if (outcome.failure) co_return *outcome.failure;
    response.attempts = attempt;
    response.elapsed = std::chrono::duration_cast<milliseconds>(Clock::now() - started);
    co_return response;
  }
}

class AsioStream final : public Stream {
 public:
  // `status`, `content_type` and `headers`: the head `parser` read (ReadHead).
  AsioStream(std::shared_ptr<AsioCall> call, std::shared_ptr<const AsioClientState> state,
             ConnectionPools* pools, std::unique_ptr<Parser> parser, Clock::time_point ends_at,
             long status, std::string content_type, Headers headers)
      : call_(std::move(call)),
        state_(std::move(state)),
        pools_(pools),
        parser_(std::move(parser)),
        ends_at_(ends_at),
        status_(status),
        content_type_(std::move(content_type)),
        headers_(std::move(headers)) {}

  long status() const override { return status_; }
  const std::string& content_type() const override { return content_type_; }
  const Headers& headers() const override { return headers_; }

  net::awaitable<Result<std::optional<std::string>>> Next() override {
    const Settings& settings = state_->settings;
    for (;;) {
      std::string& body = parser_->get().body();
      if (!body.empty()) {
        std::string chunk = std::move(body);
        body.clear();
        co_return std::optional<std::string>(std::move(chunk));
      }
      if (failure_) co_return *failure_;
      if (parser_->is_done()) {
        if (call_->connection) call_->Release(*pools_, state_->origin->key, parser_->keep_alive());
        co_return std::optional<std::string>();
      }
      if (call_->cancelled() || !call_->connection) co_return ShutDownError();
      Connection& connection = *call_->connection;
      const auto idle_deadline = Clock::now() + settings.idle_timeout;
      const bool by_total = ends_at_ <= idle_deadline;
      connection.tcp().expires_at(by_total ? ends_at_ : idle_deadline);
      auto read_some = [&connection, this](auto& stream, auto token) {
        return http::async_read_some(stream, connection.buffer, *parser_, token);
      };
      beast::error_code error = co_await connection.Run(read_some);
      if (call_->cancelled()) {
        failure_ = ShutDownError();
      } else if (error) {
        call_->connection.reset();
        failure_ = *BodyFailure(error, settings,
                                by_total ? "upstream stream exceeded the stream timeout of " +
                                               Ms(settings.stream_timeout)
                                         : "upstream stream idle for more than " +
                                               Ms(settings.idle_timeout))
                        .failure;
      }
      // Bytes that arrived before a failure are handed out first.
    }
  }

 private:
  std::shared_ptr<AsioCall> call_;  // owns the connection; keeps the stream reachable by Shutdown()
  std::shared_ptr<const AsioClientState> state_;
  ConnectionPools* pools_;
  std::unique_ptr<Parser> parser_;
  Clock::time_point ends_at_;
  long status_ = 0;
  std::string content_type_;
  Headers headers_;
  std::optional<Error> failure_;
};

net::awaitable<Result<std::unique_ptr<Stream>>> OpenStreamWith(
    std::shared_ptr<AsioClientState> state, Request request) {
  const Settings& settings = state->settings;
  if (!state->origin) co_return state->origin.error();
  const auto executor = co_await net::this_coro::executor;
  ConnectionPools& pools = ConnectionPools::Of(executor);
  auto call = BeginCall(state, executor, request);
  const auto started = Clock::now();
  // Opening (every attempt until the response headers) is bounded like a whole non-streaming
  // exchange; the stream as a whole by its own, longer deadline.
  const auto total = TotalDeadline(started, settings, request);
  const auto ends_at = started + settings.stream_timeout;
  auto built = BuildMessage(*state, request, true);
  if (!built) co_return built.error();
  http::request<http::string_body> message = std::move(built).value();

  // The last answer of an attempt that was retried, its body unread, kept in case the next
  // attempt runs out of time.
  std::unique_ptr<Parser> answered;
  std::unique_ptr<Connection> answered_on;
  for (int attempt = 1;; ++attempt) {
    std::unique_ptr<Parser> parser;
    Outcome outcome;
    if (auto stop = NoMoreAttempts(*call, total)) {
      outcome.failure = std::move(stop);
    } else {
      Limits limits{total, false};
      const std::optional<std::uint64_t> body_limit;  // a stream is read piece by piece
      outcome = co_await Exchange(*call, *state, pools, message, parser, limits, body_limit);
    }
    if (answered && !call->cancelled() && RanOutOfTime(outcome.failure, total)) {
      call->connection = std::move(answered_on);
      long status = 0;
      std::string content_type;
      Headers headers;
      ReadHead(answered->get(), status, content_type, headers);
      std::unique_ptr<Stream> stream =
          std::make_unique<AsioStream>(std::move(call), state, &pools, std::move(answered), ends_at,
                                       status, std::move(content_type), std::move(headers));
      co_return stream;
    }
    long status = 0;
    std::string content_type;
    Headers headers;
    if (!outcome.failure) ReadHead(parser->get(), status, content_type, headers);
    // Retries happen only here, before any body byte was handed out.
    if (auto wait = RetryWait(settings, attempt, request.retry, outcome, status, headers)) {
      if (Clock::now() + *wait < total && !call->cancelled()) {
        if (!outcome.failure) {
          answered = std::move(parser);
          answered_on = std::move(call->connection);
        }
        co_await call->Sleep(*wait);
        continue;
      }
    }
    if (outcome.failure) co_return *outcome.failure;
    std::unique_ptr<Stream> stream =
        std::make_unique<AsioStream>(std::move(call), state, &pools, std::move(parser), ends_at,
                                     status, std::move(content_type), std::move(headers));
    co_return stream;
  }
}

}  // namespace

AsioClient::AsioClient(Settings settings)
    : state_(std::make_shared<AsioClientState>(std::move(settings))) {}

AsioClient::~AsioClient() { Shutdown(); }

bool AsioClient::Supports(const std::string& base_url) {
  return static_cast<bool>(ParseOrigin(base_url));
}

net::awaitable<Result<Response>> AsioClient::Send(Request request) {
  return SendWith(state_, std::move(request));
}

net::awaitable<Result<std::unique_ptr<Stream>>> AsioClient::OpenStream(Request request) {
  return OpenStreamWith(state_, std::move(request));
}

void AsioClient::Shutdown() { state_->calls.ShutDown(); }

}  // namespace staple::upstream
