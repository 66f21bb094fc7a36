#include "http/server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/beast/http.hpp>
#include <condition_variable>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "http/connection_limits.h"

namespace staple::http {
namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using Clock = std::chrono::steady_clock;

// How long a test waits for something the server should do soon; long enough for a loaded
// sanitizer build, and only reached when the test fails.
constexpr std::chrono::seconds kWait{10};

// The error shape of this test router: it names the path, so a test can tell that an answer came
// from the router's formatter.
Response FormatError(int status, std::string_view message, std::string_view path) {
  return JsonResponse(status, {{"error", message}, {"path", path}});
}

struct Reply {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  bool keep_alive = false;
};

// A blocking HTTP/1.1 client on a raw TCP socket, so that tests send exactly the bytes they mean
// (oversized heads, pipelined requests) and see exactly when the server closes the connection.
// Every wait is bounded by a deadline.
class RawClient {
 public:
  // Connects from `source` (a loopback address such as 127.0.0.2) when given, so that tests can
  // play several peers.
  explicit RawClient(std::uint16_t port, const char* source = nullptr) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (source != nullptr) {
      sockaddr_in local{};
      local.sin_family = AF_INET;
      ::inet_pton(AF_INET, source, &local.sin_addr);
      if (::bind(fd_, reinterpret_cast<sockaddr*>(&local), sizeof(local)) != 0) return;
    }
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~RawClient() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return connected_; }

  bool Send(std::string_view data) {
    while (!data.empty()) {
      const auto sent = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (sent <= 0) return false;
      data.remove_prefix(static_cast<std::size_t>(sent));
    }
    return true;
  }

  // The next whole response, or nothing when the connection ends first or `timeout` passes.
  std::optional<Reply> ReadResponse(std::chrono::milliseconds timeout = kWait) {
    const auto deadline = Clock::now() + timeout;
    bhttp::response_parser<bhttp::string_body> parser;
    parser.eager(true);
    while (!parser.is_done()) {
      if (!pending_.empty()) {
        beast::error_code ec;
        const auto used = parser.put(net::buffer(pending_), ec);
        pending_.erase(0, used);
        if (ec && ec != bhttp::error::need_more) return std::nullopt;
        if (parser.is_done()) break;
        if (!ec && used > 0) continue;
      }
      if (!ReadSome(deadline)) return std::nullopt;
    }
    Reply reply;
    auto& message = parser.get();
    reply.status = static_cast<int>(message.result_int());
    for (const auto& field : message) {
      std::string name(field.name_string());
      for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      reply.headers[name] = std::string(field.value());
    }
    reply.keep_alive = message.keep_alive();
    reply.body = std::move(message.body());
    return reply;
  }

  // Reads until the server closes the connection; true when it did within `timeout`. What arrived
  // meanwhile is kept in unread().
  bool WaitForClose(std::chrono::milliseconds timeout = kWait) {
    const auto deadline = Clock::now() + timeout;
    while (ReadSome(deadline)) {
    }
    return closed_;
  }

  // What arrived and was not read as a response.
  const std::string& unread() const { return pending_; }

 private:
  // Appends what arrives before `deadline` to pending_; false on end of stream, error or timeout.
  bool ReadSome(Clock::time_point deadline) {
    if (closed_) return false;
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd descriptor{fd_, POLLIN, 0};
    if (::poll(&descriptor, 1, static_cast<int>(left)) <= 0) return false;
    char data[16 * 1024];
    const auto n = ::recv(fd_, data, sizeof(data), 0);
    if (n <= 0) {
      closed_ = true;  // end of stream, or a reset: either way the server closed it
      return false;
    }
    pending_.append(data, static_cast<std::size_t>(n));
    return true;
  }

  int fd_ = -1;
  bool connected_ = false;
  bool closed_ = false;
  std::string pending_;  // received, not yet read as a response
};

std::string Get(std::string_view path, std::string_view extra_headers = "") {
  return "GET " + std::string(path) + " HTTP/1.1\r\nHost: test\r\n" + std::string(extra_headers) +
         "\r\n";
}

class ServerTest : public ::testing::Test {
 protected:
  ServerTest() : router_(FormatError) {
    observe::InitLogging(observe::LogFormat::kJson);
    router_.Add("GET", "/ok", "ok", [](Request&) -> net::awaitable<Response> {
      co_return JsonResponse(200, {{"ok", true}});
    });
    router_.Add("POST", "/echo", "echo", [](Request& request) -> net::awaitable<Response> {
      co_return JsonResponse(200, {{"size", request.body.size()}});
    });
  }

  void TearDown() override { StopServer(); }

  void StartServer(ServerOptions options = {}, int threads = 1) {
    options.host = "127.0.0.1";
    options.port = 0;
    options.threads = threads;
    options.access_log = false;
    server_ = std::make_unique<Server>(options, router_, metrics_);
    auto bound = server_->Bind();
    ASSERT_TRUE(bound.ok()) << bound.error().message;
    server_->Start();
  }

  void StopServer(std::chrono::milliseconds grace = std::chrono::seconds(2)) {
    if (!server_) return;
    server_->Shutdown(grace);
    server_.reset();
  }

  std::unique_ptr<RawClient> Connect(const char* source = nullptr) {
    auto client = std::make_unique<RawClient>(server_->port(), source);
    EXPECT_TRUE(client->connected());
    return client;
  }

  // Adds GET /hang, whose requests stay in flight until the server is destroyed; WaitForHanging(n)
  // returns once n of them are being handled.
  void AddHangingRoute() {
    router_.Add("GET", "/hang", "hang", [this](Request&) -> net::awaitable<Response> {
      net::steady_timer forever(co_await net::this_coro::executor);
      forever.expires_after(std::chrono::hours(24));
      {
        std::lock_guard lock(hanging_mutex_);
        ++hanging_;
      }
      hanging_changed_.notify_all();
      co_await forever.async_wait(net::use_awaitable);
      co_return JsonResponse(200, {{"too", "late"}});
    });
  }
  bool WaitForHanging(int count) {
    std::unique_lock lock(hanging_mutex_);
    return hanging_changed_.wait_for(lock, kWait, [&] { return hanging_ >= count; });
  }

  // Sends GET /ok and expects a 200 that keeps the connection open (the connection is then idle).
  void ExpectServed(RawClient& client) {
    ASSERT_TRUE(client.Send(Get("/ok")));
    auto reply = client.ReadResponse();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 200);
    EXPECT_TRUE(reply->keep_alive);
  }

  // Sends GET /ok and expects the refusal: 503 in the router's error shape, then the close.
  void ExpectRefused(RawClient& client, std::string_view message) {
    ASSERT_TRUE(client.Send(Get("/ok")));
    auto reply = client.ReadResponse();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 503);
    EXPECT_EQ(reply->headers["content-type"], "application/json");
    EXPECT_FALSE(reply->keep_alive);
    const auto body = nlohmann::json::parse(reply->body, nullptr, false);
    ASSERT_TRUE(body.is_object()) << reply->body;
    EXPECT_EQ(body["error"], message) << reply->body;
    EXPECT_EQ(body["path"], "/") << reply->body;
    EXPECT_TRUE(client.WaitForClose());
  }

  // Whether `condition` holds, polling it for up to kWait (it is the server's state, changed on
  // its own threads).
  static bool WaitFor(const std::function<bool()>& condition) {
    const auto deadline = Clock::now() + kWait;
    while (!condition()) {
      if (Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return true;
  }

  // Whether the metrics hold `line`, waiting up to kWait for it: the server updates its gauges
  // and counters on its own threads, e.g. just after a connection the client saw close.
  bool MetricsContain(const std::string& line) const {
    const auto deadline = Clock::now() + kWait;
    while (metrics_.Render().find(line) == std::string::npos) {
      if (Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  }

  std::mutex hanging_mutex_;
  std::condition_variable hanging_changed_;
  int hanging_ = 0;  // guarded by hanging_mutex_

  // Declared before the server, which must not outlive them.
  Router router_;
  observe::Metrics metrics_;
  std::unique_ptr<Server> server_;
};

nlohmann::json ParseJson(const std::string& text) {
  return nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
}

TEST_F(ServerTest, AnswersAndKeepsTheConnection) {
  StartServer();
  auto client = Connect();
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(client->Send(Get("/ok")));
    auto reply = client->ReadResponse();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 200);
    EXPECT_TRUE(reply->keep_alive);
    EXPECT_EQ(ParseJson(reply->body), nlohmann::json({{"ok", true}}));
  }
}

TEST_F(ServerTest, DeclaredBodyOverTheLimitIs413Json) {
  ServerOptions options;
  options.max_body_bytes = 1024;
  StartServer(options);
  auto client = Connect();
  ASSERT_TRUE(
      client->Send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                   "Content-Length: 4096\r\n\r\n"));
  auto reply = client->ReadResponse();
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->status, 413);
  EXPECT_EQ(reply->headers["content-type"], "application/json");
  const auto body = ParseJson(reply->body);
  ASSERT_TRUE(body.is_object()) << reply->body;
  EXPECT_NE(body["error"].get<std::string>().find("1024"), std::string::npos) << reply->body;
  EXPECT_EQ(body["path"], "/echo");
  // The body was never read: the connection cannot carry another request.
  EXPECT_FALSE(reply->keep_alive);
  EXPECT_TRUE(client->WaitForClose());
}

TEST_F(ServerTest, ChunkedBodyOverTheLimitIs413Json) {
  ServerOptions options;
  options.max_body_bytes = 1024;
  StartServer(options);
  auto client = Connect();
  const std::string chunk(2000, 'x');
  ASSERT_TRUE(
      client->Send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n7d0\r\n" +
                   chunk + "\r\n0\r\n\r\n"));
  auto reply = client->ReadResponse();
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->status, 413);
  EXPECT_EQ(reply->headers["content-type"], "application/json");
  EXPECT_TRUE(ParseJson(reply->body).contains("error")) << reply->body;
  EXPECT_TRUE(client->WaitForClose());
}

TEST_F(ServerTest, BodyWithinTheLimitIsServed) {
  ServerOptions options;
  options.max_body_bytes = 1024;
  StartServer(options);
  auto client = Connect();
  const std::string body(1024, 'x');
  ASSERT_TRUE(
      client->Send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 1024\r\n\r\n" + body));
  auto reply = client->ReadResponse();
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->status, 200);
  EXPECT_EQ(ParseJson(reply->body)["size"], 1024);
}

TEST_F(ServerTest, HeadersOverTheLimitAre431Json) {
  ServerOptions options;
  options.max_header_bytes = 1024;
  StartServer(options);
  auto client = Connect();
  ASSERT_TRUE(client->Send(Get("/ok", "X-Big: " + std::string(2000, 'a') + "\r\n")));
  auto reply = client->ReadResponse();
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->status, 431);
  EXPECT_EQ(reply->headers["content-type"], "application/json");
  const auto body = ParseJson(reply->body);
  ASSERT_TRUE(body.is_object()) << reply->body;
  EXPECT_EQ(body["error"], "Request header fields too large");
  EXPECT_TRUE(client->WaitForClose());
}

TEST_F(ServerTest, IdleKeepAliveConnectionIsClosed) {
  ServerOptions options;
  options.idle_timeout = std::chrono::milliseconds(200);
  StartServer(options);
  auto client = Connect();
  ASSERT_TRUE(client->Send(Get("/ok")));
  auto reply = client->ReadResponse();
  ASSERT_TRUE(reply);
  ASSERT_TRUE(reply->keep_alive);
  // The sweep runs about once a second: the close comes within a second or two of the timeout,
  // far inside the bound (and far before the default idle timeout of 60 s).
  EXPECT_TRUE(client->WaitForClose());
  EXPECT_TRUE(client->unread().empty()) << client->unread();
}

TEST_F(ServerTest, HandlerExceptionIs500JsonLoggedCountedAndTheConnectionStaysUsable) {
  router_.Add("GET", "/throw", "throw", [](Request&) -> net::awaitable<Response> {
    // Fail after a suspension, as a handler does that awaited a back end.
    auto executor = co_await net::this_coro::executor;
    co_await net::post(executor, net::use_awaitable);
    throw std::runtime_error("handler bug 42");
  });
  StartServer();
  auto client = Connect();

  ::testing::internal::CaptureStderr();
  ASSERT_TRUE(client->Send(Get("/throw", "X-Request-Id: failing-request-1\r\n")));
  auto reply = client->ReadResponse();
  const std::string log = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->status, 500);
  EXPECT_EQ(reply->headers["content-type"], "application/json");
  EXPECT_EQ(reply->headers["x-request-id"], "failing-request-1");
  EXPECT_EQ(ParseJson(reply->body),
            nlohmann::json({{"error", "Internal server error"}, {"path", "/throw"}}));
  EXPECT_TRUE(reply->keep_alive);

  bool logged = false;
  std::size_t start = 0;
  while (start < log.size()) {
    const auto end = log.find('\n', start);
    const auto line = ParseJson(log.substr(start, end - start));
    if (line.is_object() && line.value("msg", "") == "route handler failed") {
      logged = true;
      EXPECT_EQ(line.value("level", ""), "error");
      EXPECT_EQ(line.value("request_id", ""), "failing-request-1");
      EXPECT_EQ(line.value("error", ""), "handler bug 42");
    }
    if (end == std::string::npos) break;
    start = end + 1;
  }
  EXPECT_TRUE(logged) << log;

  // The same connection serves the next request. (Its answer also shows that the failed request
  // was counted: a connection's requests are handled one after the other.)
  ASSERT_TRUE(client->Send(Get("/ok")));
  auto next = client->ReadResponse();
  ASSERT_TRUE(next);
  EXPECT_EQ(next->status, 200);

  const auto metrics = metrics_.Render();
  EXPECT_NE(metrics.find("staple_handler_exceptions_total 1\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("staple_http_requests_total{route=\"throw\",status=\"500\"} 1\n"),
            std::string::npos)
      << metrics;
}

TEST_F(ServerTest, HandlerExceptionBeforeSuspendingIs500) {
  router_.Add("GET", "/throw-now", "throw", [](Request&) -> net::awaitable<Response> {
    throw std::logic_error("immediate");
    co_return Response{};
  });
  StartServer();
  auto client = Connect();
  ASSERT_TRUE(client->Send(Get("/throw-now")));
  auto reply = client->ReadResponse();
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->status, 500);
  EXPECT_EQ(ParseJson(reply->body)["error"], "Internal server error");
}

TEST_F(ServerTest, StreamWriterExceptionCutsTheBodyAndClosesTheConnection) {
  router_.Add("GET", "/stream", "stream", [](Request&) -> net::awaitable<Response> {
    Response response;
    response.headers.Add("Content-Type", "text/event-stream");
    response.stream = [](BodyWriter& writer) -> net::awaitable<void> {
      std::string first = "data: first\n\n";
      auto written = co_await writer.Write(std::move(first));
      if (!written) co_return;
      throw std::runtime_error("stream bug");
    };
    co_return response;
  });
  StartServer();
  auto client = Connect();
  ASSERT_TRUE(client->Send(Get("/stream")));
  ASSERT_TRUE(client->WaitForClose());
  // The handler's failure was counted before the connection was closed.
  const auto& raw = client->unread();
  EXPECT_EQ(raw.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << raw;
  EXPECT_NE(raw.find("data: first"), std::string::npos) << raw;
  // No last chunk: the client can tell that the body is incomplete.
  EXPECT_EQ(raw.find("\r\n0\r\n\r\n"), std::string::npos) << raw;
  EXPECT_NE(metrics_.Render().find("staple_handler_exceptions_total 1\n"), std::string::npos);
}

TEST_F(ServerTest, ShutdownDestroysARequestThatNeverCompletes) {
  std::promise<void> started;
  auto started_future = started.get_future();
  router_.Add("GET", "/hang", "hang", [&started](Request&) -> net::awaitable<Response> {
    net::steady_timer forever(co_await net::this_coro::executor);
    forever.expires_after(std::chrono::hours(24));
    started.set_value();
    co_await forever.async_wait(net::use_awaitable);
    co_return JsonResponse(200, {{"too", "late"}});
  });
  StartServer();
  auto client = Connect();
  ASSERT_TRUE(client->Send(Get("/hang")));
  ASSERT_EQ(started_future.wait_for(kWait), std::future_status::ready);

  // The grace passes with the request still suspended; destroying the server destroys it.
  StopServer(std::chrono::milliseconds(50));

  EXPECT_TRUE(client->WaitForClose());
  EXPECT_TRUE(client->unread().empty()) << client->unread();
  // The destroyed request unregistered its connection.
  EXPECT_NE(metrics_.Render().find("staple_open_connections 0\n"), std::string::npos);
}

TEST_F(ServerTest, RequestsAreCountedUnderTheirRouteLabel) {
  router_.Add("GET", "/unused", "unused",
              [](Request&) -> net::awaitable<Response> { co_return JsonResponse(200, {}); });
  StartServer();
  auto client = Connect();
  // A connection's requests are handled (and counted) one after the other: the third answer shows
  // that the first two were counted.
  ASSERT_TRUE(client->Send(Get("/ok") + Get("/missing") + Get("/ok")));
  auto first = client->ReadResponse();
  auto second = client->ReadResponse();
  auto third = client->ReadResponse();
  ASSERT_TRUE(first && second && third);
  EXPECT_EQ(second->status, 404);
  const auto metrics = metrics_.Render();
  EXPECT_NE(metrics.find("staple_http_requests_total{route=\"ok\",status=\"200\"} "),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("staple_http_requests_total{route=\"other\",status=\"404\"} 1\n"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("staple_http_request_duration_seconds_count{route=\"unused\"} 0\n"),
            std::string::npos)
      << metrics;
}

// Beast 1.74 reads a Transfer-Encoding that does not end in chunked as "no body": the body of
// such a request would be served as the next request. It must be refused, and the connection
// closed, so the smuggled request below is never answered.
TEST_F(ServerTest, TransferEncodingOtherThanChunkedIs400AndClosesTheConnection) {
  StartServer();
  const std::string smuggled = Get("/ok");
  for (std::string encoding :
       {"Transfer-Encoding: gzip\r\n", "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked, gzip\r\n", "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: identity\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"}) {
    SCOPED_TRACE(encoding);
    auto client = Connect();
    ASSERT_TRUE(
        client->Send("POST /echo HTTP/1.1\r\nHost: test\r\n" + encoding + "\r\n" + smuggled));
    auto reply = client->ReadResponse();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 400);
    EXPECT_EQ(reply->headers["content-type"], "application/json");
    EXPECT_TRUE(ParseJson(reply->body).contains("error")) << reply->body;
    EXPECT_FALSE(reply->keep_alive);
    EXPECT_TRUE(client->WaitForClose());
    EXPECT_TRUE(client->unread().empty()) << client->unread();
  }
}

TEST_F(ServerTest, ChunkedTransferEncodingIsRead) {
  StartServer();
  auto client = Connect();
  ASSERT_TRUE(
      client->Send("POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: Chunked\r\n\r\n"
                   "3\r\nabc\r\n0\r\n\r\n"));
  auto reply = client->ReadResponse();
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->status, 200);
  EXPECT_EQ(ParseJson(reply->body)["size"], 3);
}

TEST_F(ServerTest, Http11RequestNeedsExactlyOneHost) {
  StartServer();
  for (std::string head :
       {"GET /ok HTTP/1.1\r\n\r\n", "GET /ok HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /ok HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"}) {
    SCOPED_TRACE(head);
    auto client = Connect();
    ASSERT_TRUE(client->Send(head + Get("/ok")));
    auto reply = client->ReadResponse();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 400);
    EXPECT_TRUE(ParseJson(reply->body).contains("error")) << reply->body;
    EXPECT_TRUE(client->WaitForClose());
    EXPECT_TRUE(client->unread().empty()) << client->unread();
  }
  // HTTP/1.0 has no Host requirement.
  auto client = Connect();
  ASSERT_TRUE(client->Send("GET /ok HTTP/1.0\r\n\r\n"));
  auto reply = client->ReadResponse();
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->status, 200);
}

TEST_F(ServerTest, AbsoluteFormTargetIsRoutedByItsPath) {
  router_.Add("GET", "/query", "query", [](Request& request) -> net::awaitable<Response> {
    co_return JsonResponse(200, {{"path", request.path}, {"query", request.query}});
  });
  StartServer();
  auto client = Connect();
  ASSERT_TRUE(client->Send(Get("http://test/ok") + Get("HTTP://other:8080/query?a=1") +
                           Get("http://test") + Get("https://test?b=2")));
  auto ok = client->ReadResponse();
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  auto query = client->ReadResponse();
  ASSERT_TRUE(query);
  EXPECT_EQ(query->status, 200);
  EXPECT_EQ(ParseJson(query->body), nlohmann::json({{"path", "/query"}, {"query", "a=1"}}));
  for (int i = 0; i < 2; ++i) {
    auto root = client->ReadResponse();
    ASSERT_TRUE(root);
    EXPECT_EQ(root->status, 404);
    EXPECT_EQ(ParseJson(root->body)["path"], "/");
  }
}

// ---- connection cap, per-peer share, header deadline --------------------------------------------

// One peer holding the server's connections idle must not lock everyone else out: at the cap, the
// connection idle longest is closed and the new client is served.
TEST_F(ServerTest, AtTheCapTheLongestIdleConnectionMakesRoomForANewClient) {
  ServerOptions options;
  options.max_connections = 2;
  StartServer(options);
  auto oldest = Connect();
  ExpectServed(*oldest);
  auto newer = Connect();
  ExpectServed(*newer);

  auto client = Connect();
  ExpectServed(*client);
  EXPECT_TRUE(oldest->WaitForClose());
  EXPECT_TRUE(oldest->unread().empty()) << oldest->unread();
  // The other idle connection was left alone.
  ExpectServed(*newer);
  EXPECT_TRUE(MetricsContain("staple_connections_evicted_total 1\n")) << metrics_.Render();
  EXPECT_TRUE(MetricsContain("staple_open_connections 2\n")) << metrics_.Render();
}

// With several I/O threads the connection idle longest may belong to another thread, which closes
// it on its own thread; the count stays exact.
TEST_F(ServerTest, AtTheCapIdleConnectionsOfEveryThreadMakeRoomOldestFirst) {
  ServerOptions options;
  options.max_connections = 8;
  StartServer(options, /*threads=*/4);
  std::vector<std::unique_ptr<RawClient>> older;
  for (int i = 0; i < 8; ++i) {
    older.push_back(Connect());
    ExpectServed(*older.back());
  }
  // "Idle since" is the server's: a connection turns idle just after its answer is written, which
  // under load can come after the client read the answer and opened the next connection. The
  // older connections must all be idle before the newer ones come, or the last of them may
  // rightly count as younger than the first newer one.
  EXPECT_TRUE(WaitFor([this] { return server_->idle_connections() == 8; }));
  std::vector<std::unique_ptr<RawClient>> newer;
  for (int i = 0; i < 8; ++i) {
    newer.push_back(Connect());
    ExpectServed(*newer.back());
  }
  for (auto& client : older) EXPECT_TRUE(client->WaitForClose());
  for (auto& client : newer) ExpectServed(*client);
  EXPECT_TRUE(MetricsContain("staple_connections_evicted_total 8\n")) << metrics_.Render();
  EXPECT_TRUE(MetricsContain("staple_open_connections 8\n")) << metrics_.Render();
}

// Connections that never sent a byte are idle too: a flood of them cannot fill the server.
TEST_F(ServerTest, ConnectionsThatNeverSentARequestMakeRoomAtTheCap) {
  ServerOptions options;
  options.max_connections = 4;
  StartServer(options);
  std::vector<std::unique_ptr<RawClient>> flood;
  for (int i = 0; i < 12; ++i) flood.push_back(Connect());
  auto client = Connect();
  ExpectServed(*client);
}

TEST_F(ServerTest, AtTheCapWithEveryConnectionBusyANewOneIsRefused503) {
  AddHangingRoute();
  ServerOptions options;
  options.max_connections = 2;
  StartServer(options);
  auto first = Connect();
  auto second = Connect();
  ASSERT_TRUE(first->Send(Get("/hang")));
  ASSERT_TRUE(second->Send(Get("/hang")));
  ASSERT_TRUE(WaitForHanging(2));

  auto refused = Connect();
  ExpectRefused(*refused, "Too many connections: try again later");
  EXPECT_TRUE(MetricsContain("staple_connections_refused_total{reason=\"capacity\"} 1\n"))
      << metrics_.Render();
  EXPECT_TRUE(MetricsContain("staple_open_connections 2\n")) << metrics_.Render();
  StopServer(std::chrono::milliseconds(50));
}

TEST_F(ServerTest, PeerOverItsShareClosesItsOwnLongestIdleConnection) {
  ServerOptions options;
  options.max_connections = 100;
  options.max_connections_per_peer = 2;
  StartServer(options);
  auto other = Connect("127.0.0.3");
  ExpectServed(*other);  // idle longest of all, but another peer's
  auto oldest = Connect("127.0.0.2");
  ExpectServed(*oldest);
  auto newer = Connect("127.0.0.2");
  ExpectServed(*newer);

  auto client = Connect("127.0.0.2");
  ExpectServed(*client);
  EXPECT_TRUE(oldest->WaitForClose());
  ExpectServed(*newer);
  ExpectServed(*other);
}

TEST_F(ServerTest, PeerOverItsShareWithEveryConnectionBusyIsRefusedAndOthersAreServed) {
  AddHangingRoute();
  ServerOptions options;
  options.max_connections = 100;
  options.max_connections_per_peer = 2;
  StartServer(options);
  auto first = Connect("127.0.0.2");
  auto second = Connect("127.0.0.2");
  ASSERT_TRUE(first->Send(Get("/hang")));
  ASSERT_TRUE(second->Send(Get("/hang")));
  ASSERT_TRUE(WaitForHanging(2));

  auto refused = Connect("127.0.0.2");
  ExpectRefused(*refused, "Too many connections from this address: try again later");
  EXPECT_TRUE(MetricsContain("staple_connections_refused_total{reason=\"peer\"} 1\n"))
      << metrics_.Render();
  auto other = Connect("127.0.0.3");
  ExpectServed(*other);
  StopServer(std::chrono::milliseconds(50));
}

// A trusted proxy carries many clients over its connections: it has no share.
TEST_F(ServerTest, UnsharedPeerIsNotLimitedToAShare) {
  AddHangingRoute();
  ServerOptions options;
  options.max_connections = 100;
  options.max_connections_per_peer = 1;
  options.unshared_peers = {"127.0.0.4", "10.0.0.0/8"};
  StartServer(options);
  auto first = Connect("127.0.0.4");
  ASSERT_TRUE(first->Send(Get("/hang")));
  ASSERT_TRUE(WaitForHanging(1));
  auto second = Connect("127.0.0.4");
  ExpectServed(*second);
  StopServer(std::chrono::milliseconds(50));
}

// A head sent a byte at a time must not hold the connection for the whole idle timeout.
TEST_F(ServerTest, HeadNotCompleteWithinTheHeaderTimeoutIs408AndClosed) {
  ServerOptions options;
  options.header_timeout = std::chrono::milliseconds(500);
  options.idle_timeout = std::chrono::minutes(5);
  options.read_timeout = std::chrono::minutes(5);
  StartServer(options);
  auto client = Connect();
  ASSERT_TRUE(client->Send("GET /ok HTTP/1.1\r\nHost: te"));
  auto reply = client->ReadResponse();
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->status, 408);
  EXPECT_EQ(reply->headers["content-type"], "application/json");
  const auto body = ParseJson(reply->body);
  ASSERT_TRUE(body.is_object()) << reply->body;
  EXPECT_EQ(body["error"], "Request header timeout");
  EXPECT_FALSE(reply->keep_alive);
  EXPECT_TRUE(client->WaitForClose());
}

TEST_F(ServerTest, SlowHeadCompleteWithinTheHeaderTimeoutIsServed) {
  ServerOptions options;
  options.header_timeout = std::chrono::seconds(8);
  StartServer(options);
  auto client = Connect();
  const std::string head = Get("/ok");
  // Three pieces a little apart: slow, but far inside the deadline.
  const std::size_t third = head.size() / 3;
  for (std::size_t start = 0; start < head.size(); start += third) {
    ASSERT_TRUE(client->Send(std::string_view(head).substr(start, third)));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  auto reply = client->ReadResponse();
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->status, 200);
}

// The header timeout runs from the first byte of a head: a keep-alive connection waiting for its
// next request has the (longer) idle timeout.
TEST_F(ServerTest, IdleConnectionOutlivesTheHeaderTimeout) {
  ServerOptions options;
  options.header_timeout = std::chrono::milliseconds(200);
  options.idle_timeout = std::chrono::minutes(5);
  StartServer(options);
  auto client = Connect();
  ExpectServed(*client);
  // Several sweeps pass, each of which would have closed it on the header timeout.
  EXPECT_FALSE(client->WaitForClose(std::chrono::milliseconds(2500)));
  ExpectServed(*client);
}

TEST(ConnectionLimitsTest, DefaultsLeaveAReserveOfDescriptors) {
  EXPECT_EQ(DefaultMaxConnections(1024), 1024u - 128u);
  EXPECT_EQ(DefaultMaxConnections(256), 256u - 64u);
  EXPECT_EQ(DefaultMaxConnections(1'048'576), 1'048'576u - 131'072u);
  EXPECT_EQ(DefaultMaxConnections(50), 1u);
  EXPECT_EQ(DefaultMaxConnectionsPerPeer(896), 224u);
  EXPECT_EQ(DefaultMaxConnectionsPerPeer(40), 16u);
  EXPECT_EQ(DefaultMaxConnectionsPerPeer(8), 8u);
}

}  // namespace
}  // namespace staple::http
