#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/net.h"
#include "upstream/client.h"

// A small HTTP/1.1 server for the upstream client's tests: raw Asio on 127.0.0.1, its own thread
// and io_context, and a test-defined coroutine that answers each request (a fixed reply, a delay,
// a dropped connection, an SSE stream, silence).
namespace staple::upstream::test {

using tcp = net::ip::tcp;
using SocketPtr = std::shared_ptr<tcp::socket>;

struct HttpRequest {
  std::string method;
  std::string target;
  Headers headers;  // lower-case names
  std::string body;

  std::optional<std::string> Header(std::string_view name) const;
};

class TestServer {
 public:
  // Answers one request on `socket`. Returns true to read another request on the connection,
  // false to close it.
  using Handler = std::function<net::awaitable<bool>(SocketPtr socket, HttpRequest request)>;

  explicit TestServer(Handler handler);
  ~TestServer();  // stops the thread; open connections are closed
  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;

  std::uint16_t port() const { return port_; }
  std::string base_url() const;  // "http://127.0.0.1:<port>"
  int connections() const { return connections_.load(); }
  int request_count() const;
  std::vector<HttpRequest> requests() const;

 private:
  net::awaitable<void> Accept();
  net::awaitable<void> Serve(SocketPtr socket);

  Handler handler_;
  net::io_context io_;
  tcp::acceptor acceptor_;
  std::uint16_t port_ = 0;
  std::atomic<int> connections_{0};
  mutable std::mutex mutex_;
  std::vector<HttpRequest> requests_;  // guarded by mutex_
  std::thread thread_;
};

// "HTTP/1.1 <status> X" with Content-Length, the content type and `extra_headers` (each line
// ending in \r\n).
std::string HttpResponse(int status, std::string_view body,
                         std::string_view content_type = "application/json",
                         std::string_view extra_headers = "");
// The head of a chunked response (Transfer-Encoding: chunked).
std::string ChunkedHead(int status, std::string_view content_type);
// One chunk of a chunked body; an empty `data` is the last chunk.
std::string Chunk(std::string_view data);

net::awaitable<void> Write(SocketPtr socket, std::string data);
net::awaitable<void> Sleep(std::chrono::milliseconds duration);
// Reads (and drops) whatever arrives until the peer closes the connection (true) or `limit`
// passes (false).
net::awaitable<bool> WaitForPeerClose(SocketPtr socket, std::chrono::milliseconds limit);

// A completion handler for co_spawn: an exception of a server coroutine fails the test.
void ReportException(std::exception_ptr error);

// A loopback port that nothing listens on (bound, then released).
std::uint16_t UnusedPort();

}  // namespace staple::upstream::test
