#include "test_server.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <exception>

namespace staple::upstream::test {
namespace {

std::string Lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; });
  return out;
}

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r')) {
    text.remove_suffix(1);
  }
  return text;
}

HttpRequest ParseHead(std::string_view head) {
  HttpRequest request;
  auto line_end = head.find("\r\n");
  std::string_view line = head.substr(0, line_end);
  auto first = line.find(' ');
  auto second = line.find(' ', first + 1);
  request.method = std::string(line.substr(0, first));
  request.target = std::string(line.substr(first + 1, second - first - 1));
  head.remove_prefix(line_end + 2);
  while (!head.empty()) {
    line_end = head.find("\r\n");
    line = head.substr(0, line_end);
    if (line.empty()) break;
    auto colon = line.find(':');
    if (colon != std::string_view::npos) {
      request.headers.emplace_back(Lower(Trim(line.substr(0, colon))),
                                   std::string(Trim(line.substr(colon + 1))));
    }
    if (line_end == std::string_view::npos) break;
    head.remove_prefix(line_end + 2);
  }
  return request;
}

}  // namespace

void ReportException(std::exception_ptr error) {
  if (!error) return;
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "test server: " << e.what();
  }
}

std::optional<std::string> HttpRequest::Header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (key == name) return value;
  }
  return std::nullopt;
}

TestServer::TestServer(Handler handler)
    : handler_(std::move(handler)),
      acceptor_(io_, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0)) {
  port_ = acceptor_.local_endpoint().port();
  net::co_spawn(io_, Accept(), ReportException);
  thread_ = std::thread([this] { io_.run(); });
}

TestServer::~TestServer() {
  io_.stop();
  thread_.join();
}

std::string TestServer::base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }

int TestServer::request_count() const {
  std::lock_guard lock(mutex_);
  return static_cast<int>(requests_.size());
}

std::vector<HttpRequest> TestServer::requests() const {
  std::lock_guard lock(mutex_);
  return requests_;
}

net::awaitable<void> TestServer::Accept() {
  for (;;) {
    auto socket = std::make_shared<tcp::socket>(io_);
    co_await acceptor_.async_accept(*socket, net::use_awaitable);
    socket->set_option(tcp::no_delay(true));
    connections_.fetch_add(1);
    net::co_spawn(io_, Serve(socket), ReportException);
  }
}

net::awaitable<void> TestServer::Serve(SocketPtr socket) {
  std::string buffer;
  try {
    for (;;) {
      const std::size_t head_size = co_await net::async_read_until(
          *socket, net::dynamic_buffer(buffer), "\r\n\r\n", net::use_awaitable);
      HttpRequest request = ParseHead(std::string_view(buffer).substr(0, head_size));
      buffer.erase(0, head_size);
      std::size_t length = 0;
      if (auto value = request.Header("content-length")) length = std::stoul(*value);
      if (buffer.size() < length) {
        co_await net::async_read(*socket, net::dynamic_buffer(buffer),
                                 net::transfer_exactly(length - buffer.size()), net::use_awaitable);
      }
      request.body = buffer.substr(0, length);
      buffer.erase(0, length);
      {
        std::lock_guard lock(mutex_);
        requests_.push_back(request);
      }
      if (!co_await handler_(socket, std::move(request))) break;
    }
  } catch (const boost::system::system_error&) {
    // The client closed or reset the connection: the session ends.
  }
  boost::system::error_code ignored;
  socket->shutdown(tcp::socket::shutdown_both, ignored);
  socket->close(ignored);
}

std::string HttpResponse(int status, std::string_view body, std::string_view content_type,
                         std::string_view extra_headers) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " X\r\n";
  out += "Content-Type: " + std::string(content_type) + "\r\n";
  out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  out += extra_headers;
  out += "\r\n";
  out += body;
  return out;
}

std::string ChunkedHead(int status, std::string_view content_type) {
  return "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Type: " + std::string(content_type) +
         "\r\nTransfer-Encoding: chunked\r\n\r\n";
}

std::string Chunk(std::string_view data) {
  char size[32];
  std::snprintf(size, sizeof size, "%zx\r\n", data.size());
  return std::string(size) + std::string(data) + "\r\n";
}

net::awaitable<void> Write(SocketPtr socket, std::string data) {
  co_await net::async_write(*socket, net::buffer(data), net::use_awaitable);
}

net::awaitable<void> Sleep(std::chrono::milliseconds duration) {
  net::steady_timer timer(co_await net::this_coro::executor, duration);
  co_await timer.async_wait(net::use_awaitable);
}

net::awaitable<bool> WaitForPeerClose(SocketPtr socket, std::chrono::milliseconds limit) {
  auto timed_out = std::make_shared<bool>(false);
  net::steady_timer timer(co_await net::this_coro::executor, limit);
  timer.async_wait([timed_out, socket](const boost::system::error_code& ec) {
    if (ec) return;
    *timed_out = true;
    boost::system::error_code ignored;
    socket->cancel(ignored);
  });
  char scratch[4096];
  for (;;) {
    boost::system::error_code ec;
    co_await socket->async_read_some(net::buffer(scratch),
                                     net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      timer.cancel();
      co_return !*timed_out;
    }
  }
}

std::uint16_t UnusedPort() {
  net::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  return acceptor.local_endpoint().port();
}

}  // namespace staple::upstream::test
