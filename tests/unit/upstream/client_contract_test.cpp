#include <curl/curl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "observe/metrics.h"
#include "scoped_env.h"
#include "test_server.h"
#include "tls_server.h"
#include "upstream/asio_client.h"
#include "upstream/curl_client.h"
#include "upstream/curl_multi.h"

namespace staple::upstream {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;
using test::HttpRequest;
using test::SocketPtr;
using test::TestServer;
using Clock = std::chrono::steady_clock;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;

constexpr const char* kKey = "sk-test-Zq8-never-in-errors";

Settings TestSettings(const std::string& base_url) {
  Settings settings;
  settings.base_url = base_url;
  settings.api_key = kKey;
  settings.connect_timeout = 1s;
  settings.first_byte_timeout = 2s;
  settings.idle_timeout = 2s;
  settings.total_timeout = 5s;
  settings.max_retries = 2;
  settings.backoff_base = 10ms;
  settings.backoff_max = 50ms;
  return settings;
}

Request Post(std::string body = R"({"model":"m"})") {
  Request request;
  request.path = "/chat/completions";
  request.body = std::move(body);
  return request;
}

void Rethrow(std::exception_ptr error) {
  if (error) std::rethrow_exception(error);
}

// Runs `body` (a coroutine lambda) on `io` until the io_context runs out of work, which also
// checks that the client leaves no wait pending once its calls are done.
template <typename F>
void RunCoroutineOn(net::io_context& io, F body) {
  bool done = false;
  std::exception_ptr error;
  net::co_spawn(io, body(), [&](std::exception_ptr e) {
    error = e;
    done = true;
  });
  io.run();
  Rethrow(error);
  EXPECT_TRUE(done);
}

template <typename F>
void RunCoroutine(F body) {
  net::io_context io;
  RunCoroutineOn(io, std::move(body));
}

std::string Describe(const Error& error) {
  return std::string(ErrorKindName(error.kind)) + ": " + error.message;
}

template <typename T>
std::string Describe(const std::optional<Result<T>>& result) {
  if (!result) return "no result";
  if (!result->ok()) return Describe(result->error());
  return "ok";
}

milliseconds Since(Clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
}

net::awaitable<bool> Reply(SocketPtr socket, std::string response) {
  co_await test::Write(socket, std::move(response));
  co_return true;
}

// Reads the request and never answers.
net::awaitable<bool> Hang(SocketPtr socket, HttpRequest) {
  co_await test::Sleep(10s);
  co_await test::Write(socket, test::HttpResponse(200, "{}"));
  co_return false;
}

// Reads a whole stream; the error, if any, ends it.
net::awaitable<Result<std::string>> ReadAll(Stream& stream) {
  std::string all;
  for (;;) {
    auto next = co_await stream.Next();
    if (!next.ok()) co_return next.error();
    if (!*next) co_return all;
    all += **next;
  }
}

// Opens a stream for Post() and reads it whole: its text, or the error that refused or ended it.
// `status` (when given) gets the opened stream's status.
template <typename ClientType>
net::awaitable<Result<std::string>> StreamPost(ClientType& client, long* status = nullptr) {
  auto opened = co_await client.OpenStream(Post());
  if (!opened.ok()) co_return opened.error();
  if (status != nullptr) *status = (*opened)->status();
  co_return co_await ReadAll(**opened);
}

// The contract of upstream::Client (client.h), run against both implementations.
template <typename ClientType>
class ClientContractTest : public ::testing::Test {};

class ClientNames {
 public:
  template <typename T>
  static std::string GetName(int) {
    if constexpr (std::is_same_v<T, AsioClient>) {
      return "Asio";
    } else {
      return "Curl";
    }
  }
};

using ClientTypes = ::testing::Types<AsioClient, CurlClient>;
TYPED_TEST_SUITE(ClientContractTest, ClientTypes, ClientNames);

TYPED_TEST(ClientContractTest, SendReturnsStatusBodyAndHeaders) {
  TestServer server([](SocketPtr socket, HttpRequest) {
    return Reply(socket, test::HttpResponse(200, R"({"ok":true})", "application/json",
                                            "X-Upstream-Id: abc\r\n"));
  });
  TypeParam client(TestSettings(server.base_url() + "/v1"));
  std::optional<Result<Response>> result;
  RunCoroutine([&]() -> net::awaitable<void> {
    result.emplace(co_await client.Send(Post(R"({"model":"m","messages":[]})")));
  });

  ASSERT_TRUE(result && result->ok()) << Describe(result);
  const Response& response = result->value();
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.body, R"({"ok":true})");
  EXPECT_EQ(response.content_type, "application/json");
  EXPECT_THAT(response.headers, ::testing::Contains(Pair("x-upstream-id", "abc")));
  EXPECT_THAT(response.headers, ::testing::Contains(Pair("content-type", "application/json")));
  EXPECT_EQ(response.attempts, 1);

  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].method, "POST");
  EXPECT_EQ(requests[0].target, "/v1/chat/completions");
  EXPECT_EQ(requests[0].body, R"({"model":"m","messages":[]})");
  EXPECT_EQ(requests[0].Header("content-type"), "application/json");
  EXPECT_EQ(requests[0].Header("accept"), "application/json");
  EXPECT_EQ(requests[0].Header("expect"), std::nullopt);
}

TYPED_TEST(ClientContractTest, GetSendsNoBodyAndExtraHeaders) {
  TestServer server(
      [](SocketPtr socket, HttpRequest) { return Reply(socket, test::HttpResponse(200, "[]")); });
  TypeParam client(TestSettings(server.base_url()));
  std::optional<Result<Response>> result;
  RunCoroutine([&]() -> net::awaitable<void> {
    Request request;
    request.method = "GET";
    request.path = "/models";
    request.headers.emplace_back("X-Request-Id", "req-1");
    result.emplace(co_await client.Send(std::move(request)));
  });
  ASSERT_TRUE(result && result->ok()) << Describe(result);
  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].method, "GET");
  EXPECT_EQ(requests[0].target, "/models");
  EXPECT_EQ(requests[0].Header("x-request-id"), "req-1");
  EXPECT_EQ(requests[0].Header("content-type"), std::nullopt);
  EXPECT_EQ(requests[0].Header("content-length"), std::nullopt);
}

TYPED_TEST(ClientContractTest, AuthorizationCarriesTheKeyAndReplacesTheCallers) {
  TestServer server(
      [](SocketPtr socket, HttpRequest) { return Reply(socket, test::HttpResponse(200, "{}")); });
  TypeParam client(TestSettings(server.base_url()));
  RunCoroutine([&]() -> net::awaitable<void> {
    Request request = Post();
    request.headers.emplace_back("Authorization", "Bearer someone-elses");
    auto result = co_await client.Send(std::move(request));
    EXPECT_TRUE(result.ok());
  });
  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 1u);
  int authorization_headers = 0;
  for (const auto& [name, value] : requests[0].headers) {
    if (name == "authorization") ++authorization_headers;
  }
  EXPECT_EQ(authorization_headers, 1);
  EXPECT_EQ(requests[0].Header("authorization"), std::string("Bearer ") + kKey);
  // The upstream sees which Staple asks, by the version `staple --version` prints.
  EXPECT_EQ(requests[0].Header("user-agent"), std::string("staple/") + observe::BuildVersion());
  EXPECT_NE(std::string(observe::BuildVersion()), "unknown");
}

TYPED_TEST(ClientContractTest, NoKeyMeansNoAuthorizationHeader) {
  TestServer server(
      [](SocketPtr socket, HttpRequest) { return Reply(socket, test::HttpResponse(200, "{}")); });
  Settings settings = TestSettings(server.base_url());
  settings.api_key.clear();
  TypeParam client(settings);
  RunCoroutine([&]() -> net::awaitable<void> {
    auto result = co_await client.Send(Post());
    EXPECT_TRUE(result.ok());
  });
  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].Header("authorization"), std::nullopt);
}

TYPED_TEST(ClientContractTest, InvalidHeaderIsRejectedBeforeSending) {
  TestServer server(
      [](SocketPtr socket, HttpRequest) { return Reply(socket, test::HttpResponse(200, "{}")); });
  TypeParam client(TestSettings(server.base_url()));
  std::optional<Result<Response>> result;
  RunCoroutine([&]() -> net::awaitable<void> {
    Request request = Post();
    request.headers.emplace_back("X-Injected", "a\r\nX-Evil: 1");
    result.emplace(co_await client.Send(std::move(request)));
  });
  ASSERT_TRUE(result && !result->ok());
  EXPECT_EQ(result->error().kind, ErrorKind::kInvalidArgument);
  EXPECT_EQ(server.request_count(), 0);
}

TYPED_TEST(ClientContractTest, ServerErrorIsRetriedThenSucceeds) {
  std::atomic<int> calls{0};
  TestServer server([&calls](SocketPtr socket, HttpRequest) {
    const bool first = calls.fetch_add(1) == 0;
    return Reply(socket, first ? test::HttpResponse(500, R"({"error":"boom"})")
                               : test::HttpResponse(200, R"({"ok":true})"));
  });
  TypeParam client(TestSettings(server.base_url()));
  std::optional<Result<Response>> result;
  RunCoroutine([&]() -> net::awaitable<void> { result.emplace(co_await client.Send(Post())); });
  ASSERT_TRUE(result && result->ok()) << Describe(result);
  EXPECT_EQ(result->value().status, 200);
  EXPECT_EQ(result->value().body, R"({"ok":true})");
  EXPECT_EQ(result->value().attempts, 2);
  EXPECT_EQ(server.request_count(), 2);
}

TYPED_TEST(ClientContractTest, RateLimitIsRetriedMaxRetriesTimesThenReturned) {
  TestServer server([](SocketPtr socket, HttpRequest) {
    return Reply(socket, test::HttpResponse(429, R"({"error":"slow down"})"));
  });
  TypeParam client(TestSettings(server.base_url()));
  std::optional<Result<Response>> result;
  RunCoroutine([&]() -> net::awaitable<void> { result.emplace(co_await client.Send(Post())); });
  ASSERT_TRUE(result && result->ok()) << Describe(result);
  EXPECT_EQ(result->value().status, 429);
  EXPECT_EQ(result->value().body, R"({"error":"slow down"})");
  EXPECT_EQ(result->value().attempts, 3);
  EXPECT_EQ(server.request_count(), 3);
}

TYPED_TEST(ClientContractTest, NoRetryWhenTheRequestSaysSo) {
  TestServer server(
      [](SocketPtr socket, HttpRequest) { return Reply(socket, test::HttpResponse(503, "{}")); });
  TypeParam client(TestSettings(server.base_url()));
  std::optional<Result<Response>> result;
  RunCoroutine([&]() -> net::awaitable<void> {
    Request request = Post();
    request.retry = false;
    result.emplace(co_await client.Send(std::move(request)));
  });
  ASSERT_TRUE(result && result->ok()) << Describe(result);
  EXPECT_EQ(result->value().status, 503);
  EXPECT_EQ(result->value().attempts, 1);
  EXPECT_EQ(server.request_count(), 1);
}

TYPED_TEST(ClientContractTest, ClientErrorIsNotRetried) {
  TestServer server(
      [](SocketPtr socket, HttpRequest) { return Reply(socket, test::HttpResponse(400, "{}")); });
  TypeParam client(TestSettings(server.base_url()));
  std::optional<Result<Response>> result;
  RunCoroutine([&]() -> net::awaitable<void> { result.emplace(co_await client.Send(Post())); });
  ASSERT_TRUE(result && result->ok()) << Describe(result);
  EXPECT_EQ(result->value().status, 400);
  EXPECT_EQ(result->value().attempts, 1);
}

TYPED_TEST(ClientContractTest, RetryAfterIsHonoured) {
  std::atomic<int> calls{0};
  TestServer server([&calls](SocketPtr socket, HttpRequest) {
    const bool first = calls.fetch_add(1) == 0;
    return Reply(
        socket, first ? test::HttpResponse(503, "{}", "application/json", "Retry-After-Ms: 150\r\n")
                      : test::HttpResponse(200, "{}"));
  });
  Settings settings = TestSettings(server.base_url());
  settings.backoff_max = 100ms;  // Retry-After up to 400 ms is honoured
  TypeParam client(settings);
  std::optional<Result<Response>> result;
  const auto start = Clock::now();
  RunCoroutine([&]() -> net::awaitable<void> { result.emplace(co_await client.Send(Post())); });
  ASSERT_TRUE(result && result->ok()) << Describe(result);
  EXPECT_EQ(result->value().attempts, 2);
  EXPECT_GE(Since(start), 150ms);
}

TYPED_TEST(ClientContractTest, TooLongRetryAfterReturnsTheResponseAtOnce) {
  TestServer server([](SocketPtr socket, HttpRequest) {
    return Reply(socket, test::HttpResponse(429, "{}", "application/json", "Retry-After: 30\r\n"));
  });
  TypeParam client(TestSettings(server.base_url()));
  std::optional<Result<Response>> result;
  const auto start = Clock::now();
  RunCoroutine([&]() -> net::awaitable<void> { result.emplace(co_await client.Send(Post())); });
  ASSERT_TRUE(result && result->ok()) << Describe(result);
  EXPECT_EQ(result->value().status, 429);
  EXPECT_EQ(result->value().attempts, 1);
  EXPECT_THAT(result->value().headers, ::testing::Contains(Pair("retry-after", "30")));
  EXPECT_LT(Since(start), 1s);
}

TYPED_TEST(ClientContractTest, ConnectionRefusedIsUnavailableQuickly) {
  TypeParam client(TestSettings("http://127.0.0.1:" + std::to_string(test::UnusedPort())));
  std::optional<Result<Response>> result;
  const auto start = Clock::now();
  RunCoroutine([&]() -> net::awaitable<void> { result.emplace(co_await client.Send(Post())); });
  ASSERT_TRUE(result && !result->ok());
  EXPECT_EQ(result->error().kind, ErrorKind::kUnavailable) << Describe(result->error());
  EXPECT_LT(Since(start), 1s);
}

// Answers every connection with plain HTTP bytes and closes it: no TLS server hello.
net::awaitable<void> AnswerInPlainText(test::tcp::acceptor* acceptor) {
  for (;;) {
    auto socket = co_await acceptor->async_accept(net::use_awaitable);
    co_await net::async_write(socket, net::buffer(std::string_view("HTTP/1.1 400 No\r\n\r\n")),
                              net::use_awaitable);
  }
}

TYPED_TEST(ClientContractTest, TlsHandshakeFailureIsUnavailable) {
  net::io_context server_io;
  test::tcp::acceptor acceptor(server_io,
                               test::tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  net::co_spawn(server_io, AnswerInPlainText(&acceptor), [](std::exception_ptr) {});
  std::thread server_thread([&server_io] { server_io.run(); });
  TypeParam client(
      TestSettings("https://127.0.0.1:" + std::to_string(acceptor.local_endpoint().port())));
  std::optional<Result<Response>> result;
  RunCoroutine([&]() -> net::awaitable<void> { result.emplace(co_await client.Send(Post())); });
  server_io.stop();
  server_thread.join();
  ASSERT_TRUE(result && !result->ok());
  EXPECT_EQ(result->error().kind, ErrorKind::kUnavailable) << Describe(result->error());
}

TYPED_TEST(ClientContractTest, SilentServerTimesOutAfterTheFirstByteTimeout) {
  TestServer server(Hang);
  Settings settings = TestSettings(server.base_url());
  settings.first_byte_timeout = 300ms;
  TypeParam client(settings);
  std::optional<Result<Response>> result;
  const auto start = Clock::now();
  RunCoroutine([&]() -> net::awaitable<void> {
    Request request = Post();
    request.retry = false;
    result.emplace(co_await client.Send(std::move(request)));
  });
  const auto elapsed = Since(start);
  ASSERT_TRUE(result && !result->ok());
  EXPECT_EQ(result->error().kind, ErrorKind::kTimeout) << Describe(result->error());
  EXPECT_GE(elapsed, 300ms);
  EXPECT_LT(elapsed, 1500ms);
}

// The upstream got the request and went silent: it may be generating an answer, so sending the
// request again could be paid twice. Connect failures stay retried (ConnectionRefused... above).
TYPED_TEST(ClientContractTest, FirstByteTimeoutIsNotRetried) {
  TestServer server(Hang);
  Settings settings = TestSettings(server.base_url());
  settings.first_byte_timeout = 200ms;
  settings.max_retries = 2;
  TypeParam client(settings);
  std::optional<Result<Response>> sent;
  std::optional<Result<std::unique_ptr<Stream>>> opened;
  RunCoroutine([&]() -> net::awaitable<void> {
    sent.emplace(co_await client.Send(Post()));
    opened.emplace(co_await client.OpenStream(Post()));
  });
  ASSERT_TRUE(sent && !sent->ok());
  EXPECT_EQ(sent->error().kind, ErrorKind::kTimeout) << Describe(sent->error());
  ASSERT_TRUE(opened && !opened->ok());
  EXPECT_EQ(opened->error().kind, ErrorKind::kTimeout) << Describe(opened->error());
  EXPECT_EQ(server.request_count(), 2);  // one attempt each
}

// STAPLE_UPSTREAM_TIMEOUT bounds a stream until its headers, retries included.
TYPED_TEST(ClientContractTest, OpeningAStreamIsBoundByTheTotalTimeout) {
  TestServer server([](SocketPtr socket, HttpRequest) -> net::awaitable<bool> {
    co_await test::Write(socket, test::HttpResponse(503, "{}"));
    co_return true;
  });
  Settings settings = TestSettings(server.base_url());
  settings.max_retries = 10;
  settings.backoff_base = 150ms;
  settings.backoff_max = 150ms;
  settings.total_timeout = 400ms;
  TypeParam client(settings);
  long status = 0;
  RunCoroutine([&]() -> net::awaitable<void> {
    // The stream is destroyed here, before the io_context it was opened on.
    auto opened = co_await client.OpenStream(Post());
    if (!opened.ok()) {
      ADD_FAILURE() << Describe(opened.error());
      co_return;
    }
    status = (*opened)->status();
  });
  // The retries stop when the next wait would pass the total deadline; the last answer stands.
  EXPECT_EQ(status, 503);
  EXPECT_LT(server.request_count(), 11);
}

// A stream that keeps trickling (never idle) ends at STAPLE_UPSTREAM_STREAM_TIMEOUT.
TYPED_TEST(ClientContractTest, AStreamEndsAtTheStreamTimeout) {
  TestServer server([](SocketPtr socket, HttpRequest) -> net::awaitable<bool> {
    co_await test::Write(socket, test::ChunkedHead(200, "text/event-stream"));
    for (int i = 0; i < 600; ++i) {
      co_await test::Write(socket, test::Chunk(": keep-alive\n\n"));
      co_await test::Sleep(50ms);
    }
    co_return false;
  });
  Settings settings = TestSettings(server.base_url());
  settings.idle_timeout = 2s;
  settings.stream_timeout = 500ms;
  TypeParam client(settings);
  std::optional<Error> ended;
  int chunks = 0;
  RunCoroutine([&]() -> net::awaitable<void> {
    auto opened = co_await client.OpenStream(Post());
    if (!opened.ok()) {
      ADD_FAILURE() << Describe(opened.error());
      co_return;
    }
    for (;;) {
      auto next = co_await (*opened)->Next();
      if (!next.ok()) {
        ended = next.error();
        co_return;
      }
      if (!next->has_value()) co_return;
      ++chunks;
    }
  });
  ASSERT_TRUE(ended) << "the stream ended without an error";
  EXPECT_EQ(ended->kind, ErrorKind::kTimeout) << Describe(*ended);
  EXPECT_THAT(ended->message, HasSubstr("stream timeout"));
  EXPECT_GT(chunks, 1);
}

// A non-streaming completion's first byte comes with the whole answer, which may take longer than
// the first-byte timeout: only the total timeout bounds it.
TYPED_TEST(ClientContractTest, AnswerAtOnceWaitsPastTheFirstByteTimeout) {
  TestServer server([](SocketPtr socket, HttpRequest) -> net::awaitable<bool> {
    co_await test::Sleep(600ms);
    co_await test::Write(socket, test::HttpResponse(200, "{\"slow\":true}"));
    co_return true;
  });
  Settings settings = TestSettings(server.base_url());
  settings.first_byte_timeout = 200ms;
  settings.total_timeout = 5s;
  TypeParam client(settings);
  std::optional<Result<Response>> slow;
  std::optional<Result<Response>> hung;
  RunCoroutine([&]() -> net::awaitable<void> {
    Request request = Post();
    request.answer_at_once = true;
    slow.emplace(co_await client.Send(request));
  });
  ASSERT_TRUE(slow && slow->ok()) << Describe(slow->error());
  EXPECT_EQ((*slow)->body, "{\"slow\":true}");
  EXPECT_EQ(server.request_count(), 1);

  TestServer silent(Hang);
  Settings silent_settings = TestSettings(silent.base_url());
  silent_settings.first_byte_timeout = 200ms;
  silent_settings.total_timeout = 700ms;
  TypeParam silent_client(silent_settings);
  const auto start = Clock::now();
  RunCoroutine([&]() -> net::awaitable<void> {
    Request request = Post();
    request.answer_at_once = true;
    hung.emplace(co_await silent_client.Send(request));
  });
  const auto elapsed = Since(start);
  ASSERT_TRUE(hung && !hung->ok());
  EXPECT_EQ(hung->error().kind, ErrorKind::kTimeout) << Describe(hung->error());
  EXPECT_GE(elapsed, 650ms);
  EXPECT_LT(elapsed, 2000ms);
  EXPECT_EQ(silent.request_count(), 1);
}

// A connection that drops in the middle of the response head is the upstream going away
// (kUnavailable, as a reset mid-body is), and is not sent again: the upstream had the request.
// AsioClient only: libcurl 7.88 takes such a head for a 200 with an empty body (which the chat
// routes then refuse as an answer that is not JSON).
TEST(AsioClientTest, AHeadCutShortIsUnavailableAndNotRetried) {
  TestServer server([](SocketPtr socket, HttpRequest) -> net::awaitable<bool> {
    co_await test::Write(socket, "HTTP/1.1 200 OK\r\nContent-Ty");
    co_return false;
  });
  AsioClient client(TestSettings(server.base_url()));
  std::optional<Result<Response>> result;
  RunCoroutine([&]() -> net::awaitable<void> { result.emplace(co_await client.Send(Post())); });
  ASSERT_TRUE(result && !result->ok());
  EXPECT_EQ(result->error().kind, ErrorKind::kUnavailable) << Describe(result->error());
  EXPECT_EQ(server.request_count(), 1);
}

// A 503 being retried stands when the retry runs out of the total deadline: the caller gets the
// upstream's answer, not a gateway timeout. AsioClient only (libcurl's client returns the
// timeout); OpeningAStreamIsBoundByTheTotalTimeout relies on it when its last retry starts late.
TEST(AsioClientTest, ARetriedAnswerStandsWhenTheRetryRunsOutOfTime) {
  std::atomic<int> calls{0};
  TestServer server([&calls](SocketPtr socket, HttpRequest request) -> net::awaitable<bool> {
    if (calls.fetch_add(1) % 2 == 1) co_return co_await Hang(socket, request);
    co_await test::Write(socket, test::HttpResponse(503, R"({"error":"busy"})"));
    co_return true;
  });
  Settings settings = TestSettings(server.base_url());
  settings.total_timeout = 400ms;
  settings.max_retries = 5;
  AsioClient client(settings);
  std::optional<Result<Response>> sent;
  std::optional<Result<std::string>> streamed;
  long stream_status = 0;
  RunCoroutine([&]() -> net::awaitable<void> {
    sent.emplace(co_await client.Send(Post()));
    streamed.emplace(co_await StreamPost(client, &stream_status));
  });
  ASSERT_TRUE(sent && sent->ok()) << Describe(sent);
  EXPECT_EQ((*sent)->status, 503);
  EXPECT_EQ((*sent)->body, R"({"error":"busy"})");
  EXPECT_EQ((*sent)->attempts, 2);
  ASSERT_TRUE(streamed && streamed->ok()) << Describe(streamed);
  EXPECT_EQ(stream_status, 503);
  EXPECT_EQ(**streamed, R"({"error":"busy"})");
  EXPECT_EQ(server.request_count(), 4);
}

TYPED_TEST(ClientContractTest, StalledBodyHitsTheTotalTimeout) {
  TestServer server([](SocketPtr socket, HttpRequest) -> net::awaitable<bool> {
    co_await test::Write(socket,
                         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         "Content-Length: 100\r\n\r\n{\"partial\":");
    co_await test::Sleep(10s);
    co_return false;
  });
  Settings settings = TestSettings(server.base_url());
  settings.total_timeout = 400ms;
  TypeParam client(settings);
  std::optional<Result<Response>> result;
  const auto start = Clock::now();
  RunCoroutine([&]() -> net::awaitable<void> { result.emplace(co_await client.Send(Post())); });
  const auto elapsed = Since(start);
  ASSERT_TRUE(result && !result->ok());
  EXPECT_EQ(result->error().kind, ErrorKind::kTimeout) << Describe(result->error());
  EXPECT_GE(elapsed, 350ms);
  EXPECT_LT(elapsed, 1500ms);
  EXPECT_EQ(server.request_count(), 1);  // bytes arrived: never retried
}

TYPED_TEST(ClientContractTest, OversizedBodyIsAnUpstreamError) {
  const std::string big(5000, 'x');
  TestServer server([&big](SocketPtr socket, HttpRequest request) -> net::awaitable<bool> {
    if (request.target == "/chunked") {
      co_await test::Write(
          socket, test::ChunkedHead(200, "application/json") + test::Chunk(big) + test::Chunk(""));
    } else {
      co_await test::Write(socket, test::HttpResponse(200, big));
    }
    co_return true;
  });
  Settings settings = TestSettings(server.base_url());
  settings.max_response_bytes = 1000;
  TypeParam client(settings);
  std::optional<Result<Response>> sized;
  std::optional<Result<Response>> chunked;
  RunCoroutine([&]() -> net::awaitable<void> {
    Request request = Post();
    sized.emplace(co_await client.Send(request));
    request.path = "/chunked";
    chunked.emplace(co_await client.Send(request));
  });
  ASSERT_TRUE(sized && !sized->ok());
  EXPECT_EQ(sized->error().kind, ErrorKind::kUpstream) << Describe(sized->error());
  ASSERT_TRUE(chunked && !chunked->ok());
  EXPECT_EQ(chunked->error().kind, ErrorKind::kUpstream) << Describe(chunked->error());
  EXPECT_EQ(server.request_count(), 2);
}

TYPED_TEST(ClientContractTest, ErrorMessagesNeverContainTheKey) {
  TestServer server([](SocketPtr socket, HttpRequest request) -> net::awaitable<bool> {
    if (request.target == "/hang") co_return co_await Hang(socket, request);
    if (request.target == "/big") {
      co_await test::Write(socket, test::HttpResponse(200, std::string(2000, 'x')));
      co_return true;
    }
    // "/reset": headers and half a body, then the connection drops.
    co_await test::Write(socket, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf");
    co_return false;
  });
  Settings settings = TestSettings(server.base_url());
  settings.first_byte_timeout = 200ms;
  settings.max_retries = 0;
  settings.max_response_bytes = 1000;
  TypeParam client(settings);
  Settings refused_settings = settings;
  refused_settings.base_url = "http://127.0.0.1:" + std::to_string(test::UnusedPort()) + "/" + kKey;
  TypeParam refused(refused_settings);
  Settings bad_url_settings = settings;
  bad_url_settings.base_url = std::string("http://") + kKey + ":[/";
  TypeParam bad_url(bad_url_settings);

  std::vector<Error> errors;
  RunCoroutine([&]() -> net::awaitable<void> {
    for (const char* path : {"/hang", "/big", "/reset"}) {
      Request request = Post();
      request.path = path;
      auto result = co_await client.Send(request);
      if (!result.ok()) errors.push_back(result.error());
      auto stream = co_await client.OpenStream(request);
      if (!stream.ok()) {
        errors.push_back(stream.error());
      } else {
        auto all = co_await ReadAll(**stream);
        if (!all.ok()) errors.push_back(all.error());
      }
    }
    auto result = co_await refused.Send(Post());
    if (!result.ok()) errors.push_back(result.error());
    result = co_await bad_url.Send(Post());
    if (!result.ok()) errors.push_back(result.error());
  });
  EXPECT_GE(errors.size(), 6u);
  for (const auto& error : errors) {
    EXPECT_FALSE(error.message.empty());
    EXPECT_THAT(error.message, Not(HasSubstr(kKey))) << Describe(error);
    EXPECT_THAT(error.message, Not(HasSubstr("Zq8")));
  }
}

// A base URL libcurl cannot parse fails its own requests only: libcurl 7.88 kept state in such a
// transfer's easy handle that failed every later transfer of the thread that reused the handle.
TYPED_TEST(ClientContractTest, AMalformedBaseUrlFailsOnlyItsOwnRequests) {
  TestServer server(
      [](SocketPtr socket, HttpRequest) { return Reply(socket, test::HttpResponse(200, "{}")); });
  Settings broken_settings = TestSettings("http://upstream.example:[/");
  TypeParam broken(broken_settings);
  TypeParam client(TestSettings(server.base_url()));
  std::optional<Result<Response>> refused;
  std::vector<Result<Response>> after;
  RunCoroutine([&]() -> net::awaitable<void> {
    refused.emplace(co_await broken.Send(Post()));
    for (int i = 0; i < 3; ++i) after.push_back(co_await client.Send(Post()));
  });
  ASSERT_TRUE(refused && !refused->ok());
  for (const auto& result : after) {
    EXPECT_TRUE(result.ok()) << Describe(result.error());
  }
  EXPECT_EQ(server.request_count(), 3);
}

TYPED_TEST(ClientContractTest, SequentialRequestsReuseOneConnection) {
  TestServer server(
      [](SocketPtr socket, HttpRequest) { return Reply(socket, test::HttpResponse(200, "{}")); });
  TypeParam client(TestSettings(server.base_url()));
  RunCoroutine([&]() -> net::awaitable<void> {
    for (int i = 0; i < 3; ++i) {
      auto result = co_await client.Send(Post());
      EXPECT_TRUE(result.ok()) << Describe(result.error());
    }
  });
  EXPECT_EQ(server.request_count(), 3);
  EXPECT_EQ(server.connections(), 1);
}

// 103 Early Hints (as some CDNs send) and other interim responses come before the answer.
TYPED_TEST(ClientContractTest, InterimResponsesAreSkipped) {
  TestServer server([](SocketPtr socket, HttpRequest) {
    return Reply(socket, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" +
                             test::HttpResponse(200, R"({"ok":true})"));
  });
  TypeParam client(TestSettings(server.base_url()));
  std::optional<Result<Response>> sent;
  std::optional<Result<std::string>> streamed;
  long stream_status = 0;
  RunCoroutine([&]() -> net::awaitable<void> {
    sent.emplace(co_await client.Send(Post()));
    streamed.emplace(co_await StreamPost(client, &stream_status));
  });
  ASSERT_TRUE(sent && sent->ok()) << Describe(sent);
  EXPECT_EQ((*sent)->status, 200);
  EXPECT_EQ((*sent)->body, R"({"ok":true})");
  ASSERT_TRUE(streamed && streamed->ok()) << Describe(streamed);
  EXPECT_EQ(stream_status, 200);
  EXPECT_EQ(**streamed, R"({"ok":true})");
}

// The answer to a HEAD has no body, whatever its Content-Length says; the connection stays usable.
TYPED_TEST(ClientContractTest, AHeadAnswerHasNoBody) {
  TestServer server([](SocketPtr socket, HttpRequest request) -> net::awaitable<bool> {
    if (request.method == "HEAD") {
      co_await test::Write(socket,
                           "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                           "Content-Length: 11\r\n\r\n");
    } else {
      co_await test::Write(socket, test::HttpResponse(200, R"({"ok":true})"));
    }
    co_return true;
  });
  TypeParam client(TestSettings(server.base_url()));
  std::optional<Result<Response>> head;
  std::optional<Result<Response>> after;
  RunCoroutine([&]() -> net::awaitable<void> {
    Request request;
    request.method = "HEAD";
    request.path = "/models";
    head.emplace(co_await client.Send(request));
    after.emplace(co_await client.Send(Post()));
  });
  ASSERT_TRUE(head && head->ok()) << Describe(head);
  EXPECT_EQ((*head)->status, 200);
  EXPECT_EQ((*head)->body, "");
  ASSERT_TRUE(after && after->ok()) << Describe(after);
  EXPECT_EQ((*after)->body, R"({"ok":true})");
  EXPECT_EQ(server.request_count(), 2);
}

// A kept connection the server closed while it sat idle, or that it closes on the next request
// without answering, never saw that request: it goes out again on a new connection, as the same
// attempt.
TYPED_TEST(ClientContractTest, AKeptConnectionTheServerClosedIsReplaced) {
  std::atomic<int> calls{0};
  TestServer server([&calls](SocketPtr socket, HttpRequest) -> net::awaitable<bool> {
    const int call = calls.fetch_add(1) + 1;
    if (call == 2) co_return false;  // closes the kept connection without an answer
    co_await test::Write(socket,
                         test::HttpResponse(200, "{\"call\":" + std::to_string(call) + "}"));
    co_return call != 3;  // answers, then closes the connection while the client keeps it
  });
  Settings settings = TestSettings(server.base_url());
  settings.max_retries = 0;
  TypeParam client(settings);
  std::vector<Result<Response>> results;
  RunCoroutine([&]() -> net::awaitable<void> {
    for (int i = 0; i < 3; ++i) results.push_back(co_await client.Send(Post()));
  });
  ASSERT_EQ(results.size(), 3u);
  const std::vector<std::string> bodies{R"({"call":1})", R"({"call":3})", R"({"call":4})"};
  for (std::size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i].ok()) << i << ": " << Describe(results[i].error());
    EXPECT_EQ(results[i]->body, bodies[i]);
    EXPECT_EQ(results[i]->attempts, 1);
  }
  EXPECT_EQ(server.request_count(), 4);
  EXPECT_EQ(server.connections(), 3);
}

// Bytes the server sent after a complete response, unasked, make its connection unfit for the
// next request: the Asio client's peek before it reuses a kept connection (here on every take:
// peek_idle_after 0) sees them and opens a new connection instead. (libcurl 7.88 reuses such a
// connection and fails the request on the stray bytes: not part of the shared contract.)
TEST(AsioClientTest, AKeptConnectionWithUnaskedBytesIsNotReused) {
  std::atomic<int> calls{0};
  std::atomic<bool> first_read{false};  // the client has the first answer
  std::atomic<bool> stray_sent{false};
  TestServer server([&](SocketPtr socket, HttpRequest) -> net::awaitable<bool> {
    const int call = calls.fetch_add(1) + 1;
    co_await test::Write(socket,
                         test::HttpResponse(200, "{\"call\":" + std::to_string(call) + "}"));
    if (call == 1) {
      // Only once the client has read the answer: bytes that came with it would be caught by
      // the client's read buffer, not by the check before reuse.
      first_read.wait(false);
      // A write to a loopback socket has reached the client's receive queue when it returns.
      co_await test::Write(socket, "HTTP/1.1 200 OK\r\n");
      stray_sent = true;
      stray_sent.notify_all();
    }
    co_return true;
  });
  // Lets the server's handler go on however the test ends (before the server is destroyed).
  struct Release {
    std::atomic<bool>& flag;
    ~Release() {
      flag = true;
      flag.notify_all();
    }
  } release{first_read};
  Settings settings = TestSettings(server.base_url());
  settings.max_retries = 0;
  settings.peek_idle_after = 0ms;
  AsioClient client(settings);
  std::optional<Result<Response>> first;
  std::optional<Result<Response>> second;
  // Both on one io_context: its pool keeps the connection between them.
  RunCoroutine([&]() -> net::awaitable<void> {
    first.emplace(co_await client.Send(Post()));
    first_read = true;
    first_read.notify_all();
    if (!first->ok()) co_return;
    stray_sent.wait(false);
    second.emplace(co_await client.Send(Post()));
  });
  ASSERT_TRUE(first && first->ok()) << Describe(first);
  EXPECT_EQ((*first)->body, R"({"call":1})");
  ASSERT_TRUE(second && second->ok()) << Describe(second);
  EXPECT_EQ((*second)->body, R"({"call":2})");
  EXPECT_EQ((*second)->attempts, 1);
  EXPECT_EQ(server.connections(), 2);
}

net::awaitable<void> SendTimed(Client* client, Request request,
                               std::optional<Result<Response>>* result, milliseconds* took) {
  const auto start = Clock::now();
  result->emplace(co_await client->Send(std::move(request)));
  *took = Since(start);
}

TYPED_TEST(ClientContractTest, ConcurrentRequestsDoNotWaitForEachOther) {
  TestServer server([](SocketPtr socket, HttpRequest request) -> net::awaitable<bool> {
    if (request.target == "/slow") co_await test::Sleep(1s);
    co_await test::Write(socket, test::HttpResponse(200, "{}"));
    co_return true;
  });
  TypeParam client(TestSettings(server.base_url()));
  std::optional<Result<Response>> slow;
  std::optional<Result<Response>> fast;
  milliseconds slow_took{0};
  milliseconds fast_took{0};
  net::io_context io;
  Request slow_request = Post();
  slow_request.path = "/slow";
  net::co_spawn(io, SendTimed(&client, slow_request, &slow, &slow_took), Rethrow);
  net::co_spawn(io, SendTimed(&client, Post(), &fast, &fast_took), Rethrow);
  io.run();
  ASSERT_TRUE(slow && slow->ok()) << Describe(slow);
  ASSERT_TRUE(fast && fast->ok()) << Describe(fast);
  EXPECT_GE(slow_took, 1s);
  EXPECT_LT(fast_took, 500ms);
  EXPECT_EQ(server.connections(), 2);
}

// More transfers at once than one lane takes: a second lane (multi handle, pool) opens, and a
// second wave of as many requests reuses the connections of both lanes.
TEST(CurlClientTest, ManyConcurrentRequestsSpreadOverLanesAndReuseTheirConnections) {
  TestServer server([](SocketPtr socket, HttpRequest) -> net::awaitable<bool> {
    co_await test::Sleep(300ms);
    co_await test::Write(socket, test::HttpResponse(200, "{}"));
    co_return true;
  });
  CurlClient client(TestSettings(server.base_url()));
  constexpr std::size_t kConcurrent = CurlMultiSet::kLaneTransfers + 44;
  net::io_context io;
  for (int wave = 1; wave <= 2; ++wave) {
    std::vector<std::optional<Result<Response>>> results(kConcurrent);
    std::vector<milliseconds> took(kConcurrent);
    for (std::size_t i = 0; i < kConcurrent; ++i) {
      net::co_spawn(io, SendTimed(&client, Post(), &results[i], &took[i]), Rethrow);
    }
    io.restart();
    io.run();
    for (std::size_t i = 0; i < kConcurrent; ++i) {
      ASSERT_TRUE(results[i] && results[i]->ok())
          << "wave " << wave << ": " << Describe(results[i]);
      EXPECT_EQ((*results[i])->status, 200);
    }
    EXPECT_EQ(net::use_service<CurlMultiSet>(io).lanes(), 2u) << "wave " << wave;
    EXPECT_EQ(server.connections(), static_cast<int>(kConcurrent)) << "wave " << wave;
  }
  EXPECT_EQ(server.request_count(), static_cast<int>(2 * kConcurrent));
}

TYPED_TEST(ClientContractTest, StreamDeliversChunksAsTheyArrive) {
  std::atomic<bool> reader_has_first{false};
  std::atomic<bool> server_sent_last{false};
  TestServer server([&](SocketPtr socket, HttpRequest) -> net::awaitable<bool> {
    co_await test::Write(socket, test::ChunkedHead(200, "text/event-stream"));
    co_await test::Write(socket, test::Chunk("data: one\n\n"));
    for (int i = 0; i < 500 && !reader_has_first.load(); ++i) co_await test::Sleep(10ms);
    co_await test::Write(socket, test::Chunk("data: two\n\n"));
    server_sent_last = true;
    co_await test::Write(socket, test::Chunk(""));
    co_return true;
  });
  TypeParam client(TestSettings(server.base_url()));
  RunCoroutine([&]() -> net::awaitable<void> {
    auto opened = co_await client.OpenStream(Post());
    if (!opened.ok()) {
      ADD_FAILURE() << Describe(opened.error());
      co_return;
    }
    std::unique_ptr<Stream> stream = std::move(opened).value();
    EXPECT_EQ(stream->status(), 200);
    EXPECT_EQ(stream->content_type(), "text/event-stream");
    auto first = co_await stream->Next();
    EXPECT_TRUE(first.ok() && first->has_value() && **first == "data: one\n\n");
    EXPECT_FALSE(server_sent_last.load());
    reader_has_first = true;
    auto rest = co_await ReadAll(*stream);
    EXPECT_TRUE(rest.ok() && *rest == "data: two\n\n");
    auto after_end = co_await stream->Next();
    EXPECT_TRUE(after_end.ok() && !after_end->has_value());
  });
  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].Header("accept"), "text/event-stream, application/json");
}

TYPED_TEST(ClientContractTest, StreamErrorStatusIsReturnedWithItsBody) {
  TestServer server([](SocketPtr socket, HttpRequest) {
    return Reply(socket, test::HttpResponse(400, R"({"error":"bad"})"));
  });
  TypeParam client(TestSettings(server.base_url()));
  RunCoroutine([&]() -> net::awaitable<void> {
    auto opened = co_await client.OpenStream(Post());
    if (!opened.ok()) {
      ADD_FAILURE() << Describe(opened.error());
      co_return;
    }
    EXPECT_EQ((*opened)->status(), 400);
    auto body = co_await ReadAll(**opened);
    EXPECT_TRUE(body.ok() && *body == R"({"error":"bad"})");
  });
  EXPECT_EQ(server.request_count(), 1);
}

TYPED_TEST(ClientContractTest, OpenStreamRetriesBeforeTheHeadersAreReturned) {
  std::atomic<int> calls{0};
  TestServer server([&calls](SocketPtr socket, HttpRequest) -> net::awaitable<bool> {
    if (calls.fetch_add(1) == 0) {
      co_await test::Write(socket, test::HttpResponse(503, "{}"));
      co_return true;
    }
    co_await test::Write(socket, test::ChunkedHead(200, "text/event-stream") +
                                     test::Chunk("data: x\n\n") + test::Chunk(""));
    co_return true;
  });
  TypeParam client(TestSettings(server.base_url()));
  RunCoroutine([&]() -> net::awaitable<void> {
    auto opened = co_await client.OpenStream(Post());
    if (!opened.ok()) {
      ADD_FAILURE() << Describe(opened.error());
      co_return;
    }
    EXPECT_EQ((*opened)->status(), 200);
    auto body = co_await ReadAll(**opened);
    EXPECT_TRUE(body.ok() && *body == "data: x\n\n");
  });
  EXPECT_EQ(server.request_count(), 2);
}

TYPED_TEST(ClientContractTest, StreamIdleTimeout) {
  TestServer server([](SocketPtr socket, HttpRequest) -> net::awaitable<bool> {
    co_await test::Write(
        socket, test::ChunkedHead(200, "text/event-stream") + test::Chunk("data: one\n\n"));
    co_await test::Sleep(10s);
    co_return false;
  });
  Settings settings = TestSettings(server.base_url());
  settings.idle_timeout = 300ms;
  TypeParam client(settings);
  RunCoroutine([&]() -> net::awaitable<void> {
    auto opened = co_await client.OpenStream(Post());
    if (!opened.ok()) {
      ADD_FAILURE() << Describe(opened.error());
      co_return;
    }
    auto first = co_await (*opened)->Next();
    EXPECT_TRUE(first.ok() && first->has_value());
    const auto start = Clock::now();
    auto second = co_await (*opened)->Next();
    const auto elapsed = Since(start);
    if (second.ok()) {
      ADD_FAILURE() << "the idle stream did not time out";
      co_return;
    }
    EXPECT_EQ(second.error().kind, ErrorKind::kTimeout) << Describe(second.error());
    EXPECT_GE(elapsed, 250ms);
    EXPECT_LT(elapsed, 1500ms);
  });
}

TYPED_TEST(ClientContractTest, StreamResetMidBodyIsUnavailable) {
  TestServer server([](SocketPtr socket, HttpRequest) -> net::awaitable<bool> {
    co_await test::Write(
        socket, test::ChunkedHead(200, "text/event-stream") + test::Chunk("data: one\n\n"));
    co_return false;  // closes the connection before the last chunk
  });
  TypeParam client(TestSettings(server.base_url()));
  RunCoroutine([&]() -> net::awaitable<void> {
    auto opened = co_await client.OpenStream(Post());
    if (!opened.ok()) {
      ADD_FAILURE() << Describe(opened.error());
      co_return;
    }
    std::string received;
    std::optional<Error> failure;
    for (;;) {
      auto next = co_await (*opened)->Next();
      if (!next.ok()) {
        failure = next.error();
        break;
      }
      if (!*next) break;
      received += **next;
    }
    EXPECT_EQ(received, "data: one\n\n");
    if (!failure) {
      ADD_FAILURE() << "the reset went unnoticed";
      co_return;
    }
    EXPECT_EQ(failure->kind, ErrorKind::kUnavailable) << Describe(*failure);
  });
}

TYPED_TEST(ClientContractTest, DestroyingTheStreamClosesTheConnection) {
  std::atomic<int> peer_closed{0};  // 0: waiting, 1: closed, 2: still open after 5 s
  TestServer server([&peer_closed](SocketPtr socket, HttpRequest) -> net::awaitable<bool> {
    co_await test::Write(
        socket, test::ChunkedHead(200, "text/event-stream") + test::Chunk("data: one\n\n"));
    peer_closed = (co_await test::WaitForPeerClose(socket, 5s)) ? 1 : 2;
    co_return false;
  });
  TypeParam client(TestSettings(server.base_url()));
  RunCoroutine([&]() -> net::awaitable<void> {
    auto opened = co_await client.OpenStream(Post());
    if (!opened.ok()) {
      ADD_FAILURE() << Describe(opened.error());
      co_return;
    }
    auto first = co_await (*opened)->Next();
    EXPECT_TRUE(first.ok() && first->has_value());
    opened.value().reset();  // mid-transfer
    for (int i = 0; i < 300 && peer_closed.load() == 0; ++i) co_await test::Sleep(10ms);
  });
  EXPECT_EQ(peer_closed.load(), 1);
}

double CpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

TYPED_TEST(ClientContractTest, SlowReaderPausesTheTransfer) {
  constexpr std::size_t kTotal = 32u << 20;
  constexpr std::size_t kPiece = 64u << 10;
  constexpr std::size_t kBuffer = 64u << 10;
  std::atomic<std::size_t> written{0};
  TestServer server([&written](SocketPtr socket, HttpRequest) -> net::awaitable<bool> {
    co_await test::Write(socket,
                         "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         "Content-Length: " +
                             std::to_string(kTotal) + "\r\n\r\n");
    const std::string piece(kPiece, 'x');
    for (std::size_t sent = 0; sent < kTotal; sent += kPiece) {
      co_await test::Write(socket, piece);
      written += kPiece;
    }
    co_return true;
  });
  Settings settings = TestSettings(server.base_url());
  settings.stream_buffer_bytes = kBuffer;
  TypeParam client(settings);
  RunCoroutine([&]() -> net::awaitable<void> {
    auto opened = co_await client.OpenStream(Post());
    if (!opened.ok()) {
      ADD_FAILURE() << Describe(opened.error());
      co_return;
    }
    // The reader stalls: the client must stop reading instead of buffering, and must not spin.
    const double cpu_before = CpuSeconds();
    co_await test::Sleep(500ms);
    const double cpu_used = CpuSeconds() - cpu_before;
    EXPECT_LT(cpu_used, 0.2);
    EXPECT_LT(written.load(), kTotal);  // the server is held back by TCP flow control

    auto first = co_await (*opened)->Next();
    if (!first.ok() || !first->has_value()) {
      ADD_FAILURE() << "no data after the stall";
      co_return;
    }
    // What was buffered while the reader stalled: the limit plus at most one libcurl write.
    EXPECT_GT((*first)->size(), 0u);
    EXPECT_LE((*first)->size(), kBuffer + CURL_MAX_WRITE_SIZE);

    std::size_t total = (*first)->size();
    std::size_t largest = 0;
    for (;;) {
      auto next = co_await (*opened)->Next();
      if (!next.ok()) {
        ADD_FAILURE() << Describe(next.error());
        break;
      }
      if (!*next) break;
      total += (*next)->size();
      largest = std::max(largest, (*next)->size());
    }
    EXPECT_EQ(total, kTotal);
    EXPECT_LE(largest, kBuffer + CURL_MAX_WRITE_SIZE);
  });
}

net::awaitable<void> SendAndCheck(Client* client, std::string body, std::atomic<int>* good) {
  auto result = co_await client->Send(Post(body));
  if (result.ok() && result->status == 200 && result->body == body) good->fetch_add(1);
}

TYPED_TEST(ClientContractTest, TwoIoContextsShareOneClient) {
  TestServer server([](SocketPtr socket, HttpRequest request) -> net::awaitable<bool> {
    co_await test::Sleep(20ms);  // overlap the requests
    co_await test::Write(socket, test::HttpResponse(200, request.body));
    co_return true;
  });
  TypeParam client(TestSettings(server.base_url()));
  std::atomic<int> good{0};
  auto worker = [&](int id) {
    net::io_context io;
    for (int i = 0; i < 10; ++i) {
      const std::string body =
          "{\"thread\":" + std::to_string(id) + ",\"i\":" + std::to_string(i) + "}";
      net::co_spawn(io, SendAndCheck(&client, body, &good), Rethrow);
    }
    io.run();
  };
  std::thread first(worker, 1);
  std::thread second(worker, 2);
  first.join();
  second.join();
  EXPECT_EQ(good.load(), 20);
  EXPECT_EQ(server.request_count(), 20);
}

net::awaitable<void> SendInto(Client* client, Request request,
                              std::optional<Result<Response>>* result) {
  result->emplace(co_await client->Send(std::move(request)));
}

TYPED_TEST(ClientContractTest, ShutdownCancelsCallsInFlightAndLater) {
  TestServer server(Hang);
  TypeParam client(TestSettings(server.base_url()));
  std::optional<Result<Response>> in_flight;
  net::io_context io;
  net::co_spawn(io, SendInto(&client, Post(), &in_flight), Rethrow);
  const auto start = Clock::now();
  // Shuts the client down once the request reached the server, which never answers.
  std::thread stopper([&client, &server] {
    const auto deadline = Clock::now() + 30s;
    while (server.request_count() == 0 && Clock::now() < deadline) std::this_thread::yield();
    client.Shutdown();
  });
  io.run();
  stopper.join();
  ASSERT_TRUE(in_flight && !in_flight->ok());
  EXPECT_EQ(in_flight->error().kind, ErrorKind::kCancelled);
  EXPECT_LT(Since(start), 4s);  // before the total timeout (5 s) could end the call

  std::optional<Result<Response>> later;
  io.restart();
  net::co_spawn(io, SendInto(&client, Post(), &later), Rethrow);
  io.run();
  ASSERT_TRUE(later && !later->ok());
  EXPECT_EQ(later->error().kind, ErrorKind::kCancelled);
  EXPECT_EQ(server.request_count(), 1);
}

TYPED_TEST(ClientContractTest, DestroyingTheClientCancelsItsCalls) {
  TestServer server(Hang);
  auto client = std::make_unique<TypeParam>(TestSettings(server.base_url()));
  std::optional<Result<Response>> result;
  net::io_context io;
  net::co_spawn(io, SendInto(client.get(), Post(), &result), Rethrow);
  // Runs the call until the request reached the server, which never answers.
  const auto deadline = Clock::now() + 30s;
  while (server.request_count() == 0 && Clock::now() < deadline) io.run_for(10ms);
  ASSERT_EQ(server.request_count(), 1);
  client.reset();
  io.run();
  ASSERT_TRUE(result && !result->ok());
  EXPECT_EQ(result->error().kind, ErrorKind::kCancelled);
}

net::awaitable<void> HoldStream(Client* client, std::atomic<bool>* got_chunk) {
  auto opened = co_await client->OpenStream(Post());
  if (!opened.ok()) co_return;
  std::unique_ptr<Stream> stream = std::move(opened).value();
  auto first = co_await stream->Next();
  if (first.ok() && first->has_value()) *got_chunk = true;
  auto never = co_await stream->Next();  // the io_context is destroyed while this waits
  ADD_FAILURE() << "the stream should still be waiting";
}

TYPED_TEST(ClientContractTest, DestroyingTheIoContextWithTransfersInFlightIsSafe) {
  std::atomic<int> peer_closed{0};
  TestServer server([&peer_closed](SocketPtr socket, HttpRequest request) -> net::awaitable<bool> {
    if (request.target == "/hang") co_return co_await Hang(socket, request);
    co_await test::Write(
        socket, test::ChunkedHead(200, "text/event-stream") + test::Chunk("data: one\n\n"));
    peer_closed = (co_await test::WaitForPeerClose(socket, 5s)) ? 1 : 2;
    co_return false;
  });
  Settings settings = TestSettings(server.base_url());
  settings.idle_timeout = 10s;
  settings.first_byte_timeout = 10s;
  TypeParam client(settings);
  std::optional<Result<Response>> never;
  std::atomic<bool> got_chunk{false};
  {
    net::io_context io;
    Request hang = Post();
    hang.path = "/hang";
    net::co_spawn(io, SendInto(&client, hang, &never), Rethrow);
    net::co_spawn(io, HoldStream(&client, &got_chunk), Rethrow);
    const auto deadline = Clock::now() + 30s;
    while (!got_chunk.load() && Clock::now() < deadline) io.run_for(20ms);
  }
  EXPECT_TRUE(got_chunk.load());
  EXPECT_FALSE(never.has_value());
  const auto closed_by = Clock::now() + 30s;
  while (peer_closed.load() == 0 && Clock::now() < closed_by) std::this_thread::yield();
  EXPECT_EQ(peer_closed.load(), 1);
}

// TLS (AsioClient only: libcurl's own TLS is tested by libcurl). The certificates are made at run
// time; SSL_CERT_FILE makes one of them the only trusted root for the client made after it.
class AsioTlsTest : public ::testing::Test {
 protected:
  // Writes `pem` to a file in the test's temporary directory; its path.
  std::string WriteRoots(const std::string& pem) {
    const std::string path = ::testing::TempDir() + "staple-tls-roots-" +
                             std::to_string(::getpid()) + "-" + std::to_string(files_++) + ".pem";
    std::FILE* file = std::fopen(path.c_str(), "w");
    if (file == nullptr) throw std::runtime_error("cannot write " + path);
    std::fwrite(pem.data(), 1, pem.size(), file);
    std::fclose(file);
    paths_.push_back(path);
    return path;
  }
  ~AsioTlsTest() override {
    for (const auto& path : paths_) std::remove(path.c_str());
  }

 private:
  int files_ = 0;
  std::vector<std::string> paths_;
};

TEST_F(AsioTlsTest, ATrustedCertificateCarriesRequestsOverOneTlsConnection) {
  const auto identity = test::MakeSelfSigned("DNS:localhost,IP:127.0.0.1");
  test::TlsServer server(identity);
  test::ScopedEnv roots("SSL_CERT_FILE", WriteRoots(identity.certificate_pem).c_str());
  AsioClient client(TestSettings("https://localhost:" + std::to_string(server.port()) + "/v1"));
  std::vector<Result<Response>> sent;
  std::optional<Result<std::string>> streamed;
  RunCoroutine([&]() -> net::awaitable<void> {
    for (int i = 0; i < 2; ++i) sent.push_back(co_await client.Send(Post()));
    streamed.emplace(co_await StreamPost(client));
  });
  ASSERT_EQ(sent.size(), 2u);
  for (const auto& result : sent) {
    ASSERT_TRUE(result.ok()) << Describe(result.error());
    EXPECT_EQ(result->status, 200);
    EXPECT_EQ(result->body, R"({"tls":true})");
  }
  ASSERT_TRUE(streamed && streamed->ok()) << Describe(streamed);
  EXPECT_EQ(**streamed, R"({"tls":true})");
  EXPECT_EQ(server.requests(), 3);
  EXPECT_EQ(server.handshakes(), 1);             // kept and reused
  EXPECT_EQ(server.server_name(), "localhost");  // SNI
}

TEST_F(AsioTlsTest, AnUntrustedCertificateIsRefused) {
  const auto identity = test::MakeSelfSigned("DNS:localhost,IP:127.0.0.1");
  const auto other = test::MakeSelfSigned("DNS:localhost,IP:127.0.0.1");
  test::TlsServer server(identity);
  test::ScopedEnv roots("SSL_CERT_FILE", WriteRoots(other.certificate_pem).c_str());
  AsioClient client(TestSettings("https://127.0.0.1:" + std::to_string(server.port())));
  std::optional<Result<Response>> result;
  RunCoroutine([&]() -> net::awaitable<void> { result.emplace(co_await client.Send(Post())); });
  ASSERT_TRUE(result && !result->ok());
  EXPECT_EQ(result->error().kind, ErrorKind::kUnavailable) << Describe(result->error());
  EXPECT_THAT(result->error().message, HasSubstr("TLS handshake"));
  EXPECT_EQ(server.requests(), 0);
}

TEST_F(AsioTlsTest, ACertificateForAnotherHostIsRefused) {
  const auto identity = test::MakeSelfSigned("DNS:upstream.example");
  test::TlsServer server(identity);
  test::ScopedEnv roots("SSL_CERT_FILE", WriteRoots(identity.certificate_pem).c_str());
  AsioClient client(TestSettings("https://127.0.0.1:" + std::to_string(server.port())));
  std::optional<Result<Response>> result;
  RunCoroutine([&]() -> net::awaitable<void> { result.emplace(co_await client.Send(Post())); });
  ASSERT_TRUE(result && !result->ok());
  EXPECT_EQ(result->error().kind, ErrorKind::kUnavailable) << Describe(result->error());
  EXPECT_EQ(server.requests(), 0);
}

// The tests talk to 127.0.0.1 only: keep a proxy configured in the environment out of the way.
class NoProxyForLoopback : public ::testing::Environment {
 public:
  void SetUp() override {
    setenv("NO_PROXY", "127.0.0.1,localhost", 1);
    setenv("no_proxy", "127.0.0.1,localhost", 1);
  }
};

[[maybe_unused]] ::testing::Environment* const kNoProxy =
    ::testing::AddGlobalTestEnvironment(new NoProxyForLoopback);

}  // namespace
}  // namespace staple::upstream
